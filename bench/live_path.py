"""Cost of the live channel to the controller's writes.

While a session runs, auditors' queries execute on a cursor of the controller's own DuckDB
connection (the file admits no second process), reached through the controller's socket. This
measures single-event append latency (what the session loop pays per event) with no reader; with
a thread running the canned report/status queries back to back on a cursor (the floor); with a
client sending them through a real `LiveServer` on its Unix socket, as `charter ledger query`
does; and with a client watching every event through the socket, as the TUI will.

    python bench/live_path.py [--events 200000] [--appends 300]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.live.client import LiveClient  # noqa: E402
from controller.live.protocol import EventsFrame  # noqa: E402
from controller.live.server import LiveServer  # noqa: E402
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


class BenchSource:
    """The LiveSource parts a reader and a watcher use, over the bench's ledger: each append wakes
    the watcher, as the session's recorder does. Status and commands are not measured here."""

    def __init__(self, led: Ledger):
        self.led = led
        self.new_event = threading.Condition()
        self.head = led.head()[0] if led.head() else 0

    def append(self, i: int) -> None:
        ev = self.led.append(EventKind.NOTE, actor="controller", session="s0", payload={"text": f"tick {i}"})
        with self.new_event:
            self.head = ev.seq
            self.new_event.notify_all()

    def events_after(self, seq: int, limit: int):
        return self.led.events(seq)[:limit]

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        with self.new_event:
            self.new_event.wait_for(lambda: self.head > after_seq, timeout=timeout)
            return self.head

    def cursor(self):
        return self.led.cursor()

    def status(self):
        raise NotImplementedError("not measured")

    def note(self, by: str, text: str) -> int:
        raise NotImplementedError("not measured")

    def command(self, op: str, by: str, reason: str) -> dict:
        raise NotImplementedError("not measured")


def time_appends(source: BenchSource, count: int) -> list[float]:
    out = []
    for i in range(count):
        t = time.perf_counter()
        source.append(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def while_running(work, source: BenchSource, count: int) -> tuple[list[float], int]:
    """Append latencies while `work(stop, counter)` runs in a thread; and how much it did."""
    stop = threading.Event()
    done = [0]
    th = threading.Thread(target=work, args=(stop, done))
    th.start()
    time.sleep(0.5)
    times = time_appends(source, count)
    stop.set()
    th.join()
    return times, done[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--appends", type=int, default=300)
    args = ap.parse_args()
    # a short folder: a Unix socket's path must fit in 108 bytes
    state = Path(tempfile.mkdtemp(prefix="charter-live-", dir="/tmp"))
    with Ledger.open(state / "ledger.duckdb") as led:
        fill(led, args.events)
        source = BenchSource(led)
        rows = [("no reader", time_appends(source, args.appends), "")]

        def on_cursor(stop: threading.Event, done: list[int]) -> None:
            cur = led.cursor()
            while not stop.is_set():
                for q in QUERIES:
                    run_readonly_query(cur, q)
                    done[0] += 1
            cur.close()

        def through_socket(stop: threading.Event, done: list[int]) -> None:
            client = LiveClient(state)
            while not stop.is_set():
                for q in QUERIES:
                    client.query(q)
                    done[0] += 1

        def watching(stop: threading.Event, done: list[int]) -> None:
            with LiveClient(state).watch(after_seq=led.head()[0]) as watch:
                stopper = threading.Thread(target=lambda: (stop.wait(), watch.close()))
                stopper.start()
                for frame in watch:
                    if isinstance(frame, EventsFrame):
                        done[0] += len(frame.events)
                stopper.join()

        server = LiveServer(state, source)
        server.start()
        try:
            for name, work, unit in [("reader looping on a cursor", on_cursor, "queries"),
                                     ("auditor looping through the socket", through_socket, "queries"),
                                     ("watcher streaming through the socket", watching, "events")]:
                times, done = while_running(work, source, args.appends)
                rows.append((name, times, f"{done} {unit}"))
        finally:
            server.close()
        ok = led.verify().ok
    shutil.rmtree(state, ignore_errors=True)

    def row(name: str, xs: list[float], did: str) -> str:
        q = statistics.quantiles(xs, n=100)
        return f"| {name} | {statistics.median(xs):.1f} | {q[94]:.1f} | {q[98]:.1f} | {max(xs):.1f} | {did} |"

    print(f"ledger: {args.events:,} events; {args.appends} single appends per row; chain ok: {ok}")
    print("| appends | p50 ms | p95 ms | p99 ms | max ms | the other side did |")
    print("|---|---|---|---|---|---|")
    for name, xs, did in rows:
        print(row(name, xs, did))


if __name__ == "__main__":
    main()
