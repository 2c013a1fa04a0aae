"""`qdeploy render --out` on real filesystems: all or nothing, and never into a live root.

Each case runs the real CLI against a small tmpfs mounted in a private mount namespace (`unshare
--mount`), reached from here through `/proc/<pid>/root` of the process that holds the namespace:
a disk that fills up, a read-only mount, a directory without write permission. After every
failure the old tree must be byte for byte what it was, the exit non-zero with one line, and
nothing left beside it. `--out /` runs in a namespace whose /etc and /usr/lib/{tmpfiles,sysusers}.d
are throw-away tmpfs mounts, so the test cannot hurt the host even against a broken render."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

QDEPLOY = str(Path(sys.executable).parent / "qdeploy")
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@contextlib.contextmanager
def private_tmpfs(mountpoint: Path, size: str = "1m"):
    """A tmpfs of `size` at `mountpoint`, visible only in a private mount namespace; yields the
    path that reaches it from here and the pid holding the namespace."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "size=$2,mode=0755" tmpfs "$1" && echo ready && exec sleep 600'
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                             str(mountpoint), size], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n", "could not mount a tmpfs in a private namespace"
        yield Path(f"/proc/{proc.pid}/root{mountpoint}"), proc.pid
    finally:
        proc.kill()
        proc.wait()


def render(out: Path, *args: str, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, QDEPLOY, "render", "--out", str(out), "--executable", "/usr/bin/qdeploy", *args],
                          capture_output=True, text=True, env={**os.environ, "QDEPLOY_CONFIG": ""}, cwd="/")


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, b"" if path.is_dir() else path.read_bytes())
    return out


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qdeploy: error: "), result.stderr
    return lines[0]


