"""Tasks that misbehave on purpose, for tests/integration/test_hostile.py: a node must survive
every one of them and settle each task exactly as documented."""

from __future__ import annotations

import os
import stat

from qdeploy import App

app = App("hostile", broker=os.environ.get("QDEPLOY_BROKER"),
          namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


def _count(name: str) -> int:
    return app.transport.client.incr(f"{app.namespace}:test:runs:{name}")


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken too")

    def __repr__(self):
        raise RuntimeError("and so is __repr__")


@app.task(name="h.unprintable")
def unprintable(tag):
    _count(tag)
    raise Unprintable()


@app.task(name="h.exit")
def exits(tag):
    _count(tag)
    raise SystemExit(3)


@app.task(name="h.ok")
def ok(tag):
    return _count(tag)


@app.task(name="h.close_stdio")
def close_stdio():
    for fd in (0, 1, 2):
        os.close(fd)
    return "closed"


@app.task(name="h.print")
def say(text):
    print(text, flush=True)
    return os.getpid()


@app.task(name="h.forge_events")
def forge_events():
    """Write forged master events into every pipe this process holds (its events pipe among
    them): a malformed start with a bad time limit, an unknown event, binary junk."""
    lines = (b"S x abc y\n", b"S task-id nan " + b"z" * 300 + b"\n", b"Q what\n", b"\xff\xfe\x00\n",
             b"D " + b"a b c" * 10 + b"\n", b"S " + b"x" * 9000 + b"\n", b"no newline at all " * 500)
    written = 0
    stdio = {os.fstat(fd).st_ino for fd in (1, 2)}  # its own output is not what this is about
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            st = os.fstat(fd)
            if fd > 2 and stat.S_ISFIFO(st.st_mode) and st.st_ino not in stdio:
                for line in lines:
                    os.write(fd, line)
                written += 1
        except OSError:
            continue
    return written
