"""What `charter run` prints (controller.session.narrator) and the safe log tail it and the TUI
show (controller.execution.log_tail): pure lines, and the Narrator fed real events from a real
ledger file, in each mode."""

from __future__ import annotations

import io
import json
import os
import time

import pytest

from controller.execution.log_tail import last_loss, printable, read_tail
from controller.live.status import Inflight
from controller.session.narrator import Narrator, RunningBest, decided_line, gate_line, progress_line, short_reason
from ledger import Decision, Ledger
from ledger import payloads as P

SAFETY_S = 30


def test_a_decided_line_has_number_description_bpb_delta_decision_and_short_reason():
    p = P.Decided(decision="discard", description="MATRIX_LR 0.04 -> 0.06",
                  reason="not kept: improvement -0.0040 is below the threshold 0.0100; 2 runs, noise sd 0.004")
    line = decided_line(3, p, 1.8163, 1.8123)
    assert line.split()[:4] == ["3", "MATRIX_LR", "0.04", "->"]
    assert "1.8163" in line and "+0.0040" in line and "discard" in line
    assert line.endswith("not kept: improvement -0.0040 is below the threshold 0.0100")  # the first clause only


def test_a_crash_line_has_no_bpb_and_a_baseline_no_delta():
    crash = decided_line(2, P.Decided(decision="crash", description="x", reason="exit 1"), None, 1.8)
    assert " - " in crash and "crash" in crash and "+" not in crash
    base = decided_line(0, P.Decided(decision="baseline", description="baseline", reason="baseline val_bpb 1.9"), 1.9, None)
    assert "1.9000" in base and "+" not in base.split("baseline")[1].split("1.9000")[0]


def test_the_running_best_moves_on_baseline_and_keep_only():
    best = RunningBest()
    assert best.see(P.Decided(decision="baseline"), 2.0) is None
    assert best.see(P.Decided(decision="discard"), 1.9) == 2.0
    assert best.see(P.Decided(decision="keep"), 1.8) == 2.0
    assert best.see(P.Decided(decision="baseline", repair=True), 1.95) == 1.8
    assert best.best == 1.8


def test_gate_lines_name_the_person_or_the_rule():
    op = gate_line(P.GateTransition(from_state="RUN", to_state="FREEZE", rule="operator", evidence="lunch", by="person:alice", held=True))
    assert op.startswith("gate RUN -> FREEZE") and "by person:alice" in op and "held" in op and "lunch" in op
    rule = gate_line(P.GateTransition(from_state="RUN", to_state="THROTTLE", rule="crash_streak", evidence="2 crashes", by="controller"))
    assert "rule crash_streak: 2 crashes" in rule


def test_the_progress_line_counts_down_and_shows_the_loss_within_the_width():
    flight = Inflight(4, "a very long description " * 10, "training", started=100.0, deadline=160.0)
    line = progress_line(flight, now=118.0, loss=3.21234, width=80)
    assert "#4 training" in line and "42 s left" in line and "loss 3.2123" in line
    assert len(line) <= 79
    proposing = progress_line(Inflight(5, "offline proposer", "proposing", started=100.0), now=103.0, loss=None, width=80)
    assert "3 s" in proposing and "loss" not in proposing


def test_untrusted_text_is_made_printable():
    assert printable("ok\x1b[2Jbad\x07\n") == "ok\\x1b[2Jbad\\x07\n"
    assert "\x1b" not in short_reason("x\x1b]0;title\x07; rest")


