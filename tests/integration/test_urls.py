"""Broker URL forms against real servers: ACL user, password, unix socket, TLS, Sentinel (one, and
two with a replica and a failover, plain and TLS)."""

import shutil
import signal
import subprocess

import pytest
import redis

from qdeploy.core.app import App
from tests.integration.conftest import drain, free_port, run_cli, wait_until


def roundtrip(url: str, namespace: str) -> None:
    app = App("u", broker=url, namespace=namespace)

    @app.task(name="u.add")
    def add(x, y):
        return x + y

    res = add.delay(20, 22)
    drain(app, 1)
    assert res.get(timeout=2) == 42


def test_acl_user(redis_server, rclient, namespace):
    user = f"u_{namespace}"
    rclient.acl_setuser(user, enabled=True, passwords=["+s3cret"], keys=["~*"], channels=["&*"],
                        commands=["+@all"])
    try:
        roundtrip(f"redis://{user}:s3cret@127.0.0.1:{redis_server.port}/0", namespace)
        bad = run_cli("result", "x", "-b", f"redis://{user}:wrong@127.0.0.1:{redis_server.port}/0")
        assert bad.returncode == 3 and "cannot reach broker" in bad.stderr
        assert "wrong" not in bad.stderr, "passwords are redacted"
    finally:
        rclient.acl_deluser(user)


def test_requirepass_and_unix_socket(make_server, namespace):
    server = make_server(password="pw")
    roundtrip(f"redis://:pw@127.0.0.1:{server.port}/0", namespace)
    roundtrip(f"unix://:pw@{server.socket}?db=2", namespace + "u")
    db2 = server.client()
    db2.select(2)
    assert db2.exists(f"{namespace}u:msg") == 0 and any(True for _ in db2.scan_iter(f"{namespace}u:r:*"))


def _certs(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test CA")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=tmp_path, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=qdeploy-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", "server.crt", "-extfile", "ext.cnf")
    return tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"


def test_tls_rediss(make_server, tmp_path, namespace):
    ca, cert, key = _certs(tmp_path)
    tls_port = free_port()
    make_server("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    roundtrip(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}", namespace)
    with pytest.raises(redis.ConnectionError):  # a CA we do not trust -> refused
        App("u", broker=f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required").transport.ping()


def test_sentinel(make_server, tmp_path, namespace):
    binary = shutil.which("redis-sentinel")
    if binary is None:
        pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)")
    master = make_server()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    "sentinel down-after-milliseconds mymaster 5000\n")
    proc = subprocess.Popen([binary, str(conf)], stdout=open(tmp_path / "sentinel.log", "wb"),
                            stderr=subprocess.STDOUT)
    try:
        probe = redis.Redis(port=port)

        def knows_master():
            try:
                return probe.sentinel_get_master_addr_by_name("mymaster")
            except redis.ConnectionError:
                return None

        wait_until(knows_master, 10, what="sentinel to know the master")
        roundtrip(f"sentinel://127.0.0.1:{port}/0?master=mymaster", namespace)
        assert master.client().exists(f"{namespace}:msg") == 0  # the data went to the real master
        assert any(True for _ in master.client().scan_iter(f"{namespace}:r:*"))
    finally:
        proc.terminate()
        proc.wait(10)


