"""The /etc/default files mean the same to `sh` and to systemd.

They are `.`-sourced by the init.d scripts and by supervisord's `sh -c '. FILE; exec ...'`, and read
by systemd's `EnvironmentFile=`. The two parsers agree only on some quoting: systemd reads the
shell's `'it'\\''s'` as `it''s'`. Here the same hostile values are read back by `sh` and `bash` on
this machine, and by `sh` and a real systemd (252, booted in a container: tests/e2e/host.py) with
`systemd-run --property=EnvironmentFile=`; every reading must be exactly the configured value.
What no environment can carry is refused with one line (exit 2)."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qdeploy.cli import main
from qdeploy.generator.datatypes import ENV_UNREPRESENTABLE
from qdeploy.generator.filters import env_value, toml_string
from tests.e2e.host import Host

VALUES = {
    "QUOTE": "it's", "SHELL_ESCAPED": "'\\''", "DOUBLE": 'say "hi"', "MIXED": "a'b\"c$d`e\\f g%h",
    "BACKSLASHES": "back\\slash\\", "TRAILING_BACKSLASH": "x\\", "BACKSLASH_NEWLINE": "a\\\nb",
    "DOLLARS": "$HOME ${HOME} $(id) `id` $$ ${X:-y}", "NEWLINES": "line one\nline two\n", "CRLF": "a\r\nb\r",
    "TRAILING_SPACES": "trailing  ", "LEADING_SPACES": "  leading", "TAB": "\t tab\t", "HASH": "# not a comment",
    "INNER_HASH": "a #b ;c", "SEMI": "; echo pwned", "UNICODE": "ünïcødé ✓ 中文 \U0001f600", "EMPTY": "",
    "EQUALS": "A=B=C", "CONTROL": "".join(chr(c) for c in range(1, 32)) + "\x7f", "BOM": "\ufeffbom",
    "PERCENT": "%i %n %% %(ENV_HOME)s", "LONE_QUOTE": "'", "LONE_DOUBLE": '"', "ESCAPED_DOUBLE": '\\"',
    "NEWLINE_COMMENT": "x\n# y\nZ=1", "STAR": "*", "TILDE": "~root",
}


def render(tmp_path, env: dict[str, str], name: str = "qdeploy.toml"):
    cfg = tmp_path / name
    cfg.write_text("[env]\n" + "".join(f"{k} = {toml_string(v)}\n" for k, v in env.items()))
    out = tmp_path / (name + ".out")
    return CliRunner().invoke(main, ["render", "--config", str(cfg), "--out", str(out),
                                     "--executable", "/usr/bin/qdeploy", "--only", "default"]), cfg, out


def sourced(shell: list[str], path: str, names: list[str]) -> list[str]:
    script = f'set -a; . {path}; for n in {" ".join(names)}; do eval "printf \'%s\\\\0\' \\"\\$$n\\""; done'
    result = subprocess.run([*shell, "-c", script], capture_output=True, check=True)
    return result.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_shells_read_every_value_exactly(shell, tmp_path):
    result, _, out = render(tmp_path, VALUES)
    assert result.exit_code == 0, result.output
    for service in ("qworker", "qbeat"):
        assert sourced([shell], str(out / "etc/default" / service), list(VALUES)) == list(VALUES.values())


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_env_value_round_trips_any_text_through_sh(value):
    assume(not ENV_UNREPRESENTABLE.search(value))
    result = subprocess.run(["/bin/sh", "-c", f'X={env_value(value)}; printf "%s" "$X"'], capture_output=True, check=True)
    assert result.stdout.decode() == value


def random_values(count: int, seed: int = 18) -> dict[str, str]:
    """Hostile text for systemd: quotes, escapes, newlines, `#`, spaces, unicode in random order."""
    rng = random.Random(seed)
    alphabet = list("'\"\\$`#; =\n\r\t%{}()*~!&|<>") + ["a", "Z", "0", "é", "✓", "\U0001f600", "\u00a0", "\x1b"]
    return {f"R{i}": "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24))) for i in range(count)}


@pytest.fixture(scope="module")
def host():
    if os.geteuid() != 0:
        pytest.fail("booting a container needs root")
    with Host.boot("qd-envfile") as booted:
        yield booted


DUMP = "import json, os, sys; json.dump(dict(os.environ), sys.stdout)"


def systemd_env(host: Host, path: str) -> dict[str, str]:
    """The environment systemd gives a service with `EnvironmentFile=path`."""
    result = host.run(["systemd-run", "--wait", "--pipe", "--quiet", f"--property=EnvironmentFile={path}",
                       "/usr/bin/python3", "-c", DUMP])
    return json.loads(result.stdout)


def sh_env(host: Host, path: str) -> dict[str, str]:
    """The environment of a program started the way init.d and supervisord start it."""
    return json.loads(host.run(["/bin/sh", "-c", f'set -a; . "$0"; exec /usr/bin/python3 -c \'{DUMP}\'', path]).stdout)


def test_systemd_and_sh_read_the_same_values(host, tmp_path):
    values = {**VALUES, **random_values(200)}
    result, _, out = render(tmp_path, values)
    assert result.exit_code == 0, result.output
    for service in ("qworker", "qbeat"):
        inside = host.copy_in(out / "etc/default" / service, f"/etc/default/{service}")
        by_systemd, by_sh = systemd_env(host, inside), sh_env(host, inside)
        for name, value in values.items():
            assert (name, by_systemd.get(name)) == (name, value), "systemd"
            assert (name, by_sh.get(name)) == (name, value), "sh"
        assert by_systemd["QDEPLOY_USER"] == by_sh["QDEPLOY_USER"] == "qdeploy"


def test_the_check_catches_a_quoting_systemd_reads_differently(host, tmp_path):
    """Single quotes with the shell's '\\'' (what render wrote before): sh is right, systemd is not."""
    path = tmp_path / "single"
    path.write_text("QUOTE='it'\\''s'\n")
    inside = host.copy_in(path, "/etc/default/single")
    assert sh_env(host, inside)["QUOTE"] == "it's"
    assert systemd_env(host, inside)["QUOTE"] == "it''s'"


def test_an_unrepresentable_value_stops_systemd_which_is_why_render_refuses_it(host, tmp_path):
    path = tmp_path / "nonchar"
    path.write_text('OK="yes"\nBAD="x\ufdd0"\n')
    inside = host.copy_in(path, "/etc/default/nonchar")
    result = host.run(["systemd-run", "--wait", "--pipe", "--quiet", f"--property=EnvironmentFile={inside}",
                       "/usr/bin/true"], check=False)
    assert result.returncode != 0  # "Failed to load environment files": the service does not start


@pytest.mark.parametrize("char", ["\0", "\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff"])
def test_values_no_service_can_get_are_refused(char, tmp_path):
    result, cfg, out = render(tmp_path, {"GOOD": "x", "BAD": f"a{char}b"})
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"qdeploy: error: {cfg}: env = {{'GOOD': 'x', 'BAD': {('a' + char + 'b')!r}}}: "
                             f"expected a value for BAD without U+{ord(char):04X} (NUL, surrogates and Unicode "
                             "noncharacters cannot be passed to a service)\n")
    assert not out.exists()
