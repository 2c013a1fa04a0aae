"""`qdeploy package`: one installable .deb/.rpm with qdeploy, the user's app and the rendered files.

Nothing is fetched at install time. The package carries a *wheelhouse* (/opt/qdeploy/wheels:
qdeploy, the app wheels and every dependency, downloaded here for the target interpreter), and
its postinst builds a fresh venv from it with the target's own `python3 -m venv` at
/opt/qdeploy/venvs/<version>-<stamp>, then points the symlink /opt/qdeploy/venv at it. A venv is
never moved after it is built, so its script shebangs are always right (see docs/packaging.md).

The maintainer scripts live in packaging/ (shared shell functions plus one body per hook); this
module prepends the values of the config (user, directories, units) to each, stages the tree and
runs dpkg-deb or rpmbuild. The package is written to a temporary name and renamed into --out, so
a failed build leaves nothing there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qdeploy import __version__
from qdeploy.deploy import wheel as wheel_mod
from qdeploy.generator.config import Config
from qdeploy.generator.render import SECRET, File, render

PREFIX = "/opt/qdeploy"
VENV = f"{PREFIX}/venv"
WHEELS = f"{PREFIX}/wheels"
QDEPLOY_EXECUTABLE = f"{VENV}/bin/qdeploy"  # what the rendered services run
TARGET_PYTHON = "/usr/bin/python3"  # Debian 12: 3.11.2; RHEL 9 users pass /usr/bin/python3.11
TARGET_MINOR = (3, 11)
FORMATS = ("deb", "rpm")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # valid as a Debian and an RPM package name
VERSION_RE = re.compile(r"[0-9][A-Za-z0-9.+~]*")  # no '-': deb revision / rpm release are separate
ARCHES = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}  # wheel tag -> (deb, rpm)


class PackageError(Exception):
    """Cannot build: the message is one line. exit_code 2 = bad input, 1 = the build failed."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Spec:
    format: str
    cfg: Config
    out: Path = Path("dist")
    name: str = "qdeploy"
    version: str = __version__
    release: str = "1"
    app_wheels: list[Path] = field(default_factory=list)
    requirements: Path | None = None
    qdeploy_wheel: Path | None = None  # default: built from this source checkout, or the installed files
    start: bool = False  # start the services on first install (they are always enabled)
    python: str = TARGET_PYTHON
    maintainer: str = "qdeploy <root@localhost>"


def for_package(cfg: Config) -> Config:
    """The config as the package installs it: the services run the packaged venv's qdeploy."""
    return dataclasses.replace(cfg, values={**cfg.values, "executable": QDEPLOY_EXECUTABLE})


def build(spec: Spec) -> Path:
    """Build the package; return its path under spec.out."""
    _check(spec)
    cfg = for_package(spec.cfg)
    files = render(cfg)
    with tempfile.TemporaryDirectory(prefix="qdeploy-package-") as tmp:
        work = Path(tmp)
        wheelhouse = work / "root" / WHEELS.lstrip("/")
        wheels = collect_wheels(spec, wheelhouse, work)
        arch = wheelhouse_arch(wheels)
        _stage(work / "root", files)
        values = _values(spec, cfg, files)
        if spec.format == "deb":
            built = _build_deb(spec, work, files, values, arch)
        else:
            built = _build_rpm(spec, work, files, values, arch)
        spec.out.mkdir(parents=True, exist_ok=True)
        final = spec.out / built.name
        partial = spec.out / f".{built.name}.partial"
        shutil.copyfile(built, partial)
        partial.replace(final)
    return final


def _check(spec: Spec) -> None:
    if spec.format not in FORMATS:
        raise PackageError(f"--format {spec.format!r}: expected one of {', '.join(FORMATS)}", 2)
    if not NAME_RE.fullmatch(spec.name):
        raise PackageError(f"--name {spec.name!r}: expected lower-case letters, digits and + . -", 2)
    for what, value in (("--pkg-version", spec.version), ("--release", spec.release)):
        if not VERSION_RE.fullmatch(value):
            raise PackageError(f"{what} {value!r}: expected a version such as 1.2.0 (digits, letters, . + ~)", 2)
    for what, path in [("--app-wheel", w) for w in spec.app_wheels] + [
            ("--qdeploy-wheel", spec.qdeploy_wheel), ("--requirements", spec.requirements)]:
        if path is not None and not Path(path).is_file():
            raise PackageError(f"{what} {path}: no such file", 2)
        if path is not None and what != "--requirements" and not str(path).endswith(".whl"):
            raise PackageError(f"{what} {path}: not a wheel (*.whl)", 2)
    if not spec.python.startswith("/"):
        raise PackageError(f"--python {spec.python!r}: expected an absolute path", 2)
    tool = {"deb": "dpkg-deb", "rpm": "rpmbuild"}[spec.format]
    if shutil.which(tool) is None:
        raise PackageError(f"{tool} not found (apt-get install {'dpkg' if tool == 'dpkg-deb' else 'rpm'})")