def fill(fs: Path, leave_pages: int) -> None:
    """Allocate all of `fs` but `leave_pages` pages."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    fd = os.open(fs / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free - leave_pages * PAGE)
    finally:
        os.close(fd)
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize == leave_pages * PAGE


def test_full_disk_leaves_the_old_tree_intact_then_a_retry_replaces_it(root_only, world_dir):
    with private_tmpfs(world_dir / "fs", "1m") as (fs, _):
        tree = fs / "tree"
        assert render(tree, "--nodes", "3").returncode == 0
        before = snapshot(tree)
        # Two free pages: each single file still fits (what a file-by-file write needs), the
        # whole 30-node tree does not (its supervisord file alone is ~6 pages).
        fill(fs, leave_pages=2)
        line = one_error_line(render(tree, "--nodes", "30"))
        assert "No space left on device" in line, line
        assert snapshot(tree) == before  # defaults still list 3 nodes, like everything else
        assert sorted(p.name for p in fs.iterdir()) == ["fill", "tree"]  # the half-built tree is gone

        (fs / "fill").unlink()
        result = render(tree, "--nodes", "30")
        assert result.returncode == 0, result.stderr
        assert "QWORKER_NODES=\"" + " ".join(map(str, range(1, 31))) + "\"" in (tree / "etc/default/qworker").read_text()
        assert "[program:qworker-30]" in (tree / "etc/supervisor/conf.d/qdeploy.conf").read_text()
        assert 'nodes = ["1", "2"' in (tree / "etc/qdeploy/qdeploy.toml").read_text()
        assert sorted(p.name for p in fs.iterdir()) == ["tree"]  # the old tree was removed


def test_read_only_filesystem_leaves_the_old_tree_intact(root_only, world_dir):
    with private_tmpfs(world_dir / "fs") as (fs, pid):
        tree = fs / "tree"
        assert render(tree, "--nodes", "3").returncode == 0
        before = snapshot(tree)
        subprocess.run(["nsenter", f"--target={pid}", "--mount", "mount", "-o", "remount,ro",
                        str(world_dir / "fs")], check=True)
        line = one_error_line(render(tree, "--nodes", "30"))
        assert "Read-only file system" in line, line
        assert snapshot(tree) == before and sorted(p.name for p in fs.iterdir()) == ["tree"]


def test_no_write_permission_leaves_the_old_tree_intact(root_only, world_dir):
    """Rendered by root without DAC override: the tree is root's except etc/systemd/system, and its
    parent directory is not writable. File by file, render would get as far as etc/systemd."""
    parent = world_dir / "parent"
    tree = parent / "tree"
    assert render(tree, "--nodes", "3").returncode == 0
    os.chown(tree / "etc/systemd/system", 65534, 65534)
    os.chown(parent, 65534, 65534)
    before = snapshot(tree)
    line = one_error_line(render(tree, "--nodes", "30", prefix=NO_DAC))
    assert "Permission denied" in line, line
    assert snapshot(tree) == before and sorted(p.name for p in parent.iterdir()) == ["tree"]

    os.chown(parent, 0, 0)  # the parent is writable again: the swap works, removing the old tree does not
    os.chmod(tree / "etc/systemd/system", 0o555)
    result = render(tree, "--nodes", "30", prefix=NO_DAC)
    assert result.returncode == 0, result.stderr
    assert "qworker@30.service" in (tree / "etc/systemd/system/qworker.target").read_text()
    warning, = result.stderr.strip().splitlines()
    assert warning.startswith(f"qdeploy: warning: replaced {tree}, but could not remove the old tree at {parent}/.tree.new-")
    leftover, = (p for p in parent.iterdir() if p.name != "tree")
    assert (leftover / "etc/systemd/system/qworker.target").read_text() == before["etc/systemd/system/qworker.target"][3].decode()


def test_a_mount_point_inside_the_tree_is_refused(root_only, world_dir):
    tree = world_dir / "tree"
    assert render(tree).returncode == 0
    with private_tmpfs(tree / "etc/qdeploy") as (_, pid):
        seen = Path(f"/proc/{pid}/root{tree}")
        line = one_error_line(render(seen, "--nodes", "2"))
        assert line.endswith(f"(etc/qdeploy is another filesystem); use a new directory, or --root {seen} "
                             "to install into a live root file by file"), line
        # and the mount point itself: it could not be swapped out (EBUSY)
        line = one_error_line(render(seen / "etc/qdeploy"))
        assert "etc/qdeploy: is a mount point, which cannot be replaced" in line, line


def test_out_slash_as_root_touches_nothing_and_names_root(root_only, tmp_path):
    """The issue's case: `render --out /` wrote into the live /etc and /usr/lib."""
    script = ("set -e; for d in /etc /usr/lib/tmpfiles.d /usr/lib/sysusers.d; do mount -t tmpfs tmpfs $d; done; "
              "set +e; \"$@\"; echo \"exit=$?\"; find /etc /usr/lib/tmpfiles.d /usr/lib/sysusers.d -mindepth 1")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                             QDEPLOY, "render", "--out", "/", "--executable", "/usr/bin/qdeploy"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "QDEPLOY_CONFIG": ""})
    assert result.stdout == "exit=2\n", result.stdout  # and find listed nothing: no file, no directory
    assert result.stderr == ("qdeploy: error: --out /: not a tree qdeploy rendered; use a new directory, "
                             "or --root / to install into a live root file by file\n")


def test_out_at_a_live_system_directory_is_refused(root_only, tmp_path):
    """This host's /etc, /usr/lib and /var/log, seen through a throw-away overlay of the root
    filesystem (its writes land in a tmpfs): render refuses each with one line, writes nothing."""
    script = """set -e
mount -t tmpfs tmpfs "$SCRATCH"
mkdir "$SCRATCH/up" "$SCRATCH/work" "$SCRATCH/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$SCRATCH/up,workdir=$SCRATCH/work" "$SCRATCH/root"
set +e
for d in etc usr/lib var/log; do
    "$QDEPLOY" render --out "$SCRATCH/root/$d" --executable /usr/bin/qdeploy
    echo "$d exit=$?"
done
find "$SCRATCH/up" -mindepth 1
"""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "QDEPLOY_CONFIG": "", "SCRATCH": str(scratch), "QDEPLOY": QDEPLOY})
    # every exit is 2, and find lists nothing: no file or directory was written into any of them
    assert result.stdout == "etc exit=2\nusr/lib exit=2\nvar/log exit=2\n", result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    for live, line in zip(("etc", "usr/lib", "var/log"), lines):
        out = f"{scratch}/root/{live}"
        assert line.startswith(f"qdeploy: error: --out {out}: not a tree qdeploy rendered ("), line
        assert line.endswith(f"is not one of its files); use a new directory, or --root {out} to install "
                             "into a live root file by file"), line
