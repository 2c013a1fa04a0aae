"""The growth curves' arithmetic, table, plot and README block (bench/growth.py measures them).

Results are `curves[curve][system][str(size)] = {"runs": [dict, ...]}`; everything here is pure
(no Redis, no processes) apart from writing the PNG and the README, so the unit tests can feed
it numbers.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

SIZE = re.compile(r"(\d{1,9})([kKmM]?)")
SUFFIX = {"": 1, "k": 1000, "m": 1_000_000}

# label, curve, field, unit, systems that have it. Cells for peers are `value (qdeploy / peer)`.
ROWS = [
    ("Redis memory per waiting task (bytes)", "memory", "per_task", "bytes"),
    ("ETA: worker master RSS, n scheduled (MiB)", "eta", "master_rss_mib", "mib"),
    ("ETA: Redis time per promoted task, reserve script (µs)", "eta", "redis_us_per_task", "us"),
    ("ETA: of which the ETA set, ZRANGEBYSCORE + ZREM (µs)", "eta", "zset_us_per_task", "us"),
    ("ETA: one ZRANGEBYSCORE of the reserve script (µs)", "eta", "zrange_us_per_call", "us"),
    ("ETA: due tasks run with n scheduled (tasks/s)", "eta", "rate", "rate"),
    ("nodes: Redis CPU share (%)", "nodes", "cpu_pct", "pct"),
    ("nodes: Redis commands/s", "nodes", "commands_per_s", "rate"),
    ("nodes: of which dead-node sweeps, EXISTS + HGETALL (commands/s)", "nodes", "sweep_commands_per_s", "rate"),
    ("nodes: Redis CPU of the dead-node sweeps (% of a core)", "nodes", "sweeps_cpu_pct", "pct"),
    ("nodes: Redis CPU of the idle consumers' polling (% of a core)", "nodes", "polling_cpu_pct", "pct"),
    ("nodes: Redis CPU of beats, leases, control (% of a core)", "nodes", "beats_cpu_pct", "pct"),
    ("nodes: `qdeploy status` wall (s)", "nodes", "status_s", "s"),
    ("nodes: `qdeploy inspect stats` wall (s)", "nodes", "inspect_s", "s"),
    ("nodes: status, in-process call (ms)", "nodes", "status_call_ms", "ms"),
    ("nodes: inspect stats, in-process call (ms)", "nodes", "inspect_call_ms", "ms"),
    ("nodes: control ping, in-process call (ms)", "nodes", "ping_call_ms", "ms"),
    ("`qdeploy render --nodes N` wall (s)", "render", "seconds", "s"),
]
SIZE_NAMES = {"memory": "queued tasks", "eta": "scheduled tasks", "nodes": "nodes", "render": "nodes"}


def parse_sizes(text: str, what: str, low: int, high: int) -> list[int]:
    """'10k,100k,1M' -> [10000, 100000, 1000000]: increasing, each in [low, high]; else one line."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: expected a comma list of sizes such as 10k,100k,1M, got {text!r}")
    out = []
    for part in text.split(","):
        match = SIZE.fullmatch(part.strip())
        if not match:
            shown = part if len(part) <= 20 and part.isprintable() else repr(part[:20]) + "..."
            raise ValueError(f"{what}: {shown!r} is not a size (a whole number, optionally with k or M)")
        value = int(match.group(1)) * SUFFIX[match.group(2).lower()]
        if not low <= value <= high:
            raise ValueError(f"{what}: {value} is out of range (expected {low} to {high})")
        out.append(value)
    if out != sorted(set(out)):
        raise ValueError(f"{what}: sizes must be increasing and distinct, got {text!r}")
    return out