# -- the wheelhouse -------------------------------------------------------------------------------

def collect_wheels(spec: Spec, wheelhouse: Path, work: Path) -> list[Path]:
    """qdeploy, the app wheels and their dependency closure, for the target interpreter."""
    wheelhouse.mkdir(parents=True)
    own = spec.qdeploy_wheel or build_qdeploy_wheel(work / "own")
    tops = [Path(own), *spec.app_wheels]
    for wheel in tops:
        shutil.copy2(wheel, wheelhouse / Path(wheel).name)
    requirements = [str(wheelhouse / Path(w).name) for w in tops]
    if spec.requirements:
        requirements += ["-r", str(spec.requirements)]
    _download(requirements, wheelhouse)
    # pip evaluates environment markers with the *running* interpreter (e.g. 3.11.7), not the
    # target's (Debian 12: 3.11.2): fetch what any 3.11.x needs, e.g. redis' async-timeout.
    for _ in range(5):
        missing = missing_requirements(list(wheelhouse.glob("*.whl")))
        if not missing:
            break
        _download(missing, wheelhouse)
    wheels = sorted(wheelhouse.glob("*.whl"))
    bad = [w.name for w in wheels if not compatible(w.name)]
    if bad:
        raise PackageError(f"not installable on CPython {'.'.join(map(str, TARGET_MINOR))} Linux: {', '.join(bad)}", 2)
    return wheels


def build_qdeploy_wheel(dest: Path) -> Path:
    """The wheel of the running qdeploy: built from its source checkout, or else (installed with
    pip from a wheel) rebuilt from the installed files (`wheel.from_installed`)."""
    package_dir = Path(__file__).resolve().parents[1]
    source = package_dir.parent
    if not ((source / "pyproject.toml").is_file() and (source / "templates").is_dir()):
        try:
            return wheel_mod.from_installed(dest, "qdeploy", package_dir)
        except wheel_mod.WheelError as exc:
            raise PackageError(f"cannot rebuild the qdeploy wheel: {exc}; pass --qdeploy-wheel FILE", 2) from None
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(source)]
    if importlib.util.find_spec("hatchling"):  # the build backend is here: no need to fetch it
        cmd.insert(5, "--no-build-isolation")
    _pip(cmd, "cannot build the qdeploy wheel")
    (wheel,) = dest.glob("qdeploy-*.whl")
    return wheel


def _download(requirements: list[str], wheelhouse: Path) -> None:
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)] + [f"linux_{machine}"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheelhouse), "--only-binary=:all:",
           "--implementation", "cp", "--python-version", "".join(map(str, TARGET_MINOR))]
    for tag in platforms:
        cmd += ["--platform", tag]
    _pip(cmd + requirements, "cannot download the dependencies (every one needs a wheel for the target)")


