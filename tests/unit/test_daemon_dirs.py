"""daemon.make_dirs: nodes started at the same time create the same directories."""

import threading

import pytest

from qdeploy.service import daemon


def test_nodes_racing_to_create_the_same_directories_all_succeed(tmp_path):
    for attempt in range(20):
        target = tmp_path / f"run{attempt}" / "log"
        errors, start = [], threading.Barrier(8)

        def make():
            start.wait()
            try:
                daemon.make_dirs({str(target): 0o750}, None)
            except daemon.DaemonError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and target.is_dir() and (target.stat().st_mode & 0o777) == 0o750


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "log").write_text("not a directory")
    with pytest.raises(daemon.DaemonError, match="cannot create directory .*/log"):
        daemon.make_dirs({str(tmp_path / "log"): 0o750}, None)
