"""The runtime edge: the API producers use (`app`), the envelope (`message`), the only module
that knows redis-py (`connection`), the Redis protocol (`broker`, with `Keys` and the Lua
scripts) and results."""
