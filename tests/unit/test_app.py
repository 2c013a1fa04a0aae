"""Pure logic of the producer API: backoff, rate limits, envelopes (no Redis)."""

from datetime import datetime, timedelta, timezone

import pytest

from qdeploy.core.app import App, backoff, parse_rate


def test_backoff_grows_exponentially_within_equal_jitter_bounds():
    for retries in range(8):
        delay = min(60.0, 0.5 * 2 ** retries)
        for _ in range(50):
            value = backoff(retries, base=0.5, cap=60.0, jitter=True)
            assert delay / 2 <= value <= delay
    assert backoff(3, base=1, cap=5, jitter=False) == 5
    assert backoff(2, base=1, cap=600, jitter=False) == 4


@pytest.mark.parametrize("rate, per_second", [("10/s", 10), ("120/m", 2), ("36/h", 0.01),
                                              ("5", 5), (None, None)])
def test_parse_rate(rate, per_second):
    assert parse_rate(rate) == per_second


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate("fast")


def test_task_options_flow_into_the_envelope():
    app = App("u", broker="redis://127.0.0.1:1/0")

    @app.task(name="u.t", queue="hi", soft_time_limit=1, time_limit=2, ignore_result=True)
    def t(x):
        return x

    env = app.envelope(t, [1], {}, countdown=10, expires=60)
    assert (env.task, env.queue, env.limits, env.ignore_result) == ("u.t", "hi", {"soft": 1, "hard": 2}, True)
    assert env.eta - env.created == pytest.approx(10, abs=1)
    assert env.expires - env.created == pytest.approx(60, abs=1)
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    env = app.envelope("u.t", [1], eta=when, expires=when, queue="other")
    assert env.eta == when.timestamp() == env.expires and env.queue == "other"
    assert app.envelope("unknown.name", []).queue == "default"
    assert t(5) == 5  # calling a task runs it here


def test_retry_outside_a_task_is_an_error():
    app = App("u", broker="redis://127.0.0.1:1/0")

    @app.task(bind=True)
    def t(self):
        return self

    with pytest.raises(RuntimeError, match="outside of a running task"):
        t.retry()


def test_configure_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown App setting"):
        App("u").configure(brokr="redis://x")
