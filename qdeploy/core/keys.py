"""Every Redis key name of the protocol, in one place (docs/protocol.md has the table).

`Keys(namespace)` is what every module uses (broker, results, fleet, beat store, control,
dashboard); nothing else spells a key. Lua scripts that derive a key at run time (the queue of
a message being requeued, the result of the id being acked) get their helpers from
`lua_helpers` (those a script calls), generated from the same templates, so the Python and the
Lua side cannot drift apart.

    ns:msg                hash    id -> envelope JSON (the only copy of a message body)
    ns:q:<queue>          list    ids ready to run (LPUSH in, taken from the right)
    ns:eta:<queue>        zset    ids not due yet, score = unix time they become due
    ns:inflight:<cid>     list    ids reserved by consumer <cid>, until acked
    ns:dlv                hash    id -> deliveries since the last ack or retry
    ns:consumers          hash    cid -> heartbeat owner (the node that vouches for it)
    ns:hb:<owner>         string  heartbeat, expires after the visibility timeout
    ns:node:<owner>       string  the lease that makes a node name one live master's (JSON)
    ns:dead               list    dead-letter records (JSON, newest first, capped)
    ns:r:<id>             string  result record (JSON), expires after result_ttl
    ns:revoked:<id>       string  revocation mark, expires after result_ttl
    ns:chord:<gid>        hash    a chord: header task id -> its index, and " n", " bid"... (meta)
    ns:chordr:<gid>       hash    a chord's header results: index -> result JSON (HLEN = done)
    ns:uniq:<key>         string  the id of the message a unique send is held by (TTL unique_for)
    ns:group:<gid>        string  a saved GroupResult's member ids (JSON), expires after result_ttl
    ns:rate               hash    task name -> next allowed start of its fleet-wide rate limit ("<task> tail")
    ns:rate:slots         hash    id -> the rate-limit slot a deferred message holds
    ns:ctl                channel control requests (ids only)
    ns:ctl:req:<rid>      string  one control request, expiring with its timeout
    ns:ctl:reply:<rid>    list    the nodes' replies to it
    ns:ev                 channel task and worker events (JSON, qdeploy.ops.events)
    {ns:hist}:*           the task history (qdeploy.ops.history has its layout): one hash slot, on one server too
    ns:beat:*             beat's lock, anchors, runs and dynamic entries (qdeploy.beat.store)

On Redis Cluster (`redis+cluster://`) the same protocol runs over `ClusterKeys(namespace)`: what
a queue's scripts touch carries the hash tag `{ns:<queue>}` (one slot per queue: `{ns:q}:q`,
`{ns:q}:msg`, `{ns:q}:inflight:<cid>`, `{ns:q}:hb:<owner>` a copy of a heartbeat...), a chord's
two hashes `{ns:chord:<gid>}`, beat's keys `{ns:beat}`; keys only ever touched one at a time
(results, heartbeats, leases, control, groups) keep their single-server names. A single server
keeps the names above, unchanged: a rolling upgrade never renames a key. docs/protocol.md,
"Redis Cluster", has the whole layout.
"""

from __future__ import annotations

# name -> template; "{}" is the variable part. Fixed keys have none.
TEMPLATES: dict[str, str] = {
    "msg": "msg",
    "dlv": "dlv",
    "consumers": "consumers",
    "dead": "dead",
    "queue": "q:{}",
    "eta": "eta:{}",
    "inflight": "inflight:{}",
    "heartbeat": "hb:{}",
    "node": "node:{}",
    "result": "r:{}",
    "revoked": "revoked:{}",
    "chord": "chord:{}",
    "chord_results": "chordr:{}",
    "unique": "uniq:{}",
    "group": "group:{}",
    "rate": "rate",
    "rate_slots": "rate:slots",
    "control": "ctl",
    "control_request": "ctl:req:{}",
    "control_reply": "ctl:reply:{}",
    "events": "ev",
    "sweep": "sweep",
    "beat_lock": "beat:lock",
    "beat_last": "beat:last",
    "beat_runs": "beat:runs",
    "beat_entries": "beat:entries",
    "beat_disabled": "beat:disabled",
    "beat_rev": "beat:rev",
}

# The keys a Lua script derives at run time (from the namespace in its ARGV).
LUA_KEYS = ("msg", "dlv", "consumers", "dead", "queue", "eta", "inflight", "heartbeat", "result", "revoked",
            "chord", "chord_results", "unique", "rate", "rate_slots")


