"""What the dashboard may change, when started with --allow-actions (and only for a user who
authenticated): each action checks its arguments (they came over the network), does one thing
through the module that owns it (ops/control, ops/fleet, beat/store, the history's retry
script), and is logged with who did it: a WARNING line on `qdeploy.dashboard` and an entry in
the history's audit list ({ns:hist}:audit), which the page shows.

    revoke {id, terminate}       app.revoke (terminate: the child running it is killed)
    retry {id}                   a FAILURE of the history sent again under its id (history_retry.lua)
    dead-requeue {ids | all}     fleet.requeue_dead        dead-purge {}    fleet.purge_dead
    pool-grow / pool-shrink {node, n}   control            shutdown {node}  control (warm)
    schedule-enable / schedule-disable / schedule-run {name}   beat's store / send now
"""

from __future__ import annotations

import logging
import time
from importlib import resources

from qdeploy.core import message
from qdeploy.core.message import TASK_ID
from qdeploy.ops import fleet, history
from qdeploy.ops.control import Control, check_destinations
from qdeploy.ops.dashboard.schedule import ScheduleError

log = logging.getLogger("qdeploy.dashboard")

NAMES = ("revoke", "retry", "dead-requeue", "dead-purge", "pool-grow", "pool-shrink", "shutdown",
         "schedule-enable", "schedule-disable", "schedule-run")
MAX_IDS = 1000
CONTROL_TIMEOUT = 2.0


