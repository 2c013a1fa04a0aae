"""bench/growth.py at tiny sizes: every curve, its table, verdicts, JSON, README block and plot,
so that `.ci/run` notices when the growth bench rots (a changed Broker, ControlServer, CLI...).

No timing is asserted: the numbers of a tiny run mean nothing. What is asserted is that every
curve produced a number at every size, that the ETA tasks ran exactly once and the scheduled
ones stayed scheduled, that every simulated node was listed and answered, and what was written.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def tiny_growth(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: .ci/run installs it")
    out = tmp_path_factory.mktemp("growth")
    readme = out / "README.md"
    readme.write_text("# bench\n\nbefore\n\n<!-- growth:start -->\nold block\n<!-- growth:end -->\n\nafter\n")
    argv = [sys.executable, str(BENCH / "run.py"), "--growth", "--systems", "qdeploy", "--no-reference",
            "--memory-sizes", "100,200,300", "--eta-sizes", "100,200,300", "--eta-due", "20",
            "--node-counts", "1,2,3", "--render-nodes", "1,2,3", "--repeats", "1", "--window", "0.3",
            "--settle", "0.2", "--load-wait", "0", "--cap", "20",
            "--growth-out", str(out / "growth.json"), "--growth-plot", str(out / "growth.png"),
            "--growth-readme", str(readme)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return proc, out


def test_every_curve_has_a_value_at_every_size(tiny_growth):
    proc, out = tiny_growth
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    doc = json.loads((out / "growth.json").read_text())
    expected = {"memory": ["100", "200", "300"], "eta": ["100", "200", "300"], "nodes": ["1", "2", "3"],
                "render": ["1", "2", "3"]}
    fields = {"memory": "per_task", "eta": "master_rss_mib", "nodes": "cpu_pct", "render": "seconds"}
    for curve, sizes in expected.items():
        cells = doc["curves"][curve]["qdeploy"]
        assert sorted(cells, key=int) == sizes, curve
        for size in sizes:
            runs = cells[size]["runs"]
            assert runs and all("error" not in r for r in runs), (curve, size, runs)
            assert all(isinstance(r[fields[curve]], (int, float)) for r in runs), (curve, size)


def test_the_curves_check_what_they_measure(tiny_growth):
    _, out = tiny_growth
    doc = json.loads((out / "growth.json").read_text())
    for size, cell in doc["curves"]["memory"]["qdeploy"].items():
        (run,) = cell["runs"]
        assert run["waiting"] == run["sent"] == int(size) and run["per_task"] > 0
    for size, cell in doc["curves"]["eta"]["qdeploy"].items():
        (run,) = cell["runs"]
        assert run["exactly_once"] and run["ran_early"] == 0 and run["still_scheduled"] == int(size)
        assert run["zrange_calls"] and run["redis_us_per_task"] > 0
    for size, cell in doc["curves"]["nodes"]["qdeploy"].items():
        (run,) = cell["runs"]
        n = int(size)
        assert {"sweeps_cpu_pct", "polling_cpu_pct", "beats_cpu_pct"} <= set(run), "Redis CPU split by kind of load"
        assert (run["online"], run["answered"], run["replies"], run["pongs"]) == (n, n, n, n)
        assert run["sim"]["errors"] == 0 and run["sim"]["beats"] >= n and run["sim"]["sweeps"] >= 1
        assert run["sim"]["reserves"] > 0 and run["sim"]["control"] >= 2 * n, "inspect stats and ping, per node"
    assert set(doc["calibration"]) == {"real", "simulated"}


def test_the_readme_block_is_replaced_and_the_table_written(tiny_growth):
    proc, out = tiny_growth
    text = (out / "README.md").read_text()
    assert text.startswith("# bench\n\nbefore\n\n<!-- growth:start (written by bench/run.py --growth) -->")
    assert text.endswith("<!-- growth:end -->\n\nafter\n") and "old block" not in text
    assert "| Redis memory per waiting task (bytes) (100 / 200 / 300 queued tasks) | qdeploy |" in text
    assert "ETA, qdeploy worker memory flat (≤ +10 %)" in text
    assert "calibration, one idle node" in text
    assert "| measure (sizes) | system | size 1 | size 2 | size 3 | last / first |" in proc.stdout


def test_the_plot_is_written_when_matplotlib_is_installed(tiny_growth):
    proc, out = tiny_growth
    text = (out / "README.md").read_text()
    if importlib.util.find_spec("matplotlib") is None:  # the optional `bench` extra
        assert "matplotlib is not installed" in proc.stderr and not (out / "growth.png").exists()
        assert "(no plot: matplotlib" in text
    else:
        assert (out / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![growth curves](growth.png)" in text


@pytest.mark.parametrize("args, message", [
    (["--memory-sizes", "10k,1k"], "--memory-sizes: sizes must be increasing and distinct"),
    (["--eta-sizes", "1x"], "--eta-sizes: '1x' is not a size"),
    (["--node-counts", "0,1"], "--node-counts: 0 is out of range (expected 1 to 400)"),
    (["--render-nodes", "\udcff"], "--render-nodes:"),
    (["--curves", "memory,nope"], "--curves: unknown curve(s) ['nope']"),
    (["--window", "nan"], "--window: expected a number from 0.1 to 600"),
    (["--maxmemory", "6gb; FLUSHALL"], "--maxmemory: expected a size like 512mb or 6gb"),
])
def test_bad_growth_options_are_refused_in_one_line_before_anything_starts(args, message):
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--growth", *args, "--no-write"],
                          capture_output=True, text=True, timeout=60, errors="replace")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "machine:" not in proc.stderr, "nothing was started"


def test_merge_re_measures_one_curve_and_keeps_the_others(tiny_growth, tmp_path):
    out = tmp_path / "growth"
    shutil.copytree(tiny_growth[1], out)  # the other tests read the fixture's files as they were
    before = json.loads((out / "growth.json").read_text())
    argv = [sys.executable, str(BENCH / "run.py"), "--growth", "--systems", "qdeploy", "--no-reference", "--merge",
            "--curves", "render", "--render-nodes", "1,4,9", "--repeats", "1", "--load-wait", "0",
            "--growth-out", str(out / "growth.json"), "--growth-plot", str(out / "growth.png"),
            "--growth-readme", str(out / "README.md")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    after = json.loads((out / "growth.json").read_text())
    assert sorted(after["curves"]["render"]["qdeploy"], key=int) == ["1", "4", "9"]
    for curve in ("memory", "eta", "nodes"):
        assert after["curves"][curve] == before["curves"][curve], f"{curve} is kept as it was"
    assert [r["curves"] for r in after["runs"]] == [["memory", "eta", "nodes"], ["render"]]
    assert after["calibration"] == before["calibration"]
    text = (out / "README.md").read_text()
    assert "Measured in " in text and "(render; load" in text and "(1 / 4 / 9 nodes)" in text
