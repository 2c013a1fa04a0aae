"""`qdeploy package`: build an installable .deb or .rpm of qdeploy, the app and the rendered files."""

from __future__ import annotations

import time
from pathlib import Path

import click

from qdeploy import __version__
from qdeploy.cli.common import config_option, fail, load_config, setting_options
from qdeploy.deploy import package as package_mod
from qdeploy.generator.config import ConfigError
from qdeploy.generator.settings import SETTINGS

# The render settings, except executable: the package forces the venv it installs.
PACKAGE_KEYS = [s.key for s in SETTINGS if s.flag and s.key != "executable"]


@click.command()
@click.option("--format", "fmt", required=True, metavar="deb|rpm", help="Package format.")
@config_option
@click.option("--app-wheel", "app_wheels", multiple=True, metavar="WHEEL",
              help="A wheel of the application (repeatable); its dependencies are bundled too.")
@click.option("--requirements", "-r", metavar="FILE", help="A requirements file to bundle as well.")
@click.option("--qdeploy-wheel", metavar="WHEEL",
              help="The qdeploy wheel to bundle (default: built from this source checkout, or "
                   "rebuilt from the installed qdeploy's files).")
@click.option("--out", default="dist", show_default=True, metavar="DIR", help="Where to write the package.")
@click.option("--name", default="qdeploy", show_default=True, help="Package name.")
@click.option("--pkg-version", default=__version__, show_default=True, help="Package version (no '-').")
@click.option("--release", default="1", show_default=True, help="Debian revision / RPM release.")
@click.option("--start/--no-start", default=False, show_default=True,
              help="Start the services on first install (they are always enabled).")
@click.option("--python", default=package_mod.TARGET_PYTHON, show_default=True,
              help="The target's python3 the venv is built with (RHEL 9: /usr/bin/python3.11).")
@click.option("--maintainer", default="qdeploy <root@localhost>", show_default=True)
@setting_options(PACKAGE_KEYS)
def package(fmt, config_file, app_wheels, requirements, qdeploy_wheel, out, name, pkg_version, release,
            start, python, maintainer, **settings):
    """Build a .deb/.rpm: qdeploy + the app as a wheelhouse (installed offline into
    /opt/qdeploy/venv), and every rendered file, with maintainer scripts."""
    if fmt not in package_mod.FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(package_mod.FORMATS)}", 2)
    settings["executable"] = package_mod.QDEPLOY_EXECUTABLE
    cfg = load_config(config_file, settings)
    spec = package_mod.Spec(
        format=fmt, cfg=cfg, out=Path(out), name=name, version=pkg_version, release=release,
        app_wheels=[Path(w) for w in app_wheels], requirements=Path(requirements) if requirements else None,
        qdeploy_wheel=Path(qdeploy_wheel) if qdeploy_wheel else None, start=start, python=python,
        maintainer=maintainer,
    )
    started = time.monotonic()
    try:
        path = package_mod.build(spec)
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    except package_mod.PackageError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        fail(f"cannot write {exc.filename or out}: {exc.strerror or exc}")
    click.echo(f"built {path} in {time.monotonic() - started:.1f}s")


COMMANDS = [package]
