"""The recorder is the session's one writer: events and status from several threads at once."""

import json
import threading
from datetime import datetime, timezone

import constitution
from controller.live.status import Progress, SessionView, build_status, read_status
from controller.policy.budgets import Usage
from controller.policy.gates import GateMachine
from controller.session.recorder import Recorder
from ledger import EventKind, Ledger
from ledger import payloads as P

RULES = constitution.load_default()


def test_threads_recording_at_once_lose_nothing_and_the_status_always_parses(tmp_path):
    state = tmp_path / ".charter"
    state.mkdir()
    with Ledger.open(state / "ledger.duckdb") as led:
        rec = Recorder(led, state)
        rec.session = "s1"
        started = datetime.now(timezone.utc)
        # the published status counts what the recorder holds, so it is built under the same lock
        rec.snapshot = lambda: build_status(
            rules=RULES, gate=GateMachine(), gate_rule=None, gate_evidence=None,
            session=SessionView("s1", "t", "charter/t", started), progress=Progress(experiments=len(rec.session_events)),
            usage=Usage(), inflight=None, running=True, pid=None, now=datetime.now(timezone.utc))
        errors, seen = [], []

        def write(who: str) -> None:
            try:
                for i in range(60):
                    rec.record(P.Note(f"{who} {i}"), actor=f"person:{who}")
            except Exception as e:  # the old publisher raised FileNotFoundError here
                errors.append(repr(e))

        def read() -> None:
            for _ in range(200):
                status = read_status(state)
                if status is not None:
                    seen.append(status.session.experiments)

        threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(6)] + [threading.Thread(target=read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events = led.events()
        assert led.verify().ok

    assert errors == []
    assert [e.seq for e in events] == list(range(1, 361)) and all(e.kind == EventKind.NOTE for e in events)
    for who in (f"w{i}" for i in range(6)):  # each writer's notes in its own order, none lost
        assert [e.payload["text"] for e in events if e.actor == f"person:{who}"] == [f"{who} {i}" for i in range(60)]
    final = json.loads((state / "status.json").read_text())
    assert final["session"]["experiments"] == 360  # the last publish saw every event
    assert seen == sorted(seen)  # a reader never sees the status go backwards
    assert not list(state.glob("*.tmp")) and not list(state.glob(".status*"))


def test_a_watcher_wakes_when_an_event_is_recorded(tmp_path):
    with Ledger.open(tmp_path / "l.duckdb") as led:
        rec = Recorder(led, tmp_path)
        head = rec.wait_for_event(0, timeout=0.01)
        assert head == 0  # nothing yet: the wait timed out
        woke = []
        t = threading.Thread(target=lambda: woke.append(rec.wait_for_event(0, timeout=60)))
        t.start()
        ev = rec.record(P.Note("hello"))
        t.join(timeout=60)
        assert woke == [ev.seq] == [1]
