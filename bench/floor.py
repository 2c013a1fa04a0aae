#!/usr/bin/env python3
"""The fork floor: the least a fork-based Python worker can do, measured on this machine.

    python bench/floor.py redis://127.0.0.1:PORT/0 [--tasks-per-child K] [--processes 2]
                          [--import MODULE ...]

A reference for the recycling workloads, not a task queue. The parent keeps `--processes`
children alive: it opens a connection to Redis, forks, and the child LMOVEs one id from the queue
into its own in-flight list (at-least-once, like every system in the bench), decodes the JSON
body, runs the bench task (`benchtask.record`), LREMs it, and after K tasks (0: until the queue is
empty) exits; the parent reaps it and forks the next. Everything a real worker adds costs more:
there is no client library (raw RESP on a socket), no pipes, signals, logging, state machine,
heartbeat or time limit. `--import redis` imports redis-py into the parent first, to show what
forking a process that holds it costs.

Bodies are JSON lists `[i]`, in the list `floor:q` (`enqueue`). The parent exits 0 once every
child found the queue empty. Bad arguments: exit 2, the reason on the last line of stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys

from benchtask import record

QUEUE = "floor:q"
EMPTY = 3  # a child's exit code: the queue had nothing left


def command(*args) -> bytes:
    """One RESP command. qdeploy.core.broker.pack does the same, but importing qdeploy brings redis-py,
    which the floor must not carry."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def reply(stream):
    line = stream.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        return None if int(rest) < 0 else stream.read(int(rest) + 2)[:-2]
    if kind in (b":", b"+"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode(errors="replace"))
    raise RuntimeError(f"unexpected reply {line[:40]!r}")


def child(sock: socket.socket, tasks: int) -> int:
    stream = sock.makefile("rb")
    inflight = f"floor:inflight:{os.getpid()}"
    done = 0
    while not tasks or done < tasks:
        sock.sendall(command("LMOVE", QUEUE, inflight, "RIGHT", "LEFT"))
        body = reply(stream)
        if body is None:
            return EMPTY
        record(json.loads(body)[0])
        sock.sendall(command("LREM", inflight, 1, body))
        reply(stream)
        done += 1
    return 0


def address(url: str) -> tuple[str, int]:
    if not url.startswith("redis://"):
        raise ValueError(f"expected a redis://host:port URL, got {url!r}")
    host, _, port = url[len("redis://"):].split("/", 1)[0].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected a redis://host:port URL, got {url!r}")
    return host, int(port)


def serve(where: tuple[str, int], tasks: int, processes: int) -> int:
    live = 0
    empty = False
    while live or not empty:
        while live < processes and not empty:
            sock = socket.create_connection(where)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = child(sock, tasks)
                finally:
                    os._exit(code)
            sock.close()
            live += 1
        _, status = os.wait()
        live -= 1
        code = os.waitstatus_to_exitcode(status)
        if code == EMPTY:
            empty = True
        elif code != 0:
            print(f"floor: a child exited with {code}", file=sys.stderr)
            return 1
    return 0


def enqueue(client, indices, chunk: int = 5000) -> None:
    """The producer side (in the orchestrator, with redis-py): RPUSH `[i]` bodies."""
    indices = list(indices)
    for start in range(0, len(indices), chunk):
        client.rpush(QUEUE, *(json.dumps([i]) for i in indices[start:start + chunk]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--tasks-per-child", type=int, default=0, help="0: a child runs until the queue is empty")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    ap.add_argument("--stats", action="store_true", help="print the parent's and its children's CPU and faults "
                    "(from the first fork on) as a last line `floor-stats {json}` on stderr (bench/breakdown.py)")
    args = ap.parse_args(argv)
    if args.tasks_per_child < 0 or args.processes < 1:
        ap.error("expected --tasks-per-child >= 0 and --processes >= 1")
    try:
        where = address(args.url)
        for name in args.imports:
            __import__(name)
        socket.create_connection(where).close()
    except (ValueError, ImportError, OSError) as exc:
        print(f"floor: {exc}", file=sys.stderr)
        return 2
    if not args.stats:
        return serve(where, args.tasks_per_child, args.processes)
    before = usage(resource.RUSAGE_SELF)
    code = serve(where, args.tasks_per_child, args.processes)
    print("floor-stats " + json.dumps({"self0": before, "self1": usage(resource.RUSAGE_SELF),
                                       "children": usage(resource.RUSAGE_CHILDREN)}), file=sys.stderr, flush=True)
    return code


def usage(who: int) -> dict:
    r = resource.getrusage(who)
    return {"cpu": r.ru_utime + r.ru_stime, "flt": r.ru_minflt}


if __name__ == "__main__":
    sys.exit(main())
