"""The rendered systemd units: `systemd-analyze verify` prints nothing, `security` rates them <= 1.5,
and ExecStart= parses back to the argv `render --explain` reports."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from qdeploy.generator import config, render
from tests.conftest import GOLDEN
from tests.e2e.conftest import render_tree

THRESHOLD = 1.5


def rendered(tmp_path: Path, case: str) -> Path:
    # ExecStart= must name an existing executable for `verify`: use the real one (auto).
    args = ["--config", str(GOLDEN / "rich.toml"), "--executable", "auto"] if case == "rich" else []
    return render_tree(tmp_path / "out", *args) / "etc/systemd/system"


@pytest.mark.parametrize("case", ["default", "rich"])
def test_verify_prints_nothing(case, tmp_path):
    units = sorted(str(p) for p in rendered(tmp_path, case).iterdir())
    assert len(units) == 3
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_can_fail(tmp_path):
    unit = rendered(tmp_path, "default") / "qbeat.service"
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Failed to parse service type" in result.stdout + result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


@pytest.mark.parametrize("case", ["default", "rich"])
@pytest.mark.parametrize("unit", ["qworker@.service", "qbeat.service"])
def test_security_exposure_at_most_threshold(case, unit, tmp_path):
    assert exposure(rendered(tmp_path, case) / unit) <= THRESHOLD


def test_security_measure_can_fail(tmp_path):
    unit = rendered(tmp_path, "default") / "qbeat.service"
    body = "".join(line for line in unit.read_text().splitlines(keepends=True) if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability", "NoNew")))
    unit.write_text(body)
    assert exposure(unit) > 5


def systemd_split(line: str) -> list[str]:
    """Undo the quoting of ExecStart= (double quotes with C escapes, %% and $$, a lone \\;)."""
    words = shlex.split(line.replace("%%", "\0pct").replace("$$", "$"), posix=True)
    return [";" if w == ";" else w.replace("\0pct", "%") for w in words]


def test_execstart_is_the_explained_argv(tmp_path):
    units = rendered(tmp_path, "rich")
    cfg = config.load(str(GOLDEN / "rich.toml"), cli={"executable": "auto"}, environ={})
    explained = render.explain(cfg)
    worker = re.search(r"^ExecStart=(.*)$", (units / "qworker@.service").read_text(), re.M)[1]
    for node in cfg.nodes:
        assert systemd_split(worker.replace(" %i ", f" {node} ")) == explained[f"qworker@{node}"]["argv"]
    beat = re.search(r"^ExecStart=(.*)$", (units / "qbeat.service").read_text(), re.M)[1]
    assert systemd_split(beat) == explained["qbeat"]["argv"]


def test_units_have_the_required_directives(tmp_path):
    units = rendered(tmp_path, "default")
    worker = (units / "qworker@.service").read_text()
    for directive in (
        "Type=notify", "KillMode=mixed", "TimeoutStopSec=75", "Restart=on-failure", "StartLimitBurst=5",
        "PartOf=qworker.target", "WantedBy=qworker.target", "RuntimeDirectory=qdeploy",
        "LogsDirectory=qdeploy", "StateDirectory=qdeploy", "EnvironmentFile=-/etc/default/qworker",
        "User=qdeploy", "Group=qdeploy", "UMask=0027", "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert f"\n{directive}\n" in worker, directive
    assert "\nWantedBy=multi-user.target\n" in (units / "qworker.target").read_text()
