"""Fuzz the message decoder: whatever bytes sit in Redis, decode() returns an Envelope that
encodes back to itself, or raises MalformedMessage. Nothing else may escape (a RecursionError
or a NaN that encode() later refuses would crash or wedge a consumer)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy.core import message
from qdeploy.core.message import MalformedMessage

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["v", "id", "task", "args", "kwargs", "queue", "eta", "expires", "retries", "max_retries",
          "limits", "ignore_result", "created", "origin"]
# Envelope-shaped objects: mostly the right field names, each with a random JSON value.
envelopes = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=16)
base = {"v": 1, "id": "x", "task": "t", "args": [], "kwargs": {}, "queue": "q"}
near_valid = st.builds(lambda over: {**base, **over},
                       st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))


def check(raw) -> None:
    try:
        env = message.decode(raw)
    except MalformedMessage as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert message.decode(message.encode(env)) == env  # what was accepted can be re-sent (retry)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    check(raw)


@FUZZ
@given(st.text(max_size=200))
def test_random_text(raw):
    check(raw)


@FUZZ
@given(envelopes | near_valid)
def test_envelope_shaped_json(data):
    check(json.dumps(data, allow_nan=True).encode())


@FUZZ
@given(near_valid, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]),
       st.sampled_from(["eta", "expires", "created", "args"]))
def test_non_finite_numbers_are_malformed(data, constant, name):
    data = dict(data, **{name: "@@"})
    raw = json.dumps(data).replace('"@@"', f"[{constant}]" if name == "args" else constant)
    try:
        message.decode(raw.encode())
    except MalformedMessage:
        return
    raise AssertionError(f"{raw} was accepted")


def test_deep_nesting_is_malformed_not_a_recursion_error():
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, ('{"v":1,"args":' + "[" * 50_000).encode()):
        try:
            message.decode(raw)
        except MalformedMessage as exc:
            assert "deep" in exc.reason or "JSON" in exc.reason
        else:
            raise AssertionError("accepted")