def short(n: int) -> str:
    """10000 -> '10k', 1000000 -> '1M', 50 -> '50'."""
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def summary(runs: list[dict], field: str) -> dict | None:
    """Median, min, max and count of `field` over the runs that have it (no error, a number)."""
    values = [r[field] for r in runs if "error" not in r and isinstance(r.get(field), (int, float))
              and not isinstance(r.get(field), bool) and math.isfinite(r[field])]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def points(curves: dict, curve: str, system: str, field: str) -> list[tuple[int, dict]]:
    """[(size, summary)] in increasing size, sizes without a value left out."""
    out = []
    for size, cell in (curves.get(curve, {}).get(system) or {}).items():
        s = summary(cell.get("runs", []), field)
        if s is not None:
            out.append((int(size), s))
    return sorted(out)


def exponent(n1: float, v1: float, n2: float, v2: float) -> float | None:
    """The local growth exponent b of v ~ n^b between two points: ~0 flat (or log n), ~1 linear,
    ~2 quadratic. None when a value is not positive or the sizes are equal."""
    if min(n1, n2, v1, v2) <= 0 or n1 == n2:
        return None
    return math.log(v2 / v1) / math.log(n2 / n1)


def within_log(pts: list[tuple[int, float]], slack: float = 2.0) -> bool | None:
    """True when the cost grows no faster than log n from the smallest size to the largest:
    c_last / c_first <= `slack` x log(n_last) / log(n_first). Judged end to end, not step by
    step: a cost of a few µs measured on a shared machine moves by ±30 % between neighbours,
    while over 10k -> 1M an O(log n) cost grows 1.5x, an O(sqrt n) one 10x and an O(n) one
    100x. None with fewer than 2 points or a size below 2."""
    if len(pts) < 2:
        return None
    (n1, c1), (n2, c2) = pts[0], pts[-1]
    if n1 < 2 or c1 <= 0 or n2 <= n1:
        return None
    return c2 / c1 <= slack * math.log(n2) / math.log(n1)


def flat(values: list[float], tolerance: float = 0.10) -> bool | None:
    """True when the largest value is at most (1 + tolerance) × the smallest."""
    values = [v for v in values if v is not None]
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) <= (1 + tolerance) * min(values)


def fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("rate", "bytes"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit in ("ms", "us", "pct"):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value:.1f}"


def cell(s: dict | None, unit: str, ours: dict | None = None) -> str:
    if s is None:
        return "—"
    text = fmt(s["median"], unit)
    if s["n"] > 1 and s["median"]:
        text += f" ±{100 * (s['max'] - s['min']) / 2 / s['median']:.0f}%"
    if ours is not None and s["median"]:
        text += f" ({ours['median'] / s['median']:.2f}×)"
    return text


