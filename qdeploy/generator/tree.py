"""Write a rendered tree atomically, or compare it with what is on disk (`--check`, `--diff`).

A new output directory is built beside its final place and renamed into it, so it appears whole
or not at all. Into an existing tree (`--root /`) each file is written to a temporary file in its
own directory, fsync'ed, given its mode and renamed over the old one: every file is old or new,
never half-written.
"""

from __future__ import annotations

import difflib
import grp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qdeploy.generator.render import SECRET, File


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "new", "content", "mode"
    diff: str = ""


def write(files: list[File], root: Path, group: str | None = None) -> None:
    """Write `files` under `root`. As root, secret files get `group` so the services can read them."""
    gid = _gid(group) if os.geteuid() == 0 else None
    if root.exists():
        for file in files:
            _write_file(root / file.path, file, gid)
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for file in files:
            _write_file(staging / file.path, file, gid)
        staging.chmod(0o755)
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def compare(files: list[File], root: Path) -> list[Change]:
    changes = []
    for file in files:
        path = root / file.path
        if not path.is_file():
            changes.append(Change(file.path, "new", _diff("", file.content, file.path)))
            continue
        current = path.read_text(errors="replace")
        if current != file.content:
            changes.append(Change(file.path, "content", _diff(current, file.content, file.path)))
        elif path.stat().st_mode & 0o7777 != file.mode:
            changes.append(Change(file.path, "mode", f"mode {path.stat().st_mode & 0o7777:04o} -> {file.mode:04o}\n"))
    return changes


def _diff(old: str, new: str, path: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _write_file(path: Path, file: File, gid: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(file.content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file.mode)
        if gid is not None and file.mode == SECRET:
            os.chown(tmp, 0, gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _gid(group: str | None) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid if group else None
    except KeyError:  # the group is created at install time (sysusers.d / the package)
        return None
