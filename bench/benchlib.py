"""Shared pieces of the benchmark: a private redis-server, the execution record, stats, memory.

The execution record: every benchmark task (qdeploy and peers alike) calls `benchtask.record(i)`
when it starts, which appends `"<i> <time.time()> <pid>\\n"` to `$BENCH_RECORD_DIR/records.log`
(created here beforehand, shared by every process) with one unbuffered `os.write` (O_APPEND).
Nothing goes through Redis, so counting costs every system the same ~2 µs and adds no round trip
to the thing being measured; a process killed mid-run loses nothing it wrote. `Records.read()`
gives back, per task index, how many times it ran and the start times: exactly-once means every
index 0..n-1 appears once; `Records.by_pid()` how many tasks each process ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtask import FILE, LINE, record  # noqa: F401 - the task side, re-exported

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


# -- the orchestrator side ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private, non-persistent redis-server on a free port (never the one on 6379)."""

    def __init__(self, *extra: str):
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="qdeploy-bench-redis-"))
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--maxclients", "1000", *extra],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-400:]}")
                time.sleep(0.02)
        self.version = self.client.info("server")["redis_version"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        self.client.flushall()

    def used_memory(self) -> int:
        """Bytes the server's allocator holds for data (`INFO memory` used_memory)."""
        return int(self.client.info("memory")["used_memory"])

    def cpu_seconds(self) -> float:
        """CPU the server has used so far, system + user (`INFO cpu`)."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Records:
    """A fresh record directory for one measurement, with its (empty) shared record file."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="qdeploy-bench-rec-"))
        (self.dir / FILE).touch()

    def lines(self) -> list[list[bytes]]:
        out = []
        for path in self.dir.glob("*.log"):
            out += [line.split() for line in path.read_bytes().splitlines()]
        return out

    def read(self) -> dict[int, list[float]]:
        runs: dict[int, list[float]] = {}
        for fields in self.lines():
            runs.setdefault(int(fields[0]), []).append(float(fields[1]))
        return runs

    def by_pid(self) -> dict[int, int]:
        """Tasks run per process (pid -> count)."""
        counts: dict[int, int] = {}
        for fields in self.lines():
            counts[int(fields[2])] = counts.get(int(fields[2]), 0) + 1
        return counts

    def count(self) -> int:
        """Records so far, from the file's size only (cheap)."""
        total = 0
        with os.scandir(self.dir) as it:
            for entry in it:
                total += entry.stat().st_size
        return total // LINE

    def wait_for(self, n: int, timeout: float, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= n:
                return True
            time.sleep(poll)
        return self.count() >= n

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def verify(runs: dict[int, list[float]], n: int) -> dict:
    """Exactly-once check over task indices 0..n-1."""
    lost = [i for i in range(n) if i not in runs]
    dups = [i for i, ts in runs.items() if len(ts) > 1]
    return {"expected": n, "ran": sum(len(t) for t in runs.values()), "lost": len(lost),
            "duplicates": len(dups), "exactly_once": not lost and not dups}


def drain_rate(runs: dict[int, list[float]]) -> float:
    """Tasks per second between the first and the last task start (worker start-up excluded)."""
    starts = sorted(t for ts in runs.values() for t in ts)
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return 0.0
    return (len(starts) - 1) / (starts[-1] - starts[0])


class Worker:
    """A worker command line run as a process group we can stop as a whole."""

    def __init__(self, argv: list[str], env: dict, log_path: Path, cwd: Path = BENCH_DIR):
        self.argv, self.log_path = argv, log_path
        self.started = time.time()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=open(log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (children of peers' pools, work horses)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def memory(pid: int) -> dict:
    """Master RSS and per-child USS (MiB) of a process tree (direct children only)."""
    import psutil

    try:
        master = psutil.Process(pid)
        children = master.children(recursive=False)
        uss = []
        for c in children:
            try:
                uss.append(c.memory_full_info().uss / 2**20)
            except psutil.Error:
                pass
        return {"master_rss_mib": master.memory_info().rss / 2**20,
                "master_uss_mib": master.memory_full_info().uss / 2**20,
                "children": len(uss),
                "child_uss_mib": statistics.median(uss) if uss else None}
    except psutil.Error as exc:
        return {"error": str(exc)}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, p: float):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": sys.version.split()[0],
            "platform": sys.platform, "loadavg_start": os.getloadavg()}


def base_env(redis_url: str, records: Records | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), str(REPO), env.get("PYTHONPATH")]))
    env["BENCH_REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    if records is not None:
        env["BENCH_RECORD_DIR"] = str(records.dir)
    return env
