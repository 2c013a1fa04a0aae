#!/usr/bin/env python3
"""The task history with 1,000,000 records: how long it takes to fill, and to search.

    python bench/history_search.py                  # 1,000,000 records, each search 7 times
    python bench/history_search.py --records 200000 --repeats 3

A private redis-server (never the one on 6379) is filled through the history's own Lua script
(`qdeploy/ops/history.lua`, batches of 2000 records as a worker master writes them): 60 task
names, 8 nodes, 90 % SUCCESS / 6 % FAILURE / 3 % RETRY / 1 % STARTED, start times spread over
24 hours, arguments kept. Then each search of SEARCHES runs `--repeats` times through
`history_search.search`, the function the dashboard calls, and the median and the worst time are
printed (the target: under 200 ms). Not a test: a measurement, like the rest of bench/.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import RedisServer

from qdeploy.core.connection import connect
from qdeploy.ops import history
from qdeploy.ops.history_search import Query, search

NAMES = [f"proj.{area}.{verb}" for area in ("mail", "images", "billing", "reports", "search", "sync")
         for verb in ("send", "resize", "charge", "render", "index", "pull", "push", "clean", "audit", "notify")]
NODES = [f"w{i}@host{i % 3}" for i in range(1, 9)]
TARGET_MS = 200.0


def records(n: int, now: float, seed: int = 22):
    rnd = random.Random(seed)
    for i in range(n):
        started = now - 86400 + 86400 * i / n
        roll = rnd.random()
        state = "SUCCESS" if roll < 0.90 else "FAILURE" if roll < 0.96 else "RETRY" if roll < 0.99 else "STARTED"
        name = NAMES[int(rnd.paretovariate(1.2)) % len(NAMES)]
        rec = {"id": f"{i:08x}-{rnd.getrandbits(32):08x}-4000-8000-{rnd.getrandbits(48):012x}", "name": name,
               "state": state, "queue": "default", "node": NODES[i % len(NODES)], "pid": 1000 + i % 50,
               "received": started, "started": started, "retries": 0, "sent": started - 0.01,
               "call": json.dumps([[i, f"user{i % 5000}@example.com"], {"priority": i % 3}], separators=(",", ":"))}
        if state != "STARTED":
            runtime = rnd.lognormvariate(-3, 1.5)
            rec.update(done=started + runtime, runtime=runtime)
        if state == "FAILURE":
            rec["exc"] = "ValueError: no such user"
        yield rec


def fill(store: history.HistoryStore, n: int, now: float) -> float:
    start = time.perf_counter()
    batch: list = []
    for rec in records(n, now):
        batch.append(history.encode(rec))
        if len(batch) == 2000:
            store.add([(batch, [])])
            batch = []
    if batch:
        store.add([(batch, [])])
    return time.perf_counter() - start


def searches(store: history.HistoryStore, now: float) -> list[tuple[str, Query]]:
    some = store.client.zrevrange(store.keys.time, 12345, 12345)[0].decode()
    return [
        ("newest 50, no filter", Query()),
        ("page 101 (offset 5000), no filter", Query(offset=5000)),
        ("by id", Query(q=some)),
        ("name contains 'mail.send'", Query(q="mail.send")),
        ("name contains 'send' (6 names)", Query(q="send")),
        ("state FAILURE", Query(states=("FAILURE",))),
        ("node w3 + state FAILURE", Query(node="w3@host0", states=("FAILURE",))),
        ("name 'billing' + FAILURE + last hour", Query(q="billing", states=("FAILURE",), since=now - 3600)),
        ("time range 2 h, 6 h ago", Query(since=now - 6 * 3600, until=now - 4 * 3600)),
        ("slowest first", Query(sort="-runtime")),
        ("slowest of 'images' in the last hour", Query(q="images", sort="-runtime", since=now - 3600)),
        ("FAILURE or RETRY, oldest first", Query(states=("FAILURE", "RETRY"), sort="started")),
        ("arguments contain 'user4242@'", Query(args="user4242@")),
        ("rare: STARTED on node w5 named 'sync.audit'", Query(q="sync.audit", node="w5@host2", states=("STARTED",))),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    redis = RedisServer()
    try:
        client = connect(redis.url)
        store = history.HistoryStore(client, "bench", cap=args.records)
        now = time.time()
        seconds = fill(store, args.records, now)
        memory = client.info("memory")["used_memory"]
        print(f"filled {store.count():,} records in {seconds:.1f} s ({args.records / seconds:,.0f} records/s "
              f"through history.lua); Redis used_memory {memory / 2**20:,.0f} MiB "
              f"({memory / args.records:,.0f} bytes per record); redis-server {redis.version}")
        worst_all = 0.0
        for label, query in searches(store, now):
            times, page = [], None
            for _ in range(args.repeats):
                page = search(store, query)
                times.append(page.took_ms)
            assert page is not None
            worst_all = max(worst_all, statistics.median(times))
            total = f"{page.total:,}{'' if page.exact else '+'}"
            print(f"  {label:45} median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms  "
                  f"rows {len(page.rows):3}  total {total:>10}  scanned {page.scanned:>7,}"
                  f"{'  PARTIAL' if page.partial else ''}")
        verdict = "met" if worst_all < TARGET_MS else "MISSED"
        print(f"slowest median {worst_all:.1f} ms: target < {TARGET_MS:.0f} ms {verdict}")
        return 0 if worst_all < TARGET_MS else 1
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
