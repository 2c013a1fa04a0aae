"""Write a rendered tree atomically, or compare it with what is on disk (`--check`, `--diff`).

`--out DIR` is all or nothing: the complete new tree is built beside DIR (every file and directory
fsync'ed), then put in its place in one step (`exchange.swap_in`), then the old tree is removed; a
full disk or a missing permission fails before DIR changes. DIR must be new (or empty) or a tree
render wrote: each carries a manifest (`.qdeploy-manifest`) listing its files, and a DIR holding
anything else (`/`, `/etc`, a home directory) is refused, so that `--out` can never remove or
overwrite what it did not write. Into a live root (`--root /`) each file is written to a
temporary file in its own directory, fsync'ed, given its mode and renamed over the old one:
every file is old or new, never half-written, but the tree as a whole is replaced file by file.
"""

from __future__ import annotations

import difflib
import grp
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qdeploy.core.urls import redact_text
from qdeploy.defaults import EX_USAGE
from qdeploy.generator import exchange
from qdeploy.generator.render import SECRET, File

MANIFEST = ".qdeploy-manifest"
MANIFEST_HEADER = (
    "# Written by `qdeploy render --out`: the files of this tree (mode path). render replaces this\n"
    "# tree as a whole only while it holds nothing else.\n"
)
MAX_ENTRIES = 10_000  # a rendered tree has a few dozen; more means DIR is something else


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "new", "content", "mode"
    diff: str = ""


class TreeError(Exception):
    """`--out` names a place render must not replace: one line, exit 2."""

    exit_code = EX_USAGE


def write(files: list[File], root: Path, group: str | None = None, live: bool = False) -> list[str]:
    """Write `files` under `root`; return warnings (one line each). As root, secret files get
    `group` so the services can read them.

    `live` (`--root`): install into an existing root, file by file, each replaced atomically.
    Otherwise (`--out`): `root` is a new directory or a tree render wrote (`replaceable`), and is
    replaced as a whole: the complete new tree is built beside it, then swapped in."""
    gid = _gid(group) if os.geteuid() == 0 else None
    if live:
        for file in files:
            _write_file(root / file.path, file, gid)
        return []
    root = Path(os.path.abspath(root))
    if root == root.parent:
        raise TreeError(f"--out {root}: not a tree qdeploy rendered; {_hint(root)}")
    exchange.recover(root)
    replaceable(files, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.new-", dir=root.parent))
    try:
        for file in files:
            _write_file(staging / file.path, file, gid)
        _write_manifest(staging, files)
        staging.chmod(0o755)
        _fsync_tree(staging)
        old = exchange.swap_in(staging, root) if os.path.lexists(root) else None
        if old is None:
            os.rename(staging, root)
        _fsync_dir(root.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as exc:
            return [f"replaced {root}, but could not remove the old tree at {old}: {exc.strerror or exc}"]
    return []


def replaceable(files: list[File], root: Path) -> None:
    """Refuse (TreeError) an `--out` that render must not replace as a whole: anything but a new or
    empty directory, or a tree holding only files render writes (its manifest's or this render's)."""
    hint = _hint(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise TreeError(f"--out {root}: is a symbolic link; pass the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"--out {root}: exists and is not a directory; use a new directory")
    if os.lstat(root / "..").st_dev != st.st_dev:  # not os.path.ismount: it resolves /proc/PID/root
        raise TreeError(f"--out {root}: is a mount point, which cannot be replaced; {hint}")
    allowed = {f.path for f in files} | _manifest_paths(root) | {MANIFEST}
    stranger = _first_stranger(root, allowed, st.st_dev)
    if stranger:
        raise TreeError(f"--out {root}: not a tree qdeploy rendered ({stranger}); {hint}")


def _hint(root: Path) -> str:
    return f"use a new directory, or --root {root} to install into a live root file by file"


def _first_stranger(root: Path, allowed: set[str], device: int) -> str | None:
    """The first entry under `root` that render did not write (or cannot know), described."""
    pending, seen = [""], 0
    while pending:
        rel = pending.pop()
        try:
            entries = list(os.scandir(root / rel))
        except OSError as exc:
            return f"cannot read {rel or '.'}: {exc.strerror or exc}"
        for entry in entries:
            seen += 1
            path = f"{rel}/{entry.name}" if rel else entry.name
            if seen > MAX_ENTRIES:
                return f"more than {MAX_ENTRIES} entries"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != device:  # a mount point: removing the old tree would empty it
                    return f"{path} is another filesystem"
                pending.append(path)
            elif not stat.S_ISREG(st.st_mode):
                return f"{path} is not a regular file"
            elif path not in allowed:
                return f"{path} is not one of its files"
    return None


def _manifest_paths(root: Path) -> set[str]:
    """The files a tree's manifest lists (nothing if it has none, or not a sane one)."""
    path = root / MANIFEST
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_size > 1 << 20:
            return set()
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return set()
    paths = set()
    for line in lines:
        _, _, rel = line.partition(" ")
        if line[:1] != "#" and rel and not rel.startswith("/") and ".." not in rel.split("/"):
            paths.add(rel)
    return paths


def _write_manifest(root: Path, files: list[File]) -> None:
    listing = "".join(f"{f.mode:04o} {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    _write_file(root / MANIFEST, File(MANIFEST, MANIFEST_HEADER + listing, 0o644, "manifest"), None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every directory of a freshly written tree, deepest first: its entries are on disk."""
    for dirpath, _, _ in sorted(os.walk(root), key=lambda walked: -len(walked[0])):
        _fsync_dir(Path(dirpath))


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
    """A unified diff with every credential in a URL redacted (a broker change shows the line
    changed, never the old or the new password); the files themselves are written unredacted."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(redact_text(line if line.endswith("\n") else line + "\n") for line in lines)


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
