"""What a FAILURE record becomes in the caller (`results.failure`): an instance of the task's
own exception class when it is loaded here, never an import, never a crash on hostile names."""

from __future__ import annotations

import pytest

from qdeploy.core import results
from qdeploy.core.results import TaskFailed


def meta(exc_type, module, exc="boom"):
    return {"state": "FAILURE", "exc_type": exc_type, "exc_module": module, "exc": exc, "traceback": "Traceback..."}


class NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class Custom(Exception):
    pass


def test_a_loaded_class_is_combined_with_task_failed():
    err = results.failure("t1", meta("KeyError", "builtins"))
    assert isinstance(err, KeyError) and isinstance(err, TaskFailed) and err.task_id == "t1"
    assert err["exc_type"] == "KeyError" and "t1 failed: KeyError: boom" in str(err)
    mine = results.failure("t2", meta("Custom", __name__))
    assert isinstance(mine, Custom) and type(mine).__module__ == __name__
    with pytest.raises(Custom):
        raise mine
    assert isinstance(results.failure("t4", meta("NeedsTwo", __name__)), NeedsTwo)  # its __init__ is not called
    oserr = results.failure("t3", meta("ConnectionRefusedError", "builtins"))
    assert isinstance(oserr, ConnectionRefusedError)


@pytest.mark.parametrize("exc_type, module", [
    ("NoSuchError", "builtins"), ("Thing", "a_module_that_is_not_imported"), ("os.system", "os"),
    ("__class__", "builtins"), ("path", "os"), ("TaskFailed", "qdeploy.core.results"),
    ("", None), (None, None), ("KeyError", None), ("x" * 10000, "builtins"),
])
def test_anything_else_is_a_plain_task_failed_and_nothing_is_imported(exc_type, module):
    import sys

    before = set(sys.modules)
    err = results.failure("t", meta(exc_type, module))
    assert type(err) is TaskFailed and set(sys.modules) == before


def test_the_cache_of_names_from_redis_is_bounded():
    for i in range(2500):
        results.failure("t", meta(f"E{i}", "builtins"))
    assert len(results._REMOTE) <= 1001
