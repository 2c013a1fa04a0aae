"""Server-side SVG charts: throughput and failures per minute, queue depth over time, run-time
percentiles per task. No charting library and no script: plain SVG the page shows in <img>
(so nothing in it can run), every text from Redis escaped for XML. Offline by construction."""

from __future__ import annotations

import math
import time
from html import escape

W, H = 900, 240  # the viewBox; the page scales it to its column
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 28
COLOURS = {"success": "#2e8540", "retry": "#c77c02", "failure": "#c0392b"}
LINES = ("#1f6fb2", "#8e44ad", "#16a085", "#d35400", "#2c3e50", "#c0392b", "#7f8c8d", "#27ae60")
MAX_SERIES = 8


def _svg(title: str, body: list[str], height: int = H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="12">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _nice(top: float) -> float:
    """A round upper bound for an axis (1, 2, 5 x 10^k)."""
    if top <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if top <= step * exp:
            return step * exp
    return 10 * exp


def _axes(top: float, t0: float, t1: float, height: int = H, unit: str = "") -> list[str]:
    out = [f'<rect x="0" y="0" width="{W}" height="{height}" fill="#ffffff"/>']
    plot_h = height - TOP - BOTTOM
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e3e7eb"/>')
        label = f"{value:g}{unit}" if value < 1000 else f"{value / 1000:g}k{unit}"
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#556">{escape(label)}</text>')
    span = max(t1 - t0, 1)
    for i in range(6):
        t = t0 + span * i / 5
        x = LEFT + (W - LEFT - RIGHT) * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"  # the ends stay inside the chart
        out.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="{anchor}" fill="#556">'
                   f'{escape(time.strftime("%H:%M", time.localtime(t)))}</text>')
    return out


def throughput(series: list[dict], only: str | None = None) -> str:
    """Stacked bars per minute: succeeded, retried, failed (or one of them: `only`)."""
    kinds = [only] if only else ["success", "retry", "failure"]
    title = "failures per minute" if only == "failure" else "tasks finished per minute"
    if not series:
        return _svg(title, _axes(1, time.time() - 3600, time.time()) + [_empty()])
    totals = [sum(row.get(k, 0) for k in kinds) for row in series]
    top = _nice(max(totals))
    t0, t1 = series[0]["t"], series[-1]["t"] + 60
    body = _axes(top, t0, t1)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    bar = plot_w / len(series)
    for i, row in enumerate(series):
        y = TOP + plot_h
        for kind in kinds:
            n = row.get(kind, 0)
            if n:
                h = plot_h * n / top
                y -= h
                body.append(f'<rect x="{LEFT + i * bar:.2f}" y="{y:.2f}" width="{max(bar - 0.5, 0.5):.2f}" '
                            f'height="{h:.2f}" fill="{COLOURS[kind]}"><title>{n} {kind}</title></rect>')
    if not any(totals):
        body.append(_empty())
    return _svg(title, body + _legend(kinds, [COLOURS[k] for k in kinds]))


def queues(samples: list[dict], hours: float, fields: tuple[str, ...] = ("ready", "in_flight", "scheduled")) -> str:
    """Per queue over time, one line per queue: the sum of `fields` of each sample (waiting
    messages by default; ("dead",) for the dead letters)."""
    now = time.time()
    t0 = now - hours * 3600
    names: dict[str, list[tuple[float, int]]] = {}
    for sample in samples:
        for q in sample.get("q") or []:
            if not isinstance(q, dict) or not isinstance(q.get("queue"), str):
                continue
            depth = sum(v for v in (q.get(f) for f in fields) if isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            names.setdefault(q["queue"], []).append((float(sample["t"]), depth))
    chosen = sorted(names, key=lambda n: -max(d for _, d in names[n]))[:MAX_SERIES]
    top = _nice(max((d for n in chosen for _, d in names[n]), default=0))
    body = _axes(top, t0, now)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    for colour, name in zip(LINES, chosen, strict=False):
        points = " ".join(f"{LEFT + plot_w * (t - t0) / (now - t0):.1f},{TOP + plot_h - plot_h * d / top:.1f}"
                          for t, d in sorted(names[name]) if t0 <= t <= now)
        if points:
            body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
                        f"<title>{escape(name)}</title></polyline>")
    if not chosen:
        body.append(_empty("no samples yet (the dashboard records queue depths while it runs)"))
    what = "dead letters" if fields == ("dead",) else " + ".join(f.replace("_", " ") for f in fields)
    return _svg(f"queue depth ({what})", body + _legend(chosen, LINES))