# -- two sentinels, one master, one replica, a failover (both documented forms) --------------
class Sentinels:
    """A master, its replica and two redis-sentinel processes on private ports, all with a
    password; with `tls`, every link (clients, replication, sentinels) is TLS only."""

    MASTER = "qm"
    PASSWORD = "Sentinel-Pw-3x"

    def __init__(self, make_server, tmp_path, tls: bool):
        binary = shutil.which("redis-sentinel")
        if binary is None:
            pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)")
        self.tls, self.tmp, self.procs = tls, tmp_path, []
        self.ca, cert, key = _certs(tmp_path) if tls else (None, None, None)
        self.tls_args = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                         str(self.ca), "--tls-auth-clients", "no", "--tls-replication", "yes"] if tls else []
        self.ports = {}  # server -> the port clients use (the TLS one with tls)
        pw = ["--masterauth", self.PASSWORD, "--repl-diskless-sync-delay", "0"]
        self.master = self._server(make_server, pw)
        self.replica = self._server(make_server, [*pw, "--replicaof", "127.0.0.1", str(self.ports[self.master])])
        wait_until(lambda: self.replica.client().info("replication").get("master_link_status") == "up",
                   10, what="the replica in sync")
        self.sentinel_ports = [self._sentinel(binary, i) for i in (1, 2)]
        for port in self.sentinel_ports:
            wait_until(lambda p=port: self._knows_everyone(p), 20, what=f"sentinel {port} to see replica and peer")

    def _server(self, make_server, extra):
        if not self.tls:
            server = make_server(*extra, password=self.PASSWORD)
            self.ports[server] = server.port
            return server
        tls_port = free_port()
        server = make_server("--tls-port", str(tls_port), *self.tls_args, *extra, password=self.PASSWORD)
        self.ports[server] = tls_port
        return server

    def _sentinel(self, binary, n):
        port = free_port()
        listen = (f"port 0\ntls-port {port}\n" + "".join(f"{self.tls_args[i][2:]} {self.tls_args[i + 1]}\n"
                                                         for i in range(0, len(self.tls_args), 2))
                  if self.tls else f"port {port}\n")
        conf = self.tmp / f"sentinel{n}.conf"
        conf.write_text(f"{listen}bind 127.0.0.1\ndir {self.tmp}\n"
                        f"sentinel monitor {self.MASTER} 127.0.0.1 {self.ports[self.master]} 1\n"
                        f"sentinel auth-pass {self.MASTER} {self.PASSWORD}\n"
                        f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                        f"sentinel failover-timeout {self.MASTER} 10000\n")
        self.procs.append(subprocess.Popen([binary, str(conf)], stdout=open(self.tmp / f"sentinel{n}.log", "wb"),
                                           stderr=subprocess.STDOUT))
        return port

    def probe(self, port) -> redis.Redis:
        tls = dict(ssl=True, ssl_ca_certs=str(self.ca)) if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **tls)

    def _knows_everyone(self, port) -> bool:
        try:
            probe = self.probe(port)
            replicas, peers = probe.sentinel_slaves(self.MASTER), probe.sentinel_sentinels(self.MASTER)
        except redis.RedisError:
            return False
        return len(peers) == 1 and any(r.get("is_slave") and not r.get("is_sdown") and
                                       r.get("master-link-status") == "ok" for r in replicas)

    def url(self) -> str:
        scheme = "sentinels" if self.tls else "sentinel"
        query = f"&ssl_ca_certs={self.ca}" if self.tls else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"{scheme}://:{self.PASSWORD}@{hosts}/0?master={self.MASTER}{query}"

    def master_port(self, port) -> int | None:
        try:
            return int(self.probe(port).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)[1])
        except (redis.RedisError, TypeError):
            return None

    def stop(self, n: int | None = None) -> None:
        for proc in self.procs if n is None else [self.procs[n]]:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(params=["sentinel", "sentinels"])
def sentinels(request, make_server, tmp_path):
    topology = Sentinels(make_server, tmp_path, tls=request.param == "sentinels")
    yield topology
    topology.stop()


def _role(server) -> str:
    return server.client().info("replication")["role"]


def test_both_sentinel_forms_survive_a_failover_with_a_real_worker(sentinels, namespace, tmp_path):
    """Both documented forms, with both sentinels in the URL: a real worker delivers tasks; the
    master is killed, the sentinels promote the replica, and the producer and the worker carry
    on on the new master; with the first sentinel gone too, a new producer finds the master
    through the second."""
    from tests.integration.workers import Master

    url = sentinels.url()
    master = Master(url, namespace, tmp_path, "--allow-root", "-c", "1", "-l", "debug").ready()
    try:
        app = App("u", broker=url, namespace=namespace)
        assert app.send_task("t.pid", ["before"]).get(timeout=20) in [c.pid for c in master.children()]

        sentinels.master.proc.kill()  # the master dies; the sentinels elect a leader and fail over
        new_port = sentinels.ports[sentinels.replica]
        for port in sentinels.sentinel_ports:
            wait_until(lambda p=port: sentinels.master_port(p) == new_port, 30, interval=0.1,
                       what=f"sentinel {port} to name the new master")
        assert _role(sentinels.replica) == "master"

        after = app.send_task("t.pid", ["after"])  # the producer, on the new master
        assert after.get(timeout=30) in [c.pid for c in master.children()], "the worker carries on"
        assert int(sentinels.replica.client().get(f"{namespace}:test:runs:after")) == 1, "ran once, on the new master"

        sentinels.stop(0)  # the first sentinel in the URL is gone: the second answers
        fresh = App("u", broker=url, namespace=namespace)
        assert fresh.send_task("t.pid", ["third"]).get(timeout=30)
    finally:
        master.signal(signal.SIGTERM)
        code = master.wait(30)
    log = master.output()
    assert code == 0, log[-3000:]
    assert "lost connection to Redis" in log, "the worker saw the master die"
    assert sentinels.PASSWORD not in log, "the worker's log redacts the sentinel URL"