def test_the_log_tail_is_bounded_never_follows_a_link_and_finds_the_loss(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [f"step {i:05d} | loss {4 - i / 100:.4f} | 1,000 tok/s" for i in range(200)]
    (run / "train.log").write_text("\n".join(lines) + "\n")
    tail = read_tail(run, max_bytes=500)
    assert len(tail.encode()) <= 500 and tail.startswith("step ")  # the cut first line is dropped
    assert last_loss(tail) == pytest.approx(4 - 199 / 100)
    secret = tmp_path / "secret"
    secret.write_text("step 00001 | loss 9.9999")
    (run / "train.log").unlink()
    os.symlink(secret, run / "train.log")
    assert read_tail(run) == ""
    (run / "train.log").unlink()
    os.mkfifo(run / "train.log")  # a FIFO must not block the reader
    assert read_tail(run) == ""
    assert read_tail(tmp_path / "missing") == ""


# -- the Narrator on real events ----------------------------------------------------------------

def record_session(path) -> list:
    """A few real events as a session records them."""
    with Ledger.open(path) as led:
        s = "s-test"
        return [
            led.record(P.SessionStarted(tag="t", branch="charter/t", constitution_hash="ab" * 32, constitution_version=1,
                                        isolation="none"), actor="controller", session=s),
            led.record(P.Decided(decision="baseline", description="baseline", reason="baseline val_bpb 2.0000 over 1 run(s)"),
                       actor="controller", session=s, experiment=0, decision=Decision.BASELINE, val_bpb=2.0),
            led.record(P.TrainingStarted(run_dir="/nonexistent/run", run=1, deadline_seconds=17), actor="controller", session=s, experiment=1),
            led.record(P.Decided(decision="keep", description="LR up", reason="kept: improvement 0.1 > threshold 0.01; more"),
                       actor="controller", session=s, experiment=1, decision=Decision.KEEP, val_bpb=1.9),
            led.record(P.OperatorCommand(command="pause", reason="lunch"), actor="person:alice", session=s),
            led.record(P.GateTransition(from_state="RUN", to_state="FREEZE", rule="operator", evidence="lunch", by="person:alice", held=True),
                       actor="person:alice", session=s, gate_state="FREEZE", rule="operator"),
            led.record(P.Note(text="looked \x1b[31mat it"), actor="person:bob", session=s),
        ]


def narrate(events, mode, **kw) -> str:
    out = io.StringIO()
    with Narrator(out, mode, tty=False, **kw) as n:
        for ev in events:
            n.on_event(ev)
    return out.getvalue()


def test_lines_mode_prints_decisions_gates_operators_and_notes(tmp_path):
    text = narrate(record_session(tmp_path / "ledger.duckdb"), "lines")
    lines = text.splitlines()
    assert lines[0].startswith("session s-test started on branch charter/t (constitution v1 abababababab")
    assert lines[1].split()[:2] == ["exp", "description"]
    assert lines[2].split()[:3] == ["0", "baseline", "2.0000"]
    assert lines[3].split()[:5] == ["1", "LR", "up", "1.9000", "-0.1000"] and "keep" in lines[3]
    assert lines[4] == "operator alice: pause: lunch"
    assert lines[5].startswith("gate RUN -> FREEZE (held by the operator)  by person:alice")
    assert lines[6] == "note by bob: looked \\x1b[31mat it"
    assert len(lines) == 7 and "\r" not in text  # no progress line when stdout is not a terminal


def test_jsonl_mode_prints_one_wire_event_per_line(tmp_path):
    events = record_session(tmp_path / "ledger.duckdb")
    rows = [json.loads(line) for line in narrate(events, "jsonl").splitlines()]
    assert [r["seq"] for r in rows] == [e.seq for e in events]
    assert rows[3]["kind"] == "decided" and rows[3]["decision"] == "keep" and rows[3]["payload"]["description"] == "LR up"


def test_quiet_mode_prints_nothing(tmp_path):
    assert narrate(record_session(tmp_path / "ledger.duckdb"), "quiet") == ""


def test_a_terminal_gets_a_progress_line_and_the_stopping_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("step 00003 | loss 3.5000 | 10 tok/s\n")
    flight = Inflight(1, "LR up", "training", started=time.time(), deadline=time.time() + 60)
    stopping = {"now": False}
    out = io.StringIO()
    n = Narrator(out, "lines", tty=True, inflight=lambda: flight, stopping=lambda: stopping["now"]).start()
    with Ledger.open(tmp_path / "ledger.duckdb") as led:
        n.on_event(led.record(P.TrainingStarted(run_dir=str(run), run=1, deadline_seconds=60), actor="controller", experiment=1))
    deadline = time.monotonic() + SAFETY_S
    while "loss 3.5000" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "\r\x1b[2K  > #1 training · " in out.getvalue() and "loss 3.5000" in out.getvalue()
    stopping["now"] = True
    while "stopping:" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    n.close()
    text = out.getvalue()
    assert "stopping: nothing new starts" in text
    assert text.endswith("\r\x1b[2K")  # the progress line is cleared on the way out


def test_a_closed_stdout_silences_the_narrator_without_an_error(tmp_path):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError
    events = record_session(tmp_path / "ledger.duckdb")
    n = Narrator(Closed(), "lines", tty=False).start()
    for ev in events:
        n.on_event(ev)
    n.close()
    assert n.mode == "quiet"


def test_the_recorder_tells_listeners_in_seq_order_and_a_failing_one_changes_nothing(tmp_path):
    from controller.session.recorder import Recorder
    seen: list[int] = []

    def broken(ev):
        raise RuntimeError("a printer bug")

    with Ledger.open(tmp_path / "ledger.duckdb") as led:
        rec = Recorder(led, tmp_path, listeners=[broken, lambda ev: seen.append(ev.seq)])
        first = rec.record(P.Note("one"))
        batch = rec.record_many([(P.Note("two"), "controller", {}), (P.Note("three"), "controller", {})])
        assert seen == [first.seq] + [e.seq for e in batch] == [1, 2, 3]
        assert [e.payload["text"] for e in led.events()] == ["one", "two", "three"]
