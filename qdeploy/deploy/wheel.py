"""The wheel of the qdeploy that is running, rebuilt from its installed files.

A qdeploy installed with pip (no source checkout) is packaged from what pip installed: the
distribution's RECORD lists every file the wheel held, with its hash. `from_installed` reads those
files from site-packages, checks each against its recorded hash (a file changed since the install
is refused: the package would ship something that is not that version), and writes them back
into a wheel with a fresh RECORD: the same files, byte for byte, as the wheel pip installed, minus
what the installer adds (INSTALLER, REQUESTED, direct_url.json, bytecode, console scripts —
`entry_points.txt` recreates those).
"""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: the rebuilt wheel does not depend on when


class WheelError(Exception):
    """Cannot rebuild the wheel: one line."""


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def from_installed(dest: Path, name: str = "qdeploy", package_dir: Path | None = None) -> Path:
    """Write `<name>-<version>-<tag>.whl` into `dest` from the installed distribution `name`,
    whose import package must be `package_dir` (the code that runs: not another copy on sys.path)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise WheelError(f"{name} is not an installed distribution") from None
    if dist.files is None:
        raise WheelError(f"the installed {name} has no RECORD (installed by a tool that keeps none)")
    base = Path(str(dist.locate_file(""))).resolve()
    if package_dir is not None and (base / name).resolve() != package_dir.resolve():
        raise WheelError(f"the installed {name} distribution ({base / name}) is not the running one ({package_dir})")
    info = next((f.parent for f in dist.files if f.name == "METADATA" and f.parent.name.endswith(".dist-info")), None)
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if info is None or "Root-Is-Purelib: true" not in wheel_meta or len(tags) != 1:
        raise WheelError(f"the installed {name} is not from a pure-Python wheel (its WHEEL file says otherwise)")

    entries: list[tuple[str, bytes, int]] = []
    for record in dist.files:
        rel = PurePosixPath(str(record))
        if rel.is_absolute() or ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue  # console scripts (outside site-packages) and bytecode are made by the installer
        if rel.parent == PurePosixPath(str(info)) and rel.name in INSTALLER_FILES:
            continue
        path = base / rel
        try:
            data = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as exc:
            raise WheelError(f"the installed {name} is incomplete: {path}: {exc.strerror or exc}") from None
        if record.hash is not None and _digest(data) != f"{record.hash.mode}={record.hash.value}":
            raise WheelError(f"the installed {name} was changed after it was installed ({rel} differs from its RECORD)")
        entries.append((str(rel), data, mode))
    if not any(rel.startswith(f"{name}/") for rel, _, _ in entries):
        raise WheelError(f"the installed {name} lists none of its package's files (an editable install?)")

    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{info.name[: -len('.dist-info')]}-{tags[0]}.whl"
    partial = wheel.with_name(f".{wheel.name}.partial")
    rows = []
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        # the .dist-info last, RECORD at its end (the wheel spec's recommended order)
        for member, data, mode in sorted(entries, key=lambda e: (e[0].startswith(f"{info}/"), e[0])):
            zinfo = zipfile.ZipInfo(member, ZIP_EPOCH)
            zinfo.external_attr = (stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) << 16
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zinfo, data)
            rows.append(f"{member},{_digest(data)},{len(data)}\n")
        rows.append(f"{info}/RECORD,,\n")
        zinfo = zipfile.ZipInfo(f"{info}/RECORD", ZIP_EPOCH)
        zinfo.external_attr = (stat.S_IFREG | 0o644) << 16
        zinfo.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(zinfo, "".join(rows))
    partial.replace(wheel)
    return wheel
