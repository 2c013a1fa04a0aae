"""`qdeploy enqueue / result / worker --pool solo` end to end, and bad inputs."""

import signal
import subprocess

import pytest
from qdeploy.ops import fleet

from tests.integration.conftest import free_port, run_cli, wait_until


@pytest.fixture
def cli(redis_server, namespace):
    env = {"QDEPLOY_NAMESPACE": namespace, "QDEPLOY_BROKER": redis_server.url}
    return lambda *args, **kw: run_cli(*args, env=dict(env, **kw.pop("env", {})), **kw)


def test_enqueue_worker_result_end_to_end(cli, redis_server, workers):
    sent = cli("enqueue", "demo.add", "2", "3")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert cli("result", task_id).stdout.strip() == "PENDING null"
    w = workers("-A", "qdeploy.demo:app", "-Q", "default", "-n", "cli@test", "--max-tasks-per-child", "1")
    assert w.proc.wait(20) == 0, w.output()
    got = cli("result", task_id)
    assert (got.returncode, got.stdout.strip()) == (0, "SUCCESS 5")
    assert '"state": "SUCCESS"' in cli("result", task_id, "--json").stdout


def test_enqueue_wait_kwargs_and_failures(cli, workers):
    w = workers("-A", "qdeploy.demo:app", "-Q", "default", "-n", "cli2@test")
    echo = cli("enqueue", "demo.echo", "1", "text", '{"a": 1}', "-k", "n=[1,2]", "--wait")
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout.splitlines()[1] == 'SUCCESS {"args": [1, "text", {"a": 1}], "kwargs": {"n": [1, 2]}}'
    failed = cli("enqueue", "demo.fail", "boom", "--wait")
    assert failed.returncode == 1 and failed.stdout.splitlines()[1] == "FAILURE RuntimeError: boom"
    again = cli("result", failed.stdout.splitlines()[0], "--traceback")
    assert again.returncode == 1 and "Traceback" in again.stdout
    assert w.stop() == 0


def test_worker_exits_0_on_sigterm_after_finishing_the_current_task(cli, workers, redis_server, namespace):
    from qdeploy.core.app import App
    app = App("demo", broker=redis_server.url, namespace=namespace)
    res = app.send_task("demo.sleep", [1.0])
    w = workers("-A", "qdeploy.demo:app", "-n", "term@test")
    wait_until(lambda: res.state == "STARTED", what="the task to start")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(15) == 0
    assert res.get(timeout=1) == 1.0, "the running task was finished, not abandoned"
    assert fleet.inflight(app.transport, "term@test") == []


def one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr


@pytest.mark.parametrize("command", ["worker", "enqueue", "result"])
def test_bad_inputs_are_one_line_errors(cli, command):
    extra = {"worker": ["--pool", "solo", "--allow-root"], "enqueue": ["demo.add", "1", "2"], "result": ["some-id"]}[command]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    one_line_error(cli(command, *extra, "-A", "no.such.module:app"), 2, "cannot import app 'no.such.module:app'")
    one_line_error(cli(command, *extra, "-A", "qdeploy.demo:nope"), 2, "is not a qdeploy App")
    # every command validates -b like every config value (one parser: qdeploy.core.urls)
    one_line_error(cli(command, *extra, "-b", "http://127.0.0.1:1/0"), 2, "expected a URL starting with one of redis://")
    one_line_error(cli(command, *extra, "-b", "redis://127.0.0.1:port/0"), 2, "expected a port from 1 to 65535")
    one_line_error(cli(command, *extra, "-b", dead), 3, f"cannot reach broker {dead}")


def test_more_bad_inputs(cli):
    one_line_error(cli("enqueue", "demo.nope"), 2, "unknown task 'demo.nope'")
    one_line_error(cli("enqueue", "demo.add", "-k", "novalue"), 2, "bad --kwarg 'novalue'")
    one_line_error(cli("result", "nope", "--wait", "--timeout", "0.1"), 4, "not ready after 0.1s")
    forced = cli("enqueue", "demo.nope", "--force")
    assert forced.returncode == 0 and len(forced.stdout.strip()) == 36