def _pip(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        raise PackageError(f"{what}: {' '.join(errors or result.stderr.splitlines()[-1:])}")


def wheel_tags(filename: str) -> tuple[str, str, set[str], set[str], set[str]]:
    """(name, version, python tags, abi tags, platform tags) of a wheel file name (PEP 427)."""
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        raise PackageError(f"{filename}: not a wheel file name", 2)
    name, version, py, abi, plat = parts[0], parts[1], *parts[-3:]
    return name.lower().replace("_", "-"), version, set(py.split(".")), set(abi.split(".")), set(plat.split("."))


def compatible(filename: str, minor: tuple[int, int] = TARGET_MINOR, machine: str | None = None) -> bool:
    """Would CPython `minor` on glibc Linux (Debian 12: glibc 2.36) install this wheel?"""
    machine = machine or platform.machine()
    _, _, pys, abis, plats = wheel_tags(filename)
    cp = f"cp{minor[0]}{minor[1]}"

    def py_ok(tag: str) -> bool:
        m = re.fullmatch(r"(py|cp)(\d)(\d*)", tag)
        if not m or int(m[2]) != minor[0] or (m[3] and int(m[3]) > minor[1]):
            return False
        return m[1] == "py" or tag == cp or "abi3" in abis

    def plat_ok(tag: str) -> bool:
        if tag == "any":
            return True
        m = re.fullmatch(r"(?:manylinux_2_(\d+)|manylinux(?:1|2010|2014)|linux)_(\w+)", tag)
        return m is not None and m[2] == machine and (m[1] is None or int(m[1]) <= 36)

    return any(map(py_ok, pys)) and bool(abis & {"none", "abi3", cp}) and any(map(plat_ok, plats))


def wheelhouse_arch(wheels: list[Path]) -> str | None:
    """None when every wheel is pure Python, else the one machine the compiled wheels are for."""
    machines = {m[1] for w in wheels for tag in wheel_tags(w.name)[4]
                if (m := re.fullmatch(r"(?:manylinux_\d+_\d+|manylinux\d+|linux)_(\w+)", tag))}
    if len(machines) > 1:
        raise PackageError(f"wheels for several machines in the wheelhouse: {', '.join(sorted(machines))}", 2)
    return machines.pop() if machines else None


def missing_requirements(wheels: list[Path]) -> list[str]:
    """Requirements some CPython 3.11.x would need that no wheel in the house provides."""
    try:
        from packaging.markers import Marker
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it; pip is how the wheelhouse was built
        from pip._vendor.packaging.markers import Marker  # type: ignore[assignment]
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
    have = {wheel_tags(w.name)[0] for w in wheels}
    envs = [{"python_full_version": f"{TARGET_MINOR[0]}.{TARGET_MINOR[1]}.{patch}",
             "python_version": f"{TARGET_MINOR[0]}.{TARGET_MINOR[1]}", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
             "os_name": "posix", "platform_machine": platform.machine(), "extra": ""} for patch in range(30)]
    missing = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0].splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            key = req.name.lower().replace("_", "-")
            if key in have or (req.marker and "extra" in str(req.marker)):
                continue
            if req.marker is None or any(Marker(str(req.marker)).evaluate(env) for env in envs):
                missing.append(f"{req.name}{req.specifier}")
    return sorted(set(missing))


# -- the tree and the maintainer scripts -------------------------------------------------------

def _stage(root: Path, files: list[File]) -> None:
    for file in files:
        path = root / file.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.content)
        path.chmod(file.mode)
    for path in root.rglob("*"):
        if path.is_dir() or path.suffix == ".whl":
            path.chmod(0o755 if path.is_dir() else 0o644)


def packaging_dir() -> Path:
    """packaging/ ships inside the wheel as qdeploy/packaging; a source checkout has ./packaging."""
    for candidate in (Path(str(resources.files("qdeploy"))) / "packaging",
                      Path(__file__).resolve().parents[2] / "packaging"):
        if (candidate / "functions.sh").is_file():
            return candidate
    raise PackageError("packaging/ (maintainer scripts) is missing from this qdeploy installation")


def _values(spec: Spec, cfg: Config, files: list[File]) -> dict[str, str]:
    by_target = {f.target: f for f in files}
    dirs = [line.split()[2] + " " + line.split()[1] for line in by_target["tmpfiles"].content.splitlines()
            if line.startswith("d ")] if "tmpfiles" in by_target else []
    units = ["qworker.target"] + (["qbeat.service"] if cfg["beat.enabled"] else [])
    return {
        "PKG_NAME": spec.name, "PKG_VERSION": f"{spec.version}-{spec.release}", "PREFIX": PREFIX,
        "PYTHON": spec.python, "QD_USER": cfg["user"], "QD_GROUP": cfg["group"], "QD_HOME": cfg["state_dir"],
        "SYSUSERS_CONF": "/usr/lib/sysusers.d/qdeploy.conf",
        "SYSUSERS": by_target["sysusers"].content if "sysusers" in by_target else "",
        "TMPFILES_CONF": "/usr/lib/tmpfiles.d/qdeploy.conf" if "tmpfiles" in by_target else "",
        "DIRS": "\n".join(dirs), "LOG_DIR": cfg["log_dir"],
        "CONFIG_DIR": str(Path(cfg["config_path"]).parent),
        "SECRET_FILES": " ".join("/" + f.path for f in files if f.mode == SECRET),
        "CONFFILES": " ".join("/" + f.path for f in files if f.path.startswith("etc/")),
        "UNITS": " ".join(units) if "systemd" in cfg["targets"] else "",
        # every running instance, for try-restart/stop (systemctl globs match loaded units only)
        "INSTANCES": " ".join(["qworker@*.service"] + units[1:]) if "systemd" in cfg["targets"] else "",
        "INIT_SCRIPTS": " ".join(Path(f.path).name for f in files if f.target == "initd"),
        "START_ON_INSTALL": "yes" if spec.start else "no",
    }


