"""The task side of the execution record, imported by every benchmark app inside worker processes.

`record(i)` appends `"<i> <time.time()> <pid>\\n"` to `$BENCH_RECORD_DIR/records.log`, which the
orchestrator created beforehand (one shared file: no process creates a file, so no measurement
pays the filesystem's inode allocation, which varied from 0.01 to 0.6 ms per new file on this
machine and was paid once per recycled child), with one unbuffered `os.write` of a fixed-width
line (O_APPEND: each line lands whole). See benchlib for how the orchestrator reads it. It
imports nothing but `os` and `time`, so it adds nothing to the memory of the processes it runs in:
a worker's size is what its forks cost (bench/README.md), and the bench must not make any system
bigger.
"""

import os
import time

LINE = 40  # bytes per record line: "%010d %17.6f %010d\n"
FILE = "records.log"
_fd: tuple[int, int] | None = None  # (pid, fd): a forked child must open its own file


def record(i) -> None:
    global _fd
    pid = os.getpid()
    if _fd is None or _fd[0] != pid:
        path = os.path.join(os.environ["BENCH_RECORD_DIR"], FILE)
        _fd = (pid, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    os.write(_fd[1], b"%010d %17.6f %010d\n" % (int(i), time.time(), pid))  # fixed width: LINE bytes
