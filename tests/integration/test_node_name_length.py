"""One node name limit (64, `datatypes.NODE_NAME_MAX`) for the config, `qdeploy worker --node/-n`
and `control -d`: a 64-character node renders, runs and answers `control ping -d NAME`; a
65-character one is refused by each with one line and exit 2. (systemd's view of the unit name:
tests/e2e/test_unit_name_length.py.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.ops.control import check_destinations
from tests.integration.conftest import run_cli, wait_until

N64, N65, N240 = "n" * 63 + "4", "n" * 64 + "5", "x" * 240


def config(tmp_path, *names: str):
    path = tmp_path / "qdeploy.toml"
    path.write_text("[worker]\nnodes = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    return path


@pytest.mark.parametrize("name", [N65, N240, "a" * 1000])
def test_the_config_refuses_a_node_name_over_64(name, tmp_path):
    cfg = config(tmp_path, "1", name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 2, result.output
    line, = result.stderr.splitlines()
    assert line.startswith(f"qdeploy: error: {cfg}: worker.nodes = ") and line.endswith(
        "expected a list of node names: expected names of 1 to 64 letters, digits and _ . -")
    assert not out.exists()


def test_the_config_takes_a_node_name_of_64(tmp_path):
    result = CliRunner().invoke(main, ["render", "--config", str(config(tmp_path, N64)), "--explain", "--json",
                                       "--executable", "/usr/bin/qdeploy"])
    assert result.exit_code == 0, result.output
    assert f'"qworker@{N64}"' in result.output


@pytest.mark.parametrize("args", [["--node", N65], ["-n", N65], ["-n", f"{N65}@host"], ["--node", N240]])
def test_the_worker_refuses_a_node_name_over_64(args):
    result = run_cli("worker", *args, "-b", "redis://127.0.0.1:1/0")
    assert result.returncode == 2, result.stderr
    name = args[1].partition("@")[0]
    assert result.stderr == (f"qdeploy: error: node name {name[:40] + '...'!r} ({len(name)} characters) must be "
                             "1 to 64 letters, digits and _ . -\n")


@pytest.mark.parametrize("value, ok", [(N64, True), (f"{N64}@host.example", True), (N65, False),
                                       (f"{N65}@host", False), (f"{N64},{N65}", False), ("", False)])
def test_control_destinations_take_the_same_limit(value, ok):
    if ok:
        assert check_destinations([value]) == [value]
    else:
        with pytest.raises(ValueError, match="invalid destination"):
            check_destinations([value])


def test_control_cli_refuses_a_destination_over_64(redis_server):
    result = run_cli("control", "ping", "-d", N65, "-b", redis_server.url, "--timeout", "0.2")
    assert result.returncode == 2 and "invalid destination" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_64_character_node_runs_and_answers_control_d(workers, redis_server, namespace, tmp_path):
    cfg = config(tmp_path, N64)
    worker = workers("--config", str(cfg), "--node", N64, "--pool", "prefork", "-c", "1")

    def pong():
        result = run_cli("control", "ping", "-d", N64, "-b", redis_server.url, "--timeout", "0.5", "--json",
                         env={"QDEPLOY_NAMESPACE": namespace})
        return result.returncode == 0 and N64 in result.stdout

    wait_until(lambda: pong() or worker.proc.poll() is not None, timeout=20, what="a pong from the 64-char node")
    assert worker.proc.poll() is None, worker.output()
    assert worker.stop() == 0
