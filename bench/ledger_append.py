"""Ledger benchmark: single and batched append rates, and verify time for a 1M-event ledger.

Run from the repository root: `python bench/ledger_append.py` (options: --events, --batch,
--single, --repeats). Builds its ledgers in a temporary folder and deletes them afterwards. Prints a
markdown table; the figures go in docs/benchmarks.md. Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import GENESIS_HASH, Decision, Draft, EventKind, Ledger  # noqa: E402
from ledger.record import seal_batch, utc_now  # noqa: E402


def drafts(n: int) -> list[Draft]:
    """Events shaped like the controller's: small payloads, a few typed fields."""
    return [
        Draft(
            kind=EventKind.EVALUATED,
            actor="controller",
            session="bench-session",
            payload={"note": "val_bpb from the trusted evaluator", "step": i, "tokens": 131072, "ok": True},
            experiment=i,
            decision=Decision.KEEP if i % 5 == 0 else None,
            val_bpb=1.7 + (i % 1000) / 1e4,
            commit_sha="0123456789abcdef0123456789abcdef01234567",
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the ledger to build and verify")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1_000, help="number of single appends to time")
    parser.add_argument("--repeats", type=int, default=3, help="batched runs, each on a fresh file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        with Ledger.open(Path(tmp) / "single.duckdb") as led:
            start = time.perf_counter()
            for i in range(args.single):
                led.append(EventKind.NOTE, actor="controller", session="bench", payload={"i": i})
            elapsed = time.perf_counter() - start
        rows.append(("single append (one commit each)", f"{args.single / elapsed:,.0f} events/s",
                     f"{args.single} appends"))

        # This VM's speed drifts by +-20% from minute to minute, so the batched run is repeated
        # on fresh files and the median run is reported, with the others beside it.
        batch = drafts(args.batch)
        batches = max(1, args.events // args.batch)
        total = batches * args.batch
        runs = []  # (events/s, events/s incl. close, median batch s, slowest batch s, close s)
        for attempt in range(args.repeats):
            path = Path(tmp) / f"big-{attempt}.duckdb"
            led = Ledger.open(path)
            times = []
            start = time.perf_counter()
            for _ in range(batches):
                t = time.perf_counter()
                led.append_many(batch)
                times.append(time.perf_counter() - t)
            appended = time.perf_counter() - start
            led.close()
            closed = time.perf_counter() - start
            runs.append((total / appended, total / closed, statistics.median(times), max(times), closed - appended))
            if attempt + 1 < args.repeats:
                path.unlink()
        middle = sorted(runs)[len(runs) // 2]
        others = ", ".join(f"{r[0]:,.0f}" for r in runs)
        rows.append((f"batched append (batch {args.batch:,})", f"{middle[0]:,.0f} events/s",
                     f"{total:,} events, median of {len(runs)} runs ({others}); slowest batch "
                     f"{middle[3] * 1000:.0f} ms"))
        rows.append(("batched append incl. final close", f"{middle[1]:,.0f} events/s",
                     f"close (checkpoint) {middle[4]:.2f} s; file {path.stat().st_size / 2**20:.0f} MiB"))
        rows.append(("one batch between checkpoints (median batch)", f"{args.batch / middle[2]:,.0f} events/s",
                     "steady state without DuckDB's checkpoints; not the headline figure"))

        # Split of one batch's cost: sealing alone (validate, bodies, chain, Event tuples), timed
        # on the same drafts as the appends around it; the rest of an append is Arrow + DuckDB.
        with Ledger.open(Path(tmp) / "split.duckdb") as led:
            seal_s, append_s = [], []
            for _ in range(20):
                seq, prev_hash = led.head() or (0, GENESIS_HASH)
                t = time.perf_counter()
                seal_batch(batch, seq + 1, prev_hash, utc_now()).events()
                seal_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                led.append_many(batch)
                append_s.append(time.perf_counter() - t)
        per_event = 1e6 / args.batch
        sealing, appending = statistics.median(seal_s) * per_event, statistics.median(append_s) * per_event
        rows.append(("split of one batch (median of 20)", f"{appending:.1f} us/event",
                     f"sealing in Python {sealing:.1f} us, Arrow + DuckDB insert and commit "
                     f"{appending - sealing:.1f} us"))

        with Ledger.open(path, read_only=True) as led:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                result = led.verify(anchor=led.head())
                times.append(time.perf_counter() - t)
                assert result.ok, result.problem
        rows.append((f"verify, {total:,} events", f"{min(times):.2f} s (best of 3)",
                     "runs: " + ", ".join(f"{t:.2f}" for t in times) + " s"))

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print()
    print("| measure | result | detail |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