def lua_helpers(names: tuple[str, ...] = LUA_KEYS) -> str:
    """`local function k_queue(ns, x) return ns .. ':q:' .. x end` and so on, from TEMPLATES
    (`names`: the keys a script needs, when not the protocol's)."""
    lines = []
    for name in names:
        head, variable, tail = TEMPLATES[name].partition("{}")
        assert not tail, f"{name}: the variable part must come last"
        if variable:
            lines.append(f"local function k_{name}(ns, x) return ns .. ':{head}' .. x end")
        else:
            lines.append(f"local function k_{name}(ns) return ns .. ':{head}' end")
    return "\n".join(lines) + "\n"


class Keys:
    """Key names of one namespace. Fixed keys are attributes (`keys.msg`); keys with a variable
    part are methods (`keys.queue("default")`); `keys.prefix("queue")` is for SCAN patterns."""

    __slots__ = ("ns", "msg", "dlv", "consumers", "dead", "control", "sweep", "beat_lock", "beat_last",
                 "beat_runs", "beat_entries", "beat_disabled", "beat_rev", "rate", "rate_slots")

    def __init__(self, namespace: str):
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "{}*?[] \n"):
            raise ValueError(f"namespace must be a non-empty name without spaces, braces or glob "
                             f"characters, not {namespace!r}")
        fixed = {name: f"{namespace}:{t}" for name, t in TEMPLATES.items() if "{}" not in t}
        self.ns = namespace
        self.msg, self.dlv, self.consumers, self.dead = fixed["msg"], fixed["dlv"], fixed["consumers"], fixed["dead"]
        self.control, self.sweep = fixed["control"], fixed["sweep"]
        self.beat_lock, self.beat_last, self.beat_runs = fixed["beat_lock"], fixed["beat_last"], fixed["beat_runs"]
        self.beat_entries, self.beat_disabled = fixed["beat_entries"], fixed["beat_disabled"]
        self.beat_rev = fixed["beat_rev"]
        self.rate, self.rate_slots = fixed["rate"], fixed["rate_slots"]

    cluster = False

    def __repr__(self) -> str:
        return f"Keys({self.ns!r})"

    def of(self, queue: str) -> QueueKeys:
        """The keys a queue's scripts touch (on one server mostly the namespace's shared ones)."""
        return QueueKeys(queue, f"{self.ns}:q:{queue}:", {
            "queue": self.queue(queue), "eta": self.eta(queue), "msg": self.msg, "dlv": self.dlv,
            "consumers": self.consumers, "dead": self.dead, "rate": self.rate, "rate_slots": self.rate_slots,
            "inflight": self.prefix("inflight")})

    def prefix(self, name: str) -> str:
        """`ns:q:` for "queue": what every key of that kind starts with."""
        return f"{self.ns}:{TEMPLATES[name].replace('{}', '')}"

    def queue(self, queue: str) -> str:
        return f"{self.ns}:q:{queue}"

    def eta(self, queue: str) -> str:
        return f"{self.ns}:eta:{queue}"

    def inflight(self, cid: str) -> str:
        return f"{self.ns}:inflight:{cid}"

    def heartbeat(self, owner: str) -> str:
        return f"{self.ns}:hb:{owner}"

    def node(self, owner: str) -> str:
        return f"{self.ns}:node:{owner}"

    def result(self, task_id: str) -> str:
        return f"{self.ns}:r:{task_id}"

    def revoked(self, task_id: str) -> str:
        return f"{self.ns}:revoked:{task_id}"

    def chord(self, group_id: str) -> str:
        return f"{self.ns}:chord:{group_id}"

    def chord_results(self, group_id: str) -> str:
        return f"{self.ns}:chordr:{group_id}"

    def unique(self, key: str) -> str:
        return f"{self.ns}:uniq:{key}"

    def group(self, group_id: str) -> str:
        return f"{self.ns}:group:{group_id}"

    def control_request(self, rid: str) -> str:
        return f"{self.ns}:ctl:req:{rid}"

    def control_reply(self, rid: str) -> str:
        return f"{self.ns}:ctl:reply:{rid}"


