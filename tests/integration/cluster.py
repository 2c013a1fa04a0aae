"""A private Redis Cluster on loopback for the tests: N primaries and N replicas, real
`redis-server --cluster-enabled yes` processes on free ports, joined by `redis-cli --cluster
create ... --cluster-replicas 1 --cluster-yes`. Each server has its own directory (nodes.conf,
log); `stop()` kills every process it started (by its pid), whatever state the cluster is in.

    with Cluster(tmp_path, primaries=3).start() as cluster:
        url = cluster.url                       # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
        cluster.kill_primary_of("{ns:default}:q")  # SIGKILL; its replica takes over
        cluster.wait_failover(port)

Never touches 127.0.0.1:6379: every port comes from the kernel (bind to port 0).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER, REDIS_CLI = shutil.which("redis-server"), shutil.which("redis-cli")


def free_ports(n: int) -> list[int]:
    """n distinct free ports whose +10000 (the cluster bus port) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Cluster:
    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 password: str | None = None, appendonly: bool = False, extra: tuple[str, ...] = ()):
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are needed (apt-get install redis-server redis-tools)")
        self.dir, self.primaries, self.replicas = Path(directory), primaries, replicas
        self.node_timeout_ms, self.password, self.appendonly, self.extra = node_timeout_ms, password, appendonly, extra
        self.ports = free_ports(primaries * (1 + replicas))
        self.procs: dict[int, subprocess.Popen] = {}

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Cluster:
        try:
            for port in self.ports:
                self.start_node(port)
            auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
            create = subprocess.run([REDIS_CLI, *auth, "--cluster", "create",
                                     *(f"127.0.0.1:{p}" for p in self.ports),
                                     "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                    capture_output=True, text=True, timeout=60)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-800:]} {create.stderr[-400:]}")
            self.wait_healthy(30)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, port: int) -> None:
        node_dir = self.dir / f"node{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                "--dir", str(node_dir), "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--cluster-replica-validity-factor", "0", *self.extra]
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        with open(node_dir / "redis.log", "ab") as log:
            self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: self.client(port).ping(), 15, f"redis-server on port {port}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    # -- looking at it ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=3,
                           socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))

    def cluster_client(self) -> redis.RedisCluster:
        live = [p for p in self.ports if self.alive(p)]
        return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", p) for p in live],
                                  password=self.password, socket_timeout=3)

    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def role(self, port: int) -> str:
        return self.client(port).info("replication")["role"]

    def primary_ports(self) -> list[int]:
        return [p for p in self.ports if self.alive(p) and self.role(p) == "master"]

    def port_of_slot(self, slot: int) -> int:
        for start, end, primary, *_ in self.client(self.primary_ports()[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"slot {slot} is not served")

    def port_of_key(self, key: str) -> int:
        from redis.crc import key_slot

        return self.port_of_slot(key_slot(key.encode()))

    def healthy(self) -> bool:
        live = [p for p in self.ports if self.alive(p)]
        for port in live:
            info = self.client(port).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        masters = [p for p in live if self.role(p) == "master"]
        if len(masters) != self.primaries:
            return False
        if len(live) < len(self.ports) or not self.replicas:
            return True
        return all(self.client(p).info("replication").get("connected_slaves", 0) >= self.replicas for p in masters)

    def wait_healthy(self, timeout: float = 30) -> None:
        _wait(self.healthy, timeout, "the cluster to be ok (every slot served, every node agreeing)", 0.1)

    # -- faults -----------------------------------------------------------------------------
    def replica_of(self, port: int) -> int:
        for other in self.ports:
            if other != port and self.alive(other):
                info = self.client(other).info("replication")
                if info.get("role") == "slave" and int(info.get("master_port", 0)) == port:
                    return other
        raise AssertionError(f"no live replica of {port}")

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(10)

    def wait_failover(self, dead: int, replica: int, timeout: float = 30) -> None:
        """Until `replica` is a primary and every live node says the cluster is ok."""
        _wait(lambda: self.role(replica) == "master", timeout, f"replica {replica} to take over from {dead}", 0.05)
        _wait(lambda: all("cluster_state:ok" in self.client(p).execute_command("CLUSTER", "INFO").decode()
                          for p in self.ports if self.alive(p)), timeout, "cluster_state:ok after the failover", 0.05)

    def restart_as_replica(self, port: int, timeout: float = 30) -> None:
        """Start a killed node again (same nodes.conf): it rejoins as a replica of its successor."""
        self.start_node(port)
        _wait(lambda: self.role(port) == "slave" and self.client(port).info("replication").get("master_link_status")
              == "up", timeout, f"node {port} to rejoin as a replica")
