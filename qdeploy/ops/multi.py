"""`qdeploy multi`: Celery's `multi` node syntax turned into one worker argv per node, and the
start/stop verbs that run them as detached workers.

    qdeploy multi start 3 -c 4 -c:2 8 -Q:1-2 images,video --pidfile=/run/qdeploy/%n.pid -- -l debug

Positional words name the nodes: one number N (nodes `1`..`N`) or a list of names. With
`--config FILE` the nodes and the command line come from the config, through
`render.worker_argv`: the very argv the rendered systemd/init.d/supervisord services exec (the
positional words then pick a subset: `2`, `1-2`, `images`). `OPTION:SELECTOR VALUE` sets an option
for the selected nodes only (`qdeploy.generator.nodes.select`); words after `--` go to every worker as they
are. `--pidfile`/`--logfile` are expanded per node as Celery's multi does (`%h` is the full node
name `name@host`: `nodes.expand_multi`); two nodes that would share a pid or log file are refused.
Building argvs has no side effects (no directories, no files): `show`, `names` and `expand` only
print.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import psutil

from qdeploy.defaults import GRACEFUL_TIMEOUT, STOP_MARGIN
from qdeploy.generator import nodes as nodes_mod
from qdeploy.generator.datatypes import NODE_NAME, duration
from qdeploy.service.daemon import read_pid, signal_pid

ACTIONS = ("start", "stop", "stopwait", "restart", "kill", "show", "names", "expand")
OWN_OPTIONS = {"--config": True, "--timeout": True, "--rolling": False, "--json": False}  # name -> takes a value
MANAGED = {"--node", "--hostname", "--detach"}  # multi sets these itself
DEFAULT_PIDFILE = "{pid_dir}/qworker-%n.pid"  # the init.d script's names: both see the same nodes
DEFAULT_LOGFILE = "{log_dir}/qworker-%n.log"
DEFAULT_GRACEFUL = GRACEFUL_TIMEOUT
START_MARGIN = 10.0  # beyond the worker's own readiness timeout


class MultiError(ValueError):
    """A bad `qdeploy multi` command line: one line for the operator (exit 2)."""


@dataclass(frozen=True)
class OptionSpec:
    """What `qdeploy worker` accepts: every spelling -> its canonical (long) name, and which
    canonical names are flags (take no value). Built from the click command by the CLI."""

    canonical: dict[str, str]
    flags: frozenset[str]


@dataclass
class Invocation:
    action: str
    words: list[str] = field(default_factory=list)  # positional: nodes (and the expand template)
    options: list[tuple[str | None, str, str, str | None]] = field(default_factory=list)  # (selector, canonical, spelling, value)
    passthrough: list[str] = field(default_factory=list)
    config: str | None = None
    timeout: float | None = None
    rolling: bool = False
    as_json: bool = False


@dataclass(frozen=True)
class Node:
    name: str
    argv: list[str]  # what `start` execs (it ends with --detach)
    pidfile: str  # fully expanded: where multi finds the running master
    logfile: str  # as given to the worker: multi's %n %N %h %p %d expanded, %i %I left for the worker
    stop_timeout: float
    master_log: str = ""  # the master's own log file (logfile as the worker expands it in the master)


@dataclass(frozen=True)
class Outcome:
    node: str
    ok: bool
    status: str
    detail: str = ""


# -- parsing ---------------------------------------------------------------------------------
def parse(args: list[str], spec: OptionSpec) -> Invocation:
    """Split a `qdeploy multi` command line (after the program name) into an Invocation."""
    args = list(args)
    if not args:
        raise MultiError(f"missing action (one of {', '.join(ACTIONS)})")
    action, args = args[0], args[1:]
    if action not in ACTIONS:
        raise MultiError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    inv = Invocation(action)
    if "--" in args:
        cut = args.index("--")
        args, inv.passthrough = args[:cut], args[cut + 1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            inv.words.append(arg)
            continue
        head, eq, given = arg.partition("=")
        value: str | None = given
        name, colon, selector = head.partition(":")
        if not eq and not colon and not arg.startswith("--") and len(arg) > 2 and arg[:2] in spec.canonical:
            name, eq, value = arg[:2], "=", arg[2:]  # -c8
        if name in OWN_OPTIONS:
            if colon:
                raise MultiError(f"{name} applies to every node; it takes no :SELECTOR")
            if OWN_OPTIONS[name] and not eq:
                if i >= len(args):
                    raise MultiError(f"{name} needs a value")
                value, i = args[i], i + 1
            _own(inv, name, value)
            continue
        canonical = spec.canonical.get(name)
        if canonical is None:
            raise MultiError(f"unknown worker option {name!r} (see `qdeploy worker --help`; "
                             "put anything else after --)")
        if canonical in MANAGED:
            raise MultiError(f"{name}: multi names and detaches the nodes itself")
        if colon and not selector:
            raise MultiError(f"{arg}: empty node selector after ':'")
        if canonical in spec.flags:
            if eq:
                raise MultiError(f"{name} is a flag and takes no value")
            value = None
        elif not eq:
            if i >= len(args):
                raise MultiError(f"{name} needs a value")
            value, i = args[i], i + 1
        inv.options.append((selector or None, canonical, name, value))
    return inv


def _own(inv: Invocation, name: str, value: str | None) -> None:
    if name == "--config":
        inv.config = value
    elif name == "--rolling":
        inv.rolling = True
    elif name == "--json":
        inv.as_json = True
    else:
        try:
            inv.timeout = duration(value)
        except ValueError as exc:
            raise MultiError(f"--timeout {value!r}: {exc}") from None


def node_names(words: list[str], config_nodes: list[str] | None) -> list[str]:
    """Celery mode: `3` -> 1 2 3, or a list of names. Config mode: a selector over the config's
    nodes (all of them when no word is given)."""
    if config_nodes is not None:
        if not words:
            return list(config_nodes)
        try:
            return nodes_mod.select(",".join(words), config_nodes)
        except ValueError as exc:
            raise MultiError(str(exc)) from None
    if not words:
        raise MultiError("name the nodes: a count (`3`) or names (`images default`), or use --config")
    if len(words) == 1 and words[0].isdigit():
        count = int(words[0])
        if not 1 <= count <= 1024:
            raise MultiError(f"node count {count} must be between 1 and 1024")
        return [str(n) for n in range(1, count + 1)]
    for word in words:
        if not NODE_NAME.fullmatch(word):
            raise MultiError(f"node name {word!r} must match [A-Za-z0-9_.-]+")
    if len(set(words)) != len(words):
        raise MultiError(f"node names repeat: {' '.join(words)}")
    return list(words)


def resolve_options(inv: Invocation, names: list[str], selectable: list[str]) -> dict[str, dict[str, tuple[str, str | None]]]:
    """Per node: canonical option -> (spelling, value). `-c:2 8` beats `-c 4` on node 2 wherever
    it stands (as in Celery); otherwise the later option wins. Selectors are resolved against
    `selectable` (all nodes)."""
    per_node: dict[str, dict[str, tuple[str, str | None]]] = {n: {} for n in names}
    for selector, canonical, spelling, value in sorted(inv.options, key=lambda o: o[0] is not None):
        try:
            targets = nodes_mod.select(selector, selectable) if selector else names
        except ValueError as exc:
            raise MultiError(f"{spelling}:{selector}: {exc}") from None
        for name in targets:
            if name in per_node:
                per_node[name][canonical] = (spelling, value)
    return per_node


# -- argv building ---------------------------------------------------------------------------
def build(inv: Invocation, cfg, *, hostname: str | None = None) -> list[Node]:
    """One Node per selected node. `cfg` is the loaded config (the defaults when none was given:
    then the nodes come from the command line, Celery style)."""
    from qdeploy.generator import render

    config_mode = inv.config is not None
    words = inv.words[1:] if inv.action == "expand" else inv.words
    selectable = cfg.nodes if config_mode else node_names(words, None)
    names = node_names(words, cfg.nodes) if config_mode else selectable
    options = resolve_options(inv, names, selectable)
    host = hostname or socket.gethostname()
    out = []
    for name in names:
        opts = dict(options[name])
        pid_t = opts.pop("--pidfile", (None, DEFAULT_PIDFILE.format(pid_dir=_dir(opts, cfg, "pid_dir"))))[1]
        log_t = opts.pop("--logfile", (None, DEFAULT_LOGFILE.format(log_dir=_dir(opts, cfg, "log_dir"))))[1]
        # As Celery's multi: %n %N %h %p %d expanded here; the worker expands %i %I %% per process.
        pidfile = nodes_mod.expand_multi(pid_t or "", name, host)
        logfile = nodes_mod.expand_multi(log_t or "", name, host)
        head = render.worker_argv(cfg, name) if config_mode else [cfg["executable"], "worker", "-n", name]
        argv = list(head)
        for spelling, value in opts.values():
            argv += [spelling] if value is None else [spelling, value]
        argv += ["--pidfile", pidfile, "--logfile", logfile, "--detach", *inv.passthrough]
        out.append(Node(name, argv, nodes_mod.expand(pidfile, name, host), logfile,
                        inv.timeout if inv.timeout is not None else _stop_timeout(cfg, name, opts, config_mode),
                        nodes_mod.expand(logfile, name, host)))
    _refuse_shared_files(out)
    return out


def _dir(opts: dict, cfg, key: str) -> str:
    """The node's --pid-dir/--log-dir (else the config's), as literal text in a template."""
    return opts.get("--" + key.replace("_", "-"), (None, cfg[key]))[1].replace("%", "%%")


def _refuse_shared_files(nodes: list[Node]) -> None:
    """Two nodes on one pid (or log) file: the second start would find the first "already
    running", stop would signal one master twice. Refused, naming both nodes."""
    owners: dict[str, tuple[str, str]] = {}
    for node in nodes:
        for kind, path, flag in (("pid file", node.pidfile, "--pidfile"), ("log file", node.master_log, "--logfile")):
            key = os.path.normpath(path)
            if key not in owners:
                owners[key] = node.name, kind
                continue
            other, other_kind = owners[key]
            if other == node.name:
                raise MultiError(f"node {node.name}: its pid file and its log file are the same file {path}")
            if other_kind == kind:
                raise MultiError(f"nodes {other} and {node.name} would share the {kind} {path}: put %n in {flag}")
            raise MultiError(f"node {other}'s {other_kind} is node {node.name}'s {kind}: {path}")