def maintainer_script(hook: str, values: dict[str, str]) -> str:
    """packaging/functions.sh and the hook's body, with the values assigned at the top."""
    pkg = packaging_dir()
    header = "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    return ("#!/bin/sh\n# Generated by qdeploy package from packaging/functions.sh and packaging/" + hook + ".\n"
            "# shellcheck disable=SC2034,SC2086,SC2317  # lists split on purpose; not every hook uses everything\n"
            "set -e\n" + header + (pkg / "functions.sh").read_text() + "\n" + (pkg / hook).read_text())


def _description(spec: Spec, cfg: Config) -> str:
    beat = ", beat" if cfg["beat.enabled"] else ""
    return f"qdeploy task queue services for {cfg['app']} ({len(cfg.nodes)} worker node(s){beat})"


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PackageError(f"{what} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")


def _build_deb(spec: Spec, work: Path, files: list[File], values: dict[str, str], arch: str | None) -> Path:
    root = work / "root"
    debian = root / "DEBIAN"
    debian.mkdir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024 + 1
    deb_arch = ARCHES.get(arch, (arch,))[0] if arch else "all"
    py = f"{TARGET_MINOR[0]}.{TARGET_MINOR[1]}"
    control = (packaging_dir() / "deb" / "control").read_text().format(
        name=spec.name, version=values["PKG_VERSION"], arch=deb_arch, maintainer=spec.maintainer, size=size,
        python_min=py, python_max=f"{TARGET_MINOR[0]}.{TARGET_MINOR[1] + 1}", description=_description(spec, spec.cfg))
    (debian / "control").write_text(control)
    (debian / "conffiles").write_text("".join(f"/{f.path}\n" for f in files if f.path.startswith("etc/")))
    for hook in ("postinst", "prerm", "postrm"):
        script = debian / hook
        script.write_text(maintainer_script(f"deb/{hook}", values))
        script.chmod(0o755)
    for path in debian.iterdir():
        if path.name not in ("postinst", "prerm", "postrm"):
            path.chmod(0o644)
    out = work / f"{spec.name}_{values['PKG_VERSION']}_{deb_arch}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)], "dpkg-deb")
    shutil.rmtree(debian)
    return out


def _build_rpm(spec: Spec, work: Path, files: list[File], values: dict[str, str], arch: str | None) -> Path:
    root = work / "root"
    rpm_arch = ARCHES.get(arch, (arch, arch))[1] if arch else "noarch"
    lines = ["%defattr(-,root,root,-)"]
    for path in sorted(root.rglob("*")):
        rel = "/" + str(path.relative_to(root))
        if path.is_dir():
            if rel.startswith(PREFIX) or rel in ("/etc/qdeploy",):
                lines.append(f"%dir {rel}")
            continue
        mode = path.stat().st_mode & 0o777
        if rel.startswith("/etc/"):
            group = spec.cfg["group"] if mode == SECRET else "root"
            lines.append(f"%config(noreplace) %attr({mode:04o},root,{group}) {rel}")
        else:
            lines.append(f"%attr({mode:04o},root,root) {rel}")
    scripts = {hook: maintainer_script(f"rpm/{hook}", values).split("\n", 1)[1].replace("%", "%%")
               for hook in ("pre", "post", "preun", "postun", "posttrans")}
    spec_text = (packaging_dir() / "rpm" / "qdeploy.spec").read_text()
    for token, value in {"@NAME@": spec.name, "@VERSION@": spec.version, "@RELEASE@": spec.release,
                         "@ARCH@": rpm_arch, "@PYTHON@": spec.python, "@SUMMARY@": _description(spec, spec.cfg),
                         "@STAGING@": str(root), "@FILES@": "\n".join(lines), "@MAINTAINER@": spec.maintainer,
                         **{f"@{hook.upper()}@": body for hook, body in scripts.items()}}.items():
        spec_text = spec_text.replace(token, value)
    spec_file = work / f"{spec.name}.spec"
    spec_file.write_text(spec_text)
    top = work / "rpmbuild"
    _run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", "--define", "_build_id_links none",
          "--target", rpm_arch, str(spec_file)], "rpmbuild")
    (built,) = (top / "RPMS").rglob("*.rpm")
    return built

