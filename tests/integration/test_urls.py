"""Broker URL forms against real servers: ACL user, password, unix socket, TLS, Sentinel."""

import shutil
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
