"""The JSON envelope: round trip, and every malformed shape refused with a clear reason."""

import json
import pickle

import pytest

from qdeploy.core import message
from qdeploy.core.message import MalformedMessage


def good(**over) -> dict:
    env = message.build("proj.add", [1, 2], {"z": 3}, queue="q1", eta=5.0, expires=9e9,
                        limits={"soft": 1, "hard": 2})
    data = json.loads(message.encode(env))
    data.update(over)
    return data


def test_round_trip_keeps_every_field():
    env = message.build("proj.add", (1, "two"), {"k": [3]}, queue="high", task_id="abc",
                        eta=10.5, expires=20.0, retries=2, max_retries=4,
                        limits={"soft": 1.5}, ignore_result=True)
    raw = message.encode(env)
    back = message.decode(raw.encode())
    assert back == env
    assert back.args == [1, "two"] and back.kwargs == {"k": [3]}
    assert json.loads(raw)["v"] == 1  # nothing of v2 needed: written as the previous release wrote it


def test_envelope_has_the_documented_fields():
    env = message.build("proj.add", [1], queue="q1", eta=5.0, expires=9e9, retries=1, max_retries=2,
                        limits={"soft": 1}, ignore_result=True)
    assert set(json.loads(message.encode(env))) == {"v", "id", "task", "args", "kwargs", "queue", "eta", "expires",
                                                    "retries", "max_retries", "limits", "ignore_result", "created",
                                                    "origin"}


def test_fields_at_their_default_are_left_out_and_read_back_as_defaults():
    env = message.build("proj.add", [1], queue="q1")
    raw = message.encode(env)
    assert set(json.loads(raw)) == {"v", "id", "task", "args", "kwargs", "queue", "created", "origin"}
    back = message.decode(raw)
    assert back == env
    assert (back.eta, back.expires, back.retries, back.max_retries, back.limits, back.ignore_result) == (
        None, None, 0, None, {}, False)
    # written explicitly (as releases before this one did), the defaults read the same
    explicit = dict(json.loads(raw), eta=None, expires=None, retries=0, max_retries=None, limits={},
                    ignore_result=False)
    assert message.decode(json.dumps(explicit)) == env
    # what it saves per waiting task (bench/README.md: Redis memory per waiting task)
    assert len(json.dumps(explicit, separators=(",", ":"))) - len(raw) >= 60


def test_ids_are_unique():
    assert len({message.build("t", queue="q").id for _ in range(1000)}) == 1000


def test_non_json_arguments_are_refused_at_send_time():
    env = message.build("proj.add", [object()], queue="q")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        message.encode(env)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        message.build("proj.add", [], ["not", "a", "dict"], queue="q")


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "JSON list, expected an object"),
    (b'"a string"', "JSON str, expected an object"),
    (b"42", "JSON int, expected an object"),
    (b"null", "JSON NoneType, expected an object"),
    (pickle.dumps({"task": "x"}), "pickle payloads are never accepted"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_undecodable_bodies(raw, reason):
    with pytest.raises(MalformedMessage, match=reason):
        message.decode(raw)


@pytest.mark.parametrize("over, reason", [
    ({"v": 0}, "unsupported envelope version 0"),
    ({"v": "1"}, "unsupported envelope version '1'"),
    ({"args": {"a": 1}}, "'args' has type dict"),
    ({"kwargs": [1]}, "'kwargs' has type list"),
    ({"retries": True}, "'retries' has type bool"),
    ({"retries": "0"}, "'retries' has type str"),
    ({"eta": "soon"}, "'eta' has type str"),
    ({"task": ""}, "must be non-empty"),
    ({"extra": 1}, "unknown fields"),
])
def test_invalid_envelopes(over, reason):
    with pytest.raises(MalformedMessage, match=reason):
        message.decode(json.dumps(good(**over)))


@pytest.mark.parametrize("field", ["id", "task", "args", "kwargs", "queue", "v"])
def test_missing_required_fields(field):
    data = good()
    del data[field]
    with pytest.raises(MalformedMessage):
        message.decode(json.dumps(data))


def test_optional_fields_may_be_missing():
    data = {k: v for k, v in good().items() if k in ("v", "id", "task", "args", "kwargs", "queue")}
    env = message.decode(json.dumps(data))
    assert env.retries == 0 and env.eta is None and env.limits == {}


def test_oversized_message_is_refused_without_parsing(monkeypatch):
    monkeypatch.setattr(message, "MAX_BODY", 100)
    with pytest.raises(MalformedMessage, match="larger than 100"):
        message.decode(b"{" + b" " * 200 + b"}")


def test_expiry_and_next_retry():
    env = message.build("t", queue="q", expires=100.0)
    assert env.is_expired(now=100.0) and not env.is_expired(now=99.9)
    nxt = env.next_retry(eta=123.0)
    assert (nxt.retries, nxt.eta, nxt.id) == (1, 123.0, env.id) and env.retries == 0


def test_peek_id_is_best_effort():
    assert message.peek_id('{"id": "x"}') == "x"
    assert message.peek_id("[]") is None and message.peek_id(b"\xff") is None