def table(curves: dict, sizes: dict[str, list[int]]) -> str:
    """One markdown table: a row per (measure, system), a column per size (sizes in the label)."""
    width = max((len(v) for v in sizes.values()), default=0)
    head = ["measure (sizes)", "system"] + [f"size {k + 1}" for k in range(width)] + ["last / first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, curve, field, unit in ROWS:
        wanted = sizes.get(curve) or []
        systems = list(curves.get(curve, {}))
        systems.sort(key=lambda k: (k != "qdeploy", k))
        first = True
        for system in systems:
            pts = dict(points(curves, curve, system, field))
            if not pts:
                continue
            ours = dict(points(curves, curve, "qdeploy", field)) if system != "qdeploy" else {}
            cells = [cell(pts.get(n), unit, ours.get(n) if system != "qdeploy" else None) for n in wanted]
            cells += [""] * (width - len(cells))
            known = [pts[n]["median"] for n in wanted if n in pts]
            ratio = f"{known[-1] / known[0]:.2f}×" if len(known) > 1 and known[0] else "—"
            name = f"{label} ({' / '.join(short(n) for n in wanted)} {SIZE_NAMES[curve]})" if first else ""
            lines.append("| " + " | ".join([name, system] + cells + [ratio]) + " |")
            first = False
    return "\n".join(lines)


def verdicts(curves: dict) -> list[str]:
    """The issue's "must"s, judged on the medians of this run."""
    out = []
    rss = points(curves, "eta", "qdeploy", "master_rss_mib")
    if rss:
        ok = flat([s["median"] for _, s in rss])
        span = f"{rss[0][1]['median']:.1f} → {rss[-1][1]['median']:.1f} MiB from {short(rss[0][0])} to {short(rss[-1][0])}"
        out.append(f"ETA, qdeploy worker memory flat (≤ +10 %): {span} — "
                   + ("met" if ok else "**missed**" if ok is False else "not judged"))
    celery = points(curves, "eta", "celery", "master_rss_mib")
    held = dict(points(curves, "eta", "celery", "held"))
    if len(celery) > 1:
        (n1, a), (n2, b) = celery[0], celery[-1]
        h1, h2 = held.get(n1, {}).get("median", n1), held.get(n2, {}).get("median", n2)
        per = (b["median"] - a["median"]) * 2**20 / (h2 - h1) if h2 > h1 else None
        out.append(f"ETA, Celery worker memory: {a['median']:.0f} → {b['median']:.0f} MiB from {short(n1)} to "
                   f"{short(n2)} scheduled" + (f" (~{per:,.0f} bytes per ETA task held in the worker)" if per else ""))
    for field, what in (("redis_us_per_task", "reserve script"), ("zset_us_per_task", "ETA set alone")):
        out += _log_verdict(curves, field, what)
    for field, what in (("cpu_pct", "Redis CPU share"), ("commands_per_s", "Redis commands/s"),
                        ("sweep_commands_per_s", "dead-node sweeps' commands/s"),
                        ("sweeps_cpu_pct", "Redis CPU of the sweeps"), ("polling_cpu_pct", "Redis CPU of idle polling"),
                        ("inspect_call_ms", "inspect stats (in-process)"), ("status_call_ms", "status (in-process)"),
                        ("ping_call_ms", "control ping (in-process)")):
        pts = points(curves, "nodes", "qdeploy", field)
        if len(pts) > 1:
            steps = [exponent(n1, a["median"], n2, b["median"]) for (n1, a), (n2, b) in zip(pts, pts[1:], strict=False)]
            shown = ", ".join(f"{short(n1)}→{short(n2)}: n^{e:.2f}" if e is not None else f"{short(n1)}→{short(n2)}: —"
                              for ((n1, _), (n2, _)), e in zip(zip(pts, pts[1:], strict=False), steps, strict=True))
            out.append(f"nodes, {what} grows as {shown}")
    return out


def _log_verdict(curves: dict, field: str, what: str) -> list[str]:
    cost = [(n, s["median"]) for n, s in points(curves, "eta", "qdeploy", field)]
    if not cost:
        return []
    ok = within_log(cost)
    steps = ", ".join(f"{short(n)}: {c:.2f} µs" for n, c in cost)
    (n1, c1), (n2, c2) = cost[0], cost[-1]
    bound = f"{2 * math.log(n2) / math.log(n1):.2f}×" if n1 >= 2 and n2 > n1 else "—"
    grew = f"{c2 / c1:.2f}×" if c1 > 0 else "—"
    return [f"ETA, cost per promoted task ({what}) within O(log n) ({short(n1)} → {short(n2)}: grew {grew}, "
            f"bound 2 × the log ratio = {bound}; O(n) would be {n2 / n1:,.0f}×): {steps} — "
            + ("met" if ok else "**missed**" if ok is False else "not judged")]


PANELS = [  # title, curve, [(field, label suffix)], log y, y from 0
    ("Redis bytes per waiting task", "memory", [("per_task", "")], False, True),
    ("ETA: worker master RSS (MiB), n scheduled", "eta", [("master_rss_mib", "")], True, False),
    ("ETA: Redis µs per promoted task", "eta", [("redis_us_per_task", "reserve script"),
                                                ("zset_us_per_task", "ETA set part")], False, True),
    ("ETA: due tasks/s with n scheduled", "eta", [("rate", "")], False, True),
    ("nodes: Redis CPU share (% of a core)", "nodes", [("cpu_pct", "all"), ("sweeps_cpu_pct", "dead-node sweeps"),
                                                      ("polling_cpu_pct", "idle polling"), ("beats_cpu_pct", "beats, leases")],
     True, False),
    ("nodes: CLI wall, fresh process (s)", "nodes", [("status_s", "status"), ("inspect_s", "inspect stats")], False, True),
    ("nodes: in-process call (ms)", "nodes", [("status_call_ms", "status"), ("inspect_call_ms", "inspect stats"),
                                              ("ping_call_ms", "control ping")], False, True),
    ("render --nodes N: wall (s)", "render", [("seconds", "")], False, True),
]


def plot(curves: dict, sizes: dict[str, list[int]], path: Path, caption: str) -> None:
    """Eight panels (log-scaled sizes), one line per system and measure, error bars = min..max
    of the repeats; the ETA cost panel carries an O(log n) guide through qdeploy's first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    for ax, (title, curve, fields, logy, zero) in zip(axes.flat, PANELS, strict=False):
        for system in sorted(curves.get(curve, {}), key=lambda k: (k != "qdeploy", k)):
            for f, name in fields:
                pts = points(curves, curve, system, f)
                if not pts:
                    continue
                xs = [n for n, _ in pts]
                ys = [s["median"] for _, s in pts]
                err = [[s["median"] - s["min"] for _, s in pts], [s["max"] - s["median"] for _, s in pts]]
                label = " ".join(x for x in (system if len(curves.get(curve, {})) > 1 or not name else "", name) if x)
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label or system)
                if f == "zset_us_per_task" and system == "qdeploy" and len(pts) > 1 and xs[0] >= 2:
                    guide = [ys[0] * math.log(n) / math.log(xs[0]) for n in xs]
                    ax.plot(xs, guide, ls="--", color="grey", lw=1, label="O(log n) from the first point")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        elif zero:
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-9))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(SIZE_NAMES[curve])
        ticks = sizes.get(curve) or []
        ax.set_xticks(ticks)
        ax.set_xticklabels([short(n) for n in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    fig.text(0.01, 0.005, caption, fontsize=8, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def readme_block(doc: dict) -> str:
    m, load = doc["machine"], doc["load"]
    lines = [
        "<!-- growth:start (written by bench/run.py --growth) -->",
        f"Latest run: {doc['date']}, `python bench/run.py {' '.join(doc['argv'])}`.".replace("  ", " "),
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, redis-server {m['redis']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        f"Load average (1 min) while measuring: {load['min']:.2f}-{load['max']:.2f}, median {load['median']:.2f} "
        f"({load['n']} samples, one before each measurement; 2 cores shared with other engineers).",
    ]
    if len(doc.get("runs") or []) > 1:
        lines.append("Measured in " + "; ".join(f"{r['date']} ({', '.join(r['curves'])}; load {r['load']['min']:.2f}-"
                                               f"{r['load']['max']:.2f})" for r in doc["runs"]) + ".")
    if doc.get("reference"):
        lines.append(doc["reference"])
    lines += ["Cells are medians of the repeats, ±half their spread; peers' cells are `value (qdeploy / peer)`.", "",
              doc["table"], "",
              f"![growth curves]({doc['plot']})" if doc.get("plot", "growth.png")
              else "(no plot: matplotlib, of the `bench` extra, is not installed)", "", "Verdicts:", ""]
    lines += [f"- {v}" for v in doc["verdicts"]] or ["- none (nothing measured)"]
    if doc.get("notes"):
        lines += ["", "Notes from this run:", ""] + [f"- {n}" for n in doc["notes"]]
    lines.append("<!-- growth:end -->")
    return "\n".join(lines)


def update_readme(path: Path, block: str) -> None:
    """Replace the growth block in README.md (or append one)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = text.find("<!-- growth:start"), text.find("<!-- growth:end -->")
    if start < 0 or end < start:
        text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len("<!-- growth:end -->"):]
    path.write_text(text)
