"""Cost of the live auditor path to the controller's writes.

While a session runs, auditors' queries execute on a cursor of the controller's own DuckDB
connection (the file admits no second process). This measures single-event append latency
(what the session loop pays per event) with no reader, then with a reader thread running the
canned report/status queries back to back on a cursor, as `charter ledger query` does.

    python bench/live_path.py [--events 200000] [--appends 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Draft, EventKind, Ledger  # noqa: E402
from ledger.query import run_readonly_query  # noqa: E402

QUERIES = [
    "select session from sessions order by started desc limit 1",
    "select experiment, decision, val_bpb from experiments where session = 's0' order by seq",
    "select resource, used, \"limit\" from budgets where session = 's0'",
    "select * from gate_transitions order by seq desc limit 1",
    "select count(*) from events",
]


def fill(led: Ledger, n: int) -> None:
    batch = []
    for i in range(n):
        s = f"s{i // 400}"
        k = i % 4
        if k == 0:
            batch.append(Draft(EventKind.PROPOSED, "controller", s, {"description": f"exp {i}", "source": "offline"}, experiment=i))
        elif k == 1:
            batch.append(Draft(EventKind.TRAINING_FINISHED, "controller", s, {"wall_seconds": 61.0}, experiment=i - 1))
        elif k == 2:
            batch.append(Draft(EventKind.EVALUATED, "controller", s, {"wall_seconds": 3.0}, experiment=i - 2, val_bpb=1.8))
        else:
            batch.append(Draft(EventKind.DECIDED, "controller", s, {"decision": "discard", "reason": "r"}, experiment=i - 3, decision="discard", val_bpb=1.8))
        if len(batch) == 10_000:
            led.append_many(batch)
            batch = []
    if batch:
        led.append_many(batch)


def time_appends(led: Ledger, count: int) -> list[float]:
    out = []
    for i in range(count):
        t = time.perf_counter()
        led.append(EventKind.NOTE, actor="controller", session="s0", payload={"text": f"tick {i}"})
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--appends", type=int, default=300)
    args = ap.parse_args()
    path = Path(tempfile.mkdtemp(prefix="charter-live-")) / "ledger.duckdb"
    with Ledger.open(path) as led:
        fill(led, args.events)
        alone = time_appends(led, args.appends)
        stop = threading.Event()
        answered = [0]

        def reader() -> None:
            cur = led.cursor()
            while not stop.is_set():
                for q in QUERIES:
                    run_readonly_query(cur, q)
                    answered[0] += 1
            cur.close()

        th = threading.Thread(target=reader)
        th.start()
        time.sleep(0.5)
        busy = time_appends(led, args.appends)
        stop.set()
        th.join()
        ok = led.verify().ok

    def row(name: str, xs: list[float]) -> str:
        q = statistics.quantiles(xs, n=100)
        return f"| {name} | {statistics.median(xs):.1f} | {q[94]:.1f} | {q[98]:.1f} | {max(xs):.1f} |"

    print(f"ledger: {args.events:,} events; {args.appends} single appends each way; reader answered {answered[0]} queries; chain ok: {ok}")
    print("| appends | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    print(row("no reader", alone))
    print(row("reader looping on a cursor", busy))


if __name__ == "__main__":
    main()
