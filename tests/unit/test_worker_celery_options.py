"""The worker's Celery spellings as pure logic: -n's %h %n %d, --autoscale's parsing and its
hysteresis, -B's state machine, and the precedence of the app's worker settings below the
config (qdeploy.worker.options.with_app)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qdeploy import App
from qdeploy.cli import main
from qdeploy.generator import config as config_mod
from qdeploy.worker import nodename, options
from qdeploy.worker.autoscale import Autoscaler
from qdeploy.worker.embedded_beat import BeatChild, BeatState


@pytest.mark.parametrize(("text", "expected"), [
    ("worker1@%h", ("worker1", "george.example.com")),
    ("worker1@%n", ("worker1", "george")),
    ("worker1@%d", ("worker1", "example.com")),
    ("cma.%n", ("cma.george", None)),
    ("w%%1@%h", ("w%1", "george.example.com")),
    ("solo1", ("solo1", None)),
])
def test_node_names_expand_celerys_variables(text, expected):
    assert nodename.parse(text, "george.example.com") == expected


@pytest.mark.parametrize(("text", "error"), [
    ("w@%x", "unknown variable %x"), ("w@", "nothing after @"), ("w@%", "a lone %"),
    ("w@bad host", "must be letters, digits"),
])
def test_bad_node_names_are_one_line(text, error):
    with pytest.raises(ValueError, match=error):
        nodename.parse(text, "george.example.com")


@pytest.mark.parametrize(("value", "error"), [
    ("1,5", "MAX (1) is below MIN (5); Celery's order is MAX,MIN (--autoscale=1,5)"),
    ("ten,3", "expected MAX,MIN as two whole numbers"),
    ("10,3,1", "expected MAX,MIN"),
    ("-2,1", "expected MAX,MIN"),
    ("5000,1", "MAX must be from 1 to 1024"),
    ("", "expected MAX,MIN"),
])
def test_bad_autoscale_values_are_one_line_and_exit_2(isolated, value, error):
    result = CliRunner().invoke(main, ["worker", f"--autoscale={value}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and error.split(" (--")[0] in lines[0], result.output


def test_eventlet_and_gevent_pools_say_what_to_use(isolated):
    for pool in ("eventlet", "gevent"):
        result = CliRunner().invoke(main, ["worker", "-P", pool])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert f"no {pool} pool: use -P threads" in result.output


def test_an_amqp_broker_says_what_to_use(isolated):
    result = CliRunner().invoke(main, ["-b", "amqp://guest:guest@localhost:5672//", "worker"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "RabbitMQ (AMQP) is not supported: expected a URL starting with redis://" in result.output and "guest:guest" not in result.output


# -- --autoscale -------------------------------------------------------------------------------


def test_autoscale_grows_at_once_within_max():
    a = Autoscaler(high=5, low=1, keepalive=30)
    assert a.decide(0.0, 1, backlog=3, running=1) == 4
    assert a.decide(1.0, 4, backlog=50, running=4) == 5, "never above MAX"
    assert a.decide(2.0, 5, backlog=2, running=3, threads=4) == 5, "demand in children: ceil(5/4) = 2 < 5: not yet"


def test_autoscale_shrinks_only_after_keepalive_below_and_since_the_last_growth():
    a = Autoscaler(high=5, low=2, keepalive=30)
    assert a.decide(0.0, 2, backlog=10, running=2) == 5
    assert a.decide(5.0, 5, backlog=0, running=1) == 5, "below: the clock starts"
    assert a.decide(20.0, 5, backlog=0, running=1) == 5
    assert a.decide(34.0, 5, backlog=0, running=1) == 5, "30 s below, but only 34 - 0 since the growth... and 29 below"
    assert a.decide(35.0, 5, backlog=0, running=1) == 2, "never below MIN"
    # a burst between two quiet spells restarts the clock (hysteresis: no fork/retire churn)
    b = Autoscaler(high=4, low=1, keepalive=10)
    assert b.decide(0.0, 1, 3, 1) == 4
    assert b.decide(1.0, 4, 0, 0) == 4
    assert b.decide(9.0, 4, 5, 0) == 4, "demand back up: below_since forgotten"
    assert b.decide(15.0, 4, 0, 0) == 4
    assert b.decide(24.0, 4, 0, 0) == 4
    assert b.decide(25.0, 4, 0, 0) == 1


def test_autoscale_puts_a_pool_outside_its_bounds_back():
    a = Autoscaler(high=3, low=2)
    assert a.decide(0.0, 1, 0, 0) == 2
    assert a.decide(1.0, 7, 0, 0) == 3


# -- -B ------------------------------------------------------------------------------------------


class _Opts:
    app, log_level, log_format, config_file, logfile = "proj", "info", "text", None, None
    allow_root, graceful_timeout = False, 5.0


def test_the_beat_child_state_machine(monkeypatch):
    spawned, signalled = [], []
    child = BeatChild(_Opts(), App("x", broker="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(child, "spawn", lambda now: (child.transition(BeatState.STARTING),
                                                     setattr(child, "pid", 100 + len(spawned)),
                                                     setattr(child, "started", now), spawned.append(now)))
    monkeypatch.setattr("qdeploy.worker.embedded_beat.signal_pid", lambda pid, sig: signalled.append((pid, sig)))
    child.tick(0.0, stopping=False)
    assert child.state is BeatState.STARTING and spawned == [0.0]
    child.tick(11.0, stopping=False)
    assert child.state is BeatState.RUNNING
    assert child.reaped(999, 0, 12.0) is False, "not ours"
    assert child.reaped(100, -9, 12.0) and child.state is BeatState.EXITED
    assert child.tick(12.1, stopping=False) == pytest.approx(12.5), "respawned after a back-off"
    child.tick(12.5, stopping=False)
    assert spawned == [0.0, 12.5]
    child.reaped(101, 1, 13.0)  # died young: the back-off doubles
    assert child.respawn_at == pytest.approx(14.0)
    child.tick(14.0, stopping=False)
    child.tick(15.0, stopping=True)  # a warm shutdown: TERM, then KILL after the graceful timeout
    assert child.state is BeatState.STOPPING and signalled[-1][1] == 15
    child.tick(20.0, stopping=True)
    assert signalled[-1][1] == 9
    child.reaped(102, -9, 20.1)
    assert child.done and child.tick(21.0, stopping=True) is None and len(spawned) == 3, "not started again"
    with pytest.raises(AssertionError):
        child.transition(BeatState.RUNNING)


def test_the_beat_child_command_line_keeps_the_broker_password_out_of_ps():
    child = BeatChild(_Opts(), App("x", broker="redis://:s3cret@127.0.0.1:6379/0"))
    argv = child.argv()
    assert argv[2:6] == ["qdeploy", "beat", "-A", "proj"] and "s3cret" not in " ".join(argv)
    assert child.environment()["QDEPLOY_BROKER"] == "redis://:s3cret@127.0.0.1:6379/0"


# -- the app's worker settings below the config ---------------------------------------------------


def test_the_apps_worker_settings_fill_what_the_config_left_unset(isolated, write_config):
    app = App("x")
    app.conf.update(worker_concurrency=3, worker_max_tasks_per_child=50, task_time_limit=60, worker_pool="threads")
    opts, notes = options.with_app(options.resolve(config_mod.load(None, {}), None), app)
    assert (opts.pool, opts.concurrency, opts.threads) == ("prefork", 1, 3), "threads: one child of 3 threads"
    assert opts.max_tasks_per_child == 50 and opts.time_limit == 60.0 and notes == []
    write_config("[worker]\nconcurrency = 2\nmax_tasks_per_child = 7\n")
    app.conf.worker_pool = "prefork"
    opts, notes = options.with_app(options.resolve(config_mod.load(None, {"worker.concurrency": "4"}), None), app)
    assert opts.concurrency == 4 and opts.max_tasks_per_child == 7
    assert len(notes) == 2
    assert any("worker concurrency: 3 from app.conf.update: worker_concurrency and 4 from the command line "
               "(--concurrency); using the command line (--concurrency)'s" in n for n in notes)
    assert any("50 from app.conf.update: worker_max_tasks_per_child and 7 from qdeploy.toml" in n for n in notes)