class QueueKeys:
    """The keys one queue's scripts touch. On a single server most are the namespace's shared
    keys (`ns:msg`...); on Redis Cluster every one carries the queue's hash tag, so they all
    live in one slot and each verb on the queue stays one atomic script."""

    __slots__ = ("name", "queue", "eta", "msg", "dlv", "consumers", "dead", "revoked", "rate", "rate_slots",
                 "unique", "unique_expiry", "outbox", "outbox_due", "once", "_inflight", "_vouch")

    def __init__(self, name: str, prefix: str, shared: dict[str, str] | None = None):
        per = lambda kind: f"{prefix}{kind}"  # noqa: E731
        shared = shared or {}
        self.name = name
        self.queue, self.eta = shared.get("queue", per("q")), shared.get("eta", per("eta"))
        self.msg, self.dlv = shared.get("msg", per("msg")), shared.get("dlv", per("dlv"))
        self.consumers, self.dead = shared.get("consumers", per("consumers")), shared.get("dead", per("dead"))
        self.revoked, self.rate, self.rate_slots = per("revoked"), shared.get("rate", per("rate")), \
            shared.get("rate_slots", per("rate:slots"))
        self.unique, self.unique_expiry = per("uniq"), per("uniqx")
        self.outbox, self.outbox_due, self.once = per("out"), per("outq"), per("once")
        self._inflight = shared.get("inflight", per("inflight:"))
        self._vouch = per("hb:")

    def inflight(self, cid: str) -> str:
        return self._inflight + cid

    def heartbeat(self, owner: str) -> str:
        """Redis Cluster: the copy of `owner`'s heartbeat kept in this queue's slot (written with
        `ns:hb:<owner>` by ClusterBroker.heartbeat; one server has no use for it)."""
        return self._vouch + owner


class ClusterKeys(Keys):
    """Key names on Redis Cluster: `Keys`' names where a key is only ever touched alone (results,
    heartbeats, leases, control, groups), hash-tagged names where a script touches several:
    `of(queue)` for a queue's keys (`{ns:<queue>}:...`), `{ns:chord:<gid>}:meta|res` for a chord,
    `{ns:beat}:...` for beat. A message body has no namespace-wide home here (`msg` and friends
    raise ClusterKeyError naming the per-queue spelling)."""

    __slots__ = ("_queues",)
    cluster = True
    _PER_QUEUE = ("msg", "dlv", "consumers", "dead", "rate", "rate_slots")

    def __init__(self, namespace: str):
        Keys.__init__(self, namespace)
        beat = f"{{{namespace}:beat}}"
        self.beat_lock, self.beat_last, self.beat_runs = f"{beat}:lock", f"{beat}:last", f"{beat}:runs"
        self.beat_entries, self.beat_disabled, self.beat_rev = f"{beat}:entries", f"{beat}:disabled", f"{beat}:rev"
        self._queues: dict[str, QueueKeys] = {}

    def __getattribute__(self, name: str):
        if name in ClusterKeys._PER_QUEUE:
            raise ClusterKeyError(f"on Redis Cluster each queue has its own {name} key: keys.of(queue).{name}")
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return f"ClusterKeys({self.ns!r})"

    @property
    def queues(self) -> str:
        """The set of every queue name ever published to or consumed from (cluster only: what
        spans queues, such as revoke, recovery and the fleet views, iterates it)."""
        return f"{self.ns}:queues"

    @property
    def beat_outbox(self) -> str:
        return f"{{{self.ns}:beat}}:out"

    def of(self, queue: str) -> QueueKeys:
        keys = self._queues.get(queue)
        if keys is None:
            if len(self._queues) > 4096:
                self._queues.clear()
            keys = self._queues[queue] = QueueKeys(queue, f"{{{self.ns}:{queue}}}:")
        return keys

    def prefix(self, name: str) -> str:
        if name in ("queue", "eta", "inflight"):
            raise ClusterKeyError(f"on Redis Cluster {name} keys have no common prefix: iterate keys.queues")
        return Keys.prefix(self, name)

    def queue(self, queue: str) -> str:
        return self.of(queue).queue

    def eta(self, queue: str) -> str:
        return self.of(queue).eta

    def inflight(self, cid: str, queue: str | None = None) -> str:
        if queue is None:
            raise ClusterKeyError("on Redis Cluster a consumer has one in-flight list per queue: "
                                  "keys.of(queue).inflight(cid)")
        return self.of(queue).inflight(cid)

    def chord(self, group_id: str) -> str:
        return f"{{{self.ns}:chord:{group_id}}}:meta"

    def chord_results(self, group_id: str) -> str:
        return f"{{{self.ns}:chord:{group_id}}}:res"


class ClusterKeyError(ValueError):
    """A namespace-wide key asked for on Redis Cluster, where it is per queue."""


def keys_for(namespace: str, cluster: bool = False) -> Keys:
    return ClusterKeys(namespace) if cluster else Keys(namespace)