def runtimes(rows: list[dict]) -> str:
    """Per task name: p50, p90 and p99 of its run times, as bars on a log scale."""
    rows = rows[:15]
    height = TOP + BOTTOM + 22 * max(len(rows), 1) + 20
    body = [f'<rect x="0" y="0" width="{W}" height="{height}" fill="#ffffff"/>']
    if not rows:
        return _svg("run-time percentiles per task", body + [_empty(y=height / 2)], height)
    values = [r[k] for r in rows for k in ("p50", "p90", "p99") if isinstance(r.get(k), (int, float)) and r[k] > 0]
    low, high = 10 ** math.floor(math.log10(min(values or [0.001]))), _nice(max(values or [1]))
    name_w, plot_w = 260, W - 260 - RIGHT - 60

    def x(v: float) -> float:
        return name_w + plot_w * (math.log10(max(v, low)) - math.log10(low)) / max(math.log10(high / low), 1e-9)

    for i, row in enumerate(rows):
        y = TOP + 22 * i
        name = str(row.get("name"))
        shown = name if len(name) <= 34 else name[:33] + "…"  # ~7 px a character: fits name_w
        body.append(f'<text x="{name_w - 8}" y="{y + 14}" text-anchor="end" fill="#1d2733">{escape(shown)}'
                    f"<title>{escape(name)}</title></text>")
        for key, colour, h in (("p99", "#f5b7b1", 16), ("p90", "#f0b27a", 12), ("p50", "#1f6fb2", 8)):
            v = row.get(key)
            if isinstance(v, (int, float)) and v > 0:
                body.append(f'<rect x="{name_w}" y="{y + (18 - h) / 2:.1f}" width="{max(x(v) - name_w, 1):.1f}" '
                            f'height="{h}" fill="{colour}"><title>{key} {_seconds(v)}</title></rect>')
        p99 = row.get("p99")
        if isinstance(p99, (int, float)):
            body.append(f'<text x="{x(p99) + 4:.1f}" y="{y + 14}" fill="#556">{escape(_seconds(p99))}</text>')
    axis_y = TOP + 22 * len(rows) + 10
    decade = low
    while decade <= high * 1.0001:
        body.append(f'<text x="{x(decade):.1f}" y="{axis_y + 6}" text-anchor="middle" fill="#556">'
                    f"{escape(_seconds(decade))}</text>")
        decade *= 10
    return _svg("run-time percentiles per task (p50, p90, p99)", body + _legend(["p50", "p90", "p99"],
                ["#1f6fb2", "#f0b27a", "#f5b7b1"], height), height)


def _seconds(v: float) -> str:
    return f"{v * 1000:.3g} ms" if v < 1 else f"{v:.3g} s"


def _legend(labels, colours, height: int = H) -> list[str]:
    out, x = [], LEFT
    for label, colour in zip(labels, colours, strict=False):
        shown = str(label) if len(str(label)) <= 24 else str(label)[:23] + "…"
        out.append(f'<rect x="{x}" y="2" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="11" fill="#1d2733">{escape(shown)}</text>')
        x += 24 + 7 * len(shown)
    return out


def _empty(text: str = "no tasks in this period", y: float = H / 2) -> str:
    return f'<text x="{W / 2}" y="{y}" text-anchor="middle" fill="#778">{escape(text)}</text>'
