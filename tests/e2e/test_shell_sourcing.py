"""`/etc/default` files are `.`-sourced by root: hostile values must come back exactly and run nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy.generator.filters import sh
from tests.e2e.conftest import render_tree

HOSTILE = [
    "plain",
    "two words",
    "it's",
    'say "hi"',
    "$HOME ${HOME} $(touch {marker}) `touch {marker}`",
    "back\\slash\\",
    "line one\nline two\n",
    "; touch {marker}; #",
    "' ; touch {marker} ; '",
    "'\\''",
    "%(ENV_HOME)s %i %%",
    "-n",
    "trailing space ",
    "ünïcødé ✓",
    "",
    "\t tab",
    "*",
    "~root",
]


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_hostile_values_round_trip_through_sourcing(shell, tmp_path, write_config):
    marker = tmp_path / "pwned"
    values = {f"V{i}": v.replace("{marker}", str(marker)) for i, v in enumerate(HOSTILE)}
    cfg = write_config("[env]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    out = render_tree(tmp_path / "out", "--config", str(cfg), "--executable", "/usr/bin/qdeploy")
    for service in ("qworker", "qbeat"):
        script = f'. {out}/etc/default/{service} && for n in {" ".join(values)}; do eval "printf \'%s\\\\0\' \\"\\$$n\\""; done'
        result = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
        assert result.stdout.split("\0")[:-1] == list(values.values())
    assert not marker.exists()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40))
def test_sh_filter_round_trips_any_text(value):
    result = subprocess.run(["/bin/sh", "-c", f"x={sh(value)}; printf '%s' \"$x\""], capture_output=True, check=True)
    assert result.stdout.decode() == value