class ActionError(ValueError):
    """An action refused as asked (bad arguments, or the state does not allow it): 400/409."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


class Actions:
    def __init__(self, app, broker, store: history.HistoryStore, schedule=None):
        self.app, self.broker, self.store, self.schedule = app, broker, store, schedule
        self.control = Control(broker)
        source = resources.files("qdeploy.ops").joinpath("history_retry.lua").read_text()
        self._retry = broker.client.register_script(source)

    def run(self, name: str, args, user: str | None, peer: str) -> dict:
        if name not in NAMES:
            raise ActionError(f"unknown action {name[:40]!r}", 404)
        if not isinstance(args, dict):
            raise ActionError("expected a JSON object of arguments")
        try:
            result = getattr(self, "do_" + name.replace("-", "_"))(args)
        except ScheduleError as exc:
            result = None
            self._log(name, args, user, peer, f"refused: {exc}")
            raise ActionError(str(exc), 409) from None
        except ActionError as exc:
            self._log(name, args, user, peer, f"refused: {exc}")
            raise
        self._log(name, args, user, peer, "done", result)
        return result

    def _log(self, name: str, args: dict, user: str | None, peer: str, outcome: str, result=None) -> None:
        shown = {k: v for k, v in args.items() if k in ("id", "ids", "all", "node", "n", "name", "terminate")}
        log.warning("action %s %s by %s from %s: %s", name, _short(shown), user or "(anonymous)", peer, outcome)
        try:
            self.store.audit({"time": time.time(), "action": name, "args": _short(shown), "user": user, "from": peer,
                              "outcome": outcome, "result": _short(result) if result is not None else None})
        except Exception as exc:  # noqa: BLE001 - the log line above is the record that must not be lost
            log.error("action %s: cannot store its audit entry: %s", name, exc)

    # -- tasks -------------------------------------------------------------------------------
    def do_revoke(self, args: dict) -> dict:
        task_id = _task_id(args.get("id"))
        terminate = args.get("terminate", False)
        if not isinstance(terminate, bool):
            raise ActionError("terminate: expected true or false")
        self.app.revoke(task_id, terminate=terminate)
        return {"id": task_id, "revoked": True, "terminate": terminate}

    def do_retry(self, args: dict) -> dict:
        task_id = _task_id(args.get("id"))
        record = self.store.get(task_id)
        if record is None:
            raise ActionError(f"task {task_id} is not in the history", 404)
        if record.get("state") != "FAILURE":
            raise ActionError(f"task {task_id} is {record.get('state')}: only a FAILURE is retried", 409)
        call = history.call_of(record)
        if call is None:
            raise ActionError("its arguments were not kept (history_args = none, or larger than "
                              f"{history.ARGS_MAX} bytes): send it again from your code", 409)
        queue = record.get("queue") or self.app.default_queue
        links = {k: record[v] for k, v in (("parent_id", "parent"), ("root_id", "root"), ("group", "group"))
                 if record.get(v)}
        try:
            env = message.build(record["name"], call[0], call[1], queue=queue, task_id=task_id, **links)
            body = message.encode(env)
        except (TypeError, ValueError) as exc:
            raise ActionError(f"cannot build the message: {exc}", 409) from None
        keys = self.broker.keys
        if keys.cluster:  # the queue's slot is not the history's: its state was checked above
            self.broker.register(queue)
            qk = keys.of(queue)
            outcome = self._retry(keys=[qk.msg, qk.queue], args=[task_id, body])
        else:
            outcome = self._retry(keys=[self.store.keys.rec, keys.msg, keys.queue(queue)], args=[task_id, body])
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome != "ok":
            raise ActionError(f"task {task_id} not sent again: {outcome}", 409)
        return {"id": task_id, "queue": queue, "sent": True}

    # -- dead letters ------------------------------------------------------------------------
    def do_dead_requeue(self, args: dict) -> dict:
        if args.get("all") is True:
            done, skipped = fleet.requeue_dead(self.broker, None)
        else:
            ids = args.get("ids")
            if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
                raise ActionError(f"ids: expected a list of 1 to {MAX_IDS} task ids (or all: true)")
            done, skipped = fleet.requeue_dead(self.broker, [_task_id(i) for i in ids])
        return {"requeued": done[:MAX_IDS], "skipped": skipped[:MAX_IDS]}

    def do_dead_purge(self, args: dict) -> dict:
        if args.get("confirm") is not True:
            raise ActionError("confirm: expected true (purging cannot be undone)")
        return {"purged": fleet.purge_dead(self.broker)}

    # -- nodes -------------------------------------------------------------------------------
    def _node(self, args: dict) -> list[str]:
        node = args.get("node")
        if not isinstance(node, str):
            raise ActionError("node: expected a node name (NODE or NODE@HOST)")
        try:
            destination = check_destinations([node])
        except ValueError as exc:
            raise ActionError(str(exc)) from None
        assert destination is not None
        return destination

    def _ask(self, cmd: str, args: dict, control_args: dict | None = None) -> dict:
        destination = self._node(args)
        gathered = self.control.request(cmd, control_args, destination=destination, timeout=CONTROL_TIMEOUT)
        if gathered.unknown:
            raise ActionError(f"no online node {destination[0]!r}", 404)
        if gathered.missing or not gathered.replies:
            raise ActionError(f"node {destination[0]} did not answer", 504)
        replies = {owner: (r.get("result") if r.get("ok") else {"error": r.get("error")})
                   for owner, r in gathered.replies.items()}
        return {"node": destination[0], "replies": replies}

    def do_pool_grow(self, args: dict) -> dict:
        return self._ask("pool-grow", args, {"n": _count(args.get("n", 1))})

    def do_pool_shrink(self, args: dict) -> dict:
        return self._ask("pool-shrink", args, {"n": _count(args.get("n", 1))})

    def do_shutdown(self, args: dict) -> dict:
        return self._ask("shutdown", args)

    # -- periodic tasks ----------------------------------------------------------------------
    def _schedule(self):
        if self.schedule is None:
            raise ActionError("no beat schedule here", 409)
        return self.schedule

    def do_schedule_enable(self, args: dict) -> dict:
        return self._schedule().set_enabled(args.get("name"), True)

    def do_schedule_disable(self, args: dict) -> dict:
        return self._schedule().set_enabled(args.get("name"), False)

    def do_schedule_run(self, args: dict) -> dict:
        return self._schedule().run_now(args.get("name"))


def _task_id(value) -> str:
    if not isinstance(value, str) or not TASK_ID.fullmatch(value):
        raise ActionError("id: expected a task id (visible ASCII, at most 255 characters)")
    return value


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ActionError("n: expected an integer from 1 to 64")
    return value


def _short(value, limit: int = 500) -> str:
    import json

    text = json.dumps(value, default=str, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + "..."