def _stop_timeout(cfg, name: str, opts: dict, config_mode: bool) -> float:
    graceful = cfg.node(name)["graceful_timeout"] if config_mode else DEFAULT_GRACEFUL
    if "--graceful-timeout" in opts:
        try:
            graceful = duration(opts["--graceful-timeout"][1])
        except ValueError as exc:
            raise MultiError(f"--graceful-timeout: {exc}") from None
    return graceful + STOP_MARGIN


def expand_template(template: str, names: list[str], hostname: str | None = None) -> list[str]:
    """`multi expand`: the template as multi expands it for each node. `%i`/`%I` stay visible:
    they are the pool process index, which only a worker's processes have (as in Celery)."""
    return [nodes_mod.expand_multi(template, name, hostname) for name in names]


# -- process lifecycle (the verbs with side effects) -----------------------------------------
def start(nodes: list[Node], ready_timeout: float = 30.0, env: dict | None = None) -> list[Outcome]:
    """Start every node detached, in parallel; each worker's parent exits 0 only once its node is
    ready, so `ok` means "really came up"."""
    outcomes: dict[str, Outcome] = {}
    procs: dict[str, tuple[Node, subprocess.Popen]] = {}
    for node in nodes:
        pid = read_pid(node.pidfile)
        if pid:
            outcomes[node.name] = Outcome(node.name, True, "running", f"already running (pid {pid})")
            continue
        try:
            procs[node.name] = node, subprocess.Popen(node.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True, env=env)
        except OSError as exc:
            outcomes[node.name] = Outcome(node.name, False, "failed", f"cannot run {node.argv[0]}: {exc.strerror}")
    deadline = time.monotonic() + ready_timeout + START_MARGIN
    for name, (node, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            outcomes[name] = Outcome(name, False, "failed", f"no readiness within {ready_timeout + START_MARGIN:g}s")
            continue
        if proc.returncode == 0:
            outcomes[name] = Outcome(name, True, "started", f"pid {read_pid(node.pidfile) or '?'}")
        else:
            lines = [line for line in err.splitlines() if line.strip()]
            why = lines[-1].removeprefix("qdeploy: error: ") if lines else f"exit code {proc.returncode}"
            log = node.master_log or node.logfile
            outcomes[name] = Outcome(name, False, "failed", f"{why} (exit {proc.returncode}; log {log})")
    return [outcomes[n.name] for n in nodes]


def stop(nodes: list[Node], sig: int = signal.SIGTERM) -> list[Outcome]:
    """Send `sig` to every running node; do not wait."""
    out = []
    for node in nodes:
        pid = read_pid(node.pidfile)
        if pid is None:
            out.append(Outcome(node.name, True, "not running"))
            continue
        signal_pid(pid, sig)
        out.append(Outcome(node.name, True, "signalled", f"SIG{signal.Signals(sig).name[3:]} sent to pid {pid}"))
    return out


def stopwait(nodes: list[Node], timeout: float | None = None) -> list[Outcome]:
    """TERM every node (warm shutdown), wait for each to exit; after its timeout, KILL it and
    its children (their tasks are requeued by the visibility timeout)."""
    started = time.monotonic()
    waiting: dict[str, tuple[Node, int, list[int]]] = {}
    out: dict[str, Outcome] = {}
    for node in nodes:
        pid = read_pid(node.pidfile)
        if pid is None:
            out[node.name] = Outcome(node.name, True, "not running")
            continue
        waiting[node.name] = node, pid, _children(pid)
        signal_pid(pid, signal.SIGTERM)
    while waiting:
        now = time.monotonic()
        for name, (node, pid, kids) in list(waiting.items()):
            limit = timeout if timeout is not None else node.stop_timeout
            if _gone(pid):
                out[name] = Outcome(name, True, "stopped", f"pid {pid} exited after {now - started:.1f}s")
                del waiting[name]
            elif now - started >= limit:
                for victim in [pid, *kids, *_children(pid)]:
                    signal_pid(victim, signal.SIGKILL)
                _wait_gone([pid], 5.0)
                out[name] = Outcome(name, False, "killed", f"pid {pid} still running after {limit:g}s: sent SIGKILL")
                del waiting[name]
        time.sleep(0.05)
    return [out[n.name] for n in nodes]


def kill(nodes: list[Node]) -> list[Outcome]:
    """SIGKILL the master and its children at once (tasks are recovered after the visibility
    timeout, or at once when the node starts again)."""
    out = []
    for node in nodes:
        pid = read_pid(node.pidfile)
        if pid is None:
            out.append(Outcome(node.name, True, "not running"))
            continue
        victims = [pid, *_children(pid)]
        for victim in victims:
            signal_pid(victim, signal.SIGKILL)
        gone = _wait_gone(victims, 5.0)
        out.append(Outcome(node.name, gone, "killed" if gone else "failed", f"pid {pid}" + ("" if gone else " did not die")))
    return out


def restart(nodes: list[Node], *, rolling: bool = False, timeout: float | None = None,
            ready_timeout: float = 30.0, env: dict | None = None) -> list[Outcome]:
    """stopwait + start. Rolling: one node at a time, the next only once this one is ready again;
    a node that fails to come back stops the roll (the rest keep running)."""
    if not rolling:
        by_node = {o.node: o for o in stopwait(nodes, timeout)}
        return [_merge(by_node[o.node], o) for o in start(nodes, ready_timeout, env)]
    out = []
    for i, node in enumerate(nodes):
        stopped = stopwait([node], timeout)[0]
        started = start([node], ready_timeout, env)[0]
        out.append(_merge(stopped, started))
        if not started.ok:
            out += [Outcome(n.name, False, "skipped", f"roll stopped: node {node.name} did not come back") for n in nodes[i + 1:]]
            break
    return out


def _merge(stopped: Outcome, started: Outcome) -> Outcome:
    how = "stopped" if stopped.status != "killed" else "killed"
    detail = started.detail if stopped.status == "not running" else f"{how}, then {started.status}: {started.detail}"
    return Outcome(started.node, started.ok, "restarted" if started.ok else started.status, detail)


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.02)
    return all(_gone(p) for p in pids)
