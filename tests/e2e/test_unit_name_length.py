"""The longest node name render accepts (64) makes a unit name systemd accepts; the names systemd
refuses (qworker@<240+>.service) are refused by render. The config/worker/control side of the
limit: tests/integration/test_node_name_length.py."""

from __future__ import annotations

import shutil
import subprocess

from click.testing import CliRunner

from qdeploy.cli import main
from tests.e2e.conftest import render_tree

N64, N240 = "n." * 32, "x" * 240


def verify(*units) -> str:
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    return f"{result.returncode} {result.stdout}{result.stderr}".strip()


def test_a_64_character_node_makes_a_unit_systemd_accepts(tmp_path):
    units = render_tree(tmp_path / "out", "--nodes", f"1,{N64}", "--executable", "auto") / "etc/systemd/system"
    assert f"Wants=qworker@1.service qworker@{N64}.service\n" in (units / "qworker.target").read_text()
    instance = tmp_path / "instance" / f"qworker@{N64}.service"
    instance.parent.mkdir()
    shutil.copy(units / "qworker@.service", instance)
    assert verify(*sorted(units.iterdir())) == "0"
    assert verify(instance) == "0"


def test_a_name_systemd_refuses_is_refused_by_render(tmp_path):
    units = render_tree(tmp_path / "out", "--nodes", "1", "--executable", "auto") / "etc/systemd/system"
    target = units / "qworker.target"
    target.write_text(target.read_text().replace("qworker@1.service", f"qworker@{N240}.service"))
    refused = verify(target, units / "qworker@.service")  # what render used to write for such a node
    assert f"Failed to add dependency on qworker@{N240}.service, ignoring: Invalid argument" in refused, refused
    out = tmp_path / "refused"
    result = CliRunner().invoke(main, ["render", "--out", str(out), "--nodes", f"1,{N240}"])
    assert result.exit_code == 2 and "expected names of 1 to 64 letters" in result.stderr, result.output
    assert not out.exists()
