"""`render --out DIR`: DIR is a new directory or a tree render wrote (its manifest), replaced as a
whole; anything else is refused with one line pointing at `--root`. The real filesystem cases
(a full tmpfs, a read-only mount, no permission, `--out /` as root) are in
tests/e2e/test_render_atomic.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.generator import exchange, tree

ARGS = ["--executable", "/usr/bin/qdeploy"]


def render(out: Path, *args: str):
    return CliRunner().invoke(main, ["render", "--out", str(out), *ARGS, *args])


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def refused(result, out: Path) -> str:
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"qdeploy: error: --out {out}: "), line
    return line


def test_a_tree_render_wrote_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "build"
    assert render(out).exit_code == 0
    listed = [line.split(" ", 1) for line in (out / tree.MANIFEST).read_text().splitlines() if line[0] != "#"]
    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name != tree.MANIFEST)
    assert listed == [[f"{p.stat().st_mode & 0o7777:04o}", str(p.relative_to(out))] for p in written]
    assert ["0640", "etc/default/qworker"] in listed
    # --no-beat: the beat files go with the old tree (written file by file, they would linger)
    result = render(out, "--no-beat", "--nodes", "2")
    assert result.exit_code == 0, result.output
    assert not (out / "etc/default/qbeat").exists() and not (out / "etc/systemd/system/qbeat.service").exists()
    assert "0640 etc/default/qbeat" not in (out / tree.MANIFEST).read_text()
    assert "qworker@2.service" in (out / "etc/systemd/system/qworker.target").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no staging or old tree left


@pytest.mark.parametrize("stranger", ["etc/passwd", "usr/lib/os-release", "notes.txt", "etc/default/qworker.bak"])
def test_a_directory_holding_anything_else_is_refused_and_left_alone(tmp_path, stranger):
    """A live root (or anything that is not render's tree): refused, pointing at --root."""
    out = tmp_path / "root"
    assert render(out).exit_code == 0
    (out / stranger).parent.mkdir(parents=True, exist_ok=True)
    (out / stranger).write_text("not qdeploy's\n")
    before = snapshot(out)
    line = refused(render(out, "--nodes", "30"), out)
    assert f"({stranger} is not one of its files)" in line and f"--root {out} to install into a live root" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_root_like_directory_without_manifest_is_refused(tmp_path):
    live = tmp_path / "live"
    for path in ("etc/passwd", "etc/default/qworker", "usr/lib/tmpfiles.d/other.conf"):
        (live / path).parent.mkdir(parents=True, exist_ok=True)
        (live / path).write_text("system file\n")
    before = snapshot(live)
    refused(render(live), live)
    assert snapshot(live) == before


def test_a_forged_manifest_does_not_let_render_take_files_outside_its_list(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").write_text("precious\n")
    (out / tree.MANIFEST).write_text("0644 ../data\n0644 /data\n0644 x/../data\n")
    refused(render(out), out)
    assert (out / "data").read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["symlink", "file", "fifo", "symlink inside"])
def test_links_and_non_directories_are_refused(tmp_path, kind):
    target = tmp_path / "real"
    assert render(target).exit_code == 0
    before = snapshot(target)
    out = tmp_path / "out"
    if kind == "symlink":
        out.symlink_to(target)
    elif kind == "file":
        out.write_text("a file\n")
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        out = target
        (target / "etc/link").symlink_to("/etc/passwd")
        before = snapshot(target)
    line = refused(render(out, "--nodes", "4"), out)
    assert {"symlink": "is a symbolic link", "file": "is not a directory", "fifo": "is not a directory",
            "symlink inside": "etc/link is not a regular file"}[kind] in line
    assert snapshot(target) == before


def test_a_new_or_empty_directory_is_fine(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert render(empty).exit_code == 0 and (empty / tree.MANIFEST).is_file()
    assert render(tmp_path / "a" / "b" / "new").exit_code == 0  # parents are created


def test_a_tree_from_before_the_manifest_is_replaced(tmp_path):
    """Trees rendered by an older qdeploy carry no manifest: they hold only render's files."""
    out = tmp_path / "old"
    assert render(out, "--nodes", "3").exit_code == 0
    (out / tree.MANIFEST).unlink()
    (out / "etc/init.d/qbeat").unlink()  # an admin removed one: still render's tree
    assert render(out, "--nodes", "2").exit_code == 0
    assert (out / tree.MANIFEST).is_file() and (out / "etc/init.d/qbeat").is_file()


def test_out_slash_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("render touched the filesystem for --out /")

    monkeypatch.setattr(tree, "_write_file", boom)
    monkeypatch.setattr(tree.os, "scandir", boom)
    result = render(Path("/"))
    assert result.exit_code == 2
    assert result.stderr.strip() == ("qdeploy: error: --out /: not a tree qdeploy rendered; use a new directory, "
                                     "or --root / to install into a live root file by file")


def test_fallback_two_renames_replace_the_tree_and_leave_nothing(tmp_path, monkeypatch):
    """Without renameat2 (old kernel, a filesystem without RENAME_EXCHANGE)."""
    monkeypatch.setattr(exchange, "_RENAMEAT2", None)
    out = tmp_path / "out"
    assert render(out, "--nodes", "3").exit_code == 0
    assert render(out, "--nodes", "5").exit_code == 0
    assert "qworker@5.service" in (out / "etc/systemd/system/qworker.target").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_puts_the_old_tree_back_when_the_new_cannot_go_in(tmp_path, monkeypatch):
    monkeypatch.setattr(exchange, "_RENAMEAT2", None)
    out = tmp_path / "out"
    assert render(out, "--nodes", "3").exit_code == 0
    before = snapshot(out)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".out.new-"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(exchange.os, "rename", rename)
    result = render(out, "--nodes", "30")
    assert result.exit_code == 1 and result.stderr.startswith("qdeploy: error: cannot write ")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_old_tree_left_aside_by_a_killed_swap_is_recovered(tmp_path):
    out = tmp_path / "out"
    assert render(out, "--nodes", "3").exit_code == 0
    os.rename(out, exchange.aside(out))  # killed between "old aside" and "new in"
    assert render(out, "--check").exit_code == 1  # the tree is missing until the next write
    assert render(out, "--nodes", "4").exit_code == 0
    assert "qworker@4.service" in (out / "etc/systemd/system/qworker.target").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_swap_errors_other_than_unsupported_are_reported_not_worked_around(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert render(out).exit_code == 0
    before = snapshot(out)

    def busy(*args):
        import ctypes

        ctypes.set_errno(errno.EBUSY)
        return -1

    monkeypatch.setattr(exchange, "_RENAMEAT2", busy)
    result = render(out, "--nodes", "2")
    assert result.exit_code == 1 and "Device or resource busy" in result.stderr
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_old_tree_that_cannot_be_removed_is_a_warning(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert render(out).exit_code == 0

    def rmtree(path, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tree.shutil, "rmtree", rmtree)
    result = render(out, "--nodes", "2")
    assert result.exit_code == 0, result.output
    assert "qdeploy: warning: replaced " in result.stderr and "could not remove the old tree" in result.stderr
    assert "qworker@2.service" in (out / "etc/systemd/system/qworker.target").read_text()
