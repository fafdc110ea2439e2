"""Several experiments in flight (`charter run --workers N`): the console's Now panel, driven by
Pilot with a fixed status snapshot and a real ledger's events, shows a line for each and the
loop's own step; the model keeps the tail of a run still training when another is decided; and
`charter status`'s text lists every one. With one worker all of this looks as it always has (the
snapshots in tests/tui/test_snapshots.py hold that)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from controller.live.protocol import WireEvent
from controller.live.status import (
    BestStatus, BudgetStatus, GateStatus, InflightStatus, ResourceUse, SessionStatus, StatusSnapshot,
)
from controller.operators import format_status
from controller.workspace.lab import init_lab
from ledger import Decision, Ledger
from ledger import payloads as P
from tui.app import CharterApp
from tui.feed import FeedUpdate, Source
from tui.model import LabView

SIZE = (160, 50)
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
SID = "s-workers"


def two_runs(lab, decide_first: bool = False) -> list[WireEvent]:
    """A real ledger: experiments 7 and 8 proposed and training at once (8 started last), and 7
    decided when `decide_first`."""
    with Ledger.open(lab.ledger_path) as led:
        rec = lambda p, **kw: led.record(p, actor="controller", session=SID, **kw)
        rec(P.SessionStarted(tag="night", branch="charter/night", constitution_hash="ab" * 32, constitution_version=1))
        rec(P.Proposed(description="MATRIX_LR 0.04 -> 0.06"), experiment=7)
        rec(P.Proposed(description="DEPTH 4 -> 6"), experiment=8)
        rec(P.TrainingStarted(run_dir="/nonexistent/run-7", run=1, deadline_seconds=70), experiment=7)
        rec(P.TrainingStarted(run_dir="/nonexistent/run-8", run=1, deadline_seconds=70), experiment=8)
        if decide_first:
            rec(P.Decided(decision="discard", description="MATRIX_LR 0.04 -> 0.06", reason="not kept: worse"),
                experiment=7, decision=Decision.DISCARD, val_bpb=1.9)
        events = led.events()
    return [WireEvent.from_event(e) for e in events]


def status(in_flight: tuple[InflightStatus, ...], inflight: InflightStatus | None) -> StatusSnapshot:
    return StatusSnapshot(
        gate=GateStatus("RUN"),
        session=SessionStatus(SID, "night", "charter/night", NOW, 8, 0),
        inflight=inflight,
        in_flight=in_flight,
        budgets=BudgetStatus({"experiments": ResourceUse(8, 40)}, 0.2, "experiments"),
        best=BestStatus(),
        running=True, pid=4242, updated=NOW)


SEVERAL = (InflightStatus(7, "MATRIX_LR 0.04 -> 0.06", "training", 30.0, 40.0),
           InflightStatus(8, "DEPTH 4 -> 6", "training", 12.0, 58.0))
PROPOSING = InflightStatus(9, "offline proposer", "proposing", 2.0, 58.0)


def now_panel(tmp_path, snapshot, log_tail=None):
    """The console (Pilot) on a lab with two runs, given a live status: the Now panel's text, its
    tail's text, and whether the bar and the tail are shown."""
    lab = init_lab(tmp_path / "lab")
    events = two_runs(lab)

    async def go():
        app = CharterApp(lab, "erin", feed=False, clock=lambda: NOW)
        async with app.run_test(size=SIZE) as pilot:
            app.apply(FeedUpdate(Source.LIVE, events=tuple(events), status=snapshot, at=NOW.timestamp(),
                                 log_tail=log_tail))
            app.draw()
            await pilot.pause()
            return (str(app.query_one("#now-what").render()), str(app.query_one("#now-tail").render()),
                    app.query_one("#now-bar").display, app.query_one("#now-tail").display)

    return asyncio.run(go())


def test_the_now_panel_shows_every_experiment_in_flight_and_the_loops_own_step(tmp_path):
    what, tail, bar_shown, tail_shown = now_panel(tmp_path, status(SEVERAL, PROPOSING), "step 00100 | loss 3.3000\n")
    lines = what.splitlines()
    assert lines[0] == "2 in flight"
    assert lines[1].startswith("#7 MATRIX_LR 0.04 -> 0.06  training  30 s in, 40 s left")
    assert lines[2].startswith("#8 DEPTH 4 -> 6  training  12 s in, 58 s left")
    assert lines[3].startswith("loop: #9 offline proposer  proposing")
    assert not bar_shown  # one bar could not say whose deadline it is
    assert tail_shown and tail.splitlines() == ["output of #8:", "step 00100 | loss 3.3000"]  # the latest run started


def test_the_loops_step_is_not_repeated_when_it_is_one_of_the_experiments_in_flight(tmp_path):
    what = now_panel(tmp_path, status(SEVERAL, SEVERAL[1]))[0]
    assert "loop:" not in what and what.count("#8 ") == 1 and "#7 MATRIX_LR" in what


def test_a_decision_ends_only_its_own_runs_tail(tmp_path):
    view = LabView()
    view.apply(two_runs(init_lab(tmp_path / "lab"), decide_first=True))
    assert (view.run_experiment, view.run_dir) == (8, "/nonexistent/run-8")  # 7 was decided; 8 still trains


def test_the_tail_follows_the_run_still_training_when_the_latest_is_decided(tmp_path):
    lab = init_lab(tmp_path / "lab")
    with Ledger.open(lab.ledger_path) as led:
        rec = lambda p, **kw: led.record(p, actor="controller", session=SID, **kw)
        rec(P.SessionStarted(tag="night", branch="charter/night", constitution_hash="ab" * 32, constitution_version=1))
        rec(P.TrainingStarted(run_dir="/nonexistent/run-7", run=1, deadline_seconds=70), experiment=7)
        rec(P.TrainingStarted(run_dir="/nonexistent/run-8", run=1, deadline_seconds=70), experiment=8)
        rec(P.Decided(decision="crash", reason="exited 1"), experiment=8, decision=Decision.CRASH)
        events = [WireEvent.from_event(e) for e in led.events()]
    view = LabView()
    view.apply(events)
    assert (view.run_experiment, view.run_dir) == (7, "/nonexistent/run-7")


def test_status_text_lists_every_experiment_in_flight():
    text = format_status(status(SEVERAL, PROPOSING))
    lines = text.splitlines()
    start = lines.index("in flight: 2 experiments")
    assert lines[start + 1:start + 4] == [
        "  experiment 7 (MATRIX_LR 0.04 -> 0.06): training, 40 s left before the kill",
        "  experiment 8 (DEPTH 4 -> 6): training, 58 s left before the kill",
        "  loop: experiment 9 (offline proposer): proposing, 58 s left before the kill",
    ]


def test_status_text_with_one_experiment_in_flight_keeps_its_one_line():
    text = format_status(status((), SEVERAL[0]))
    assert "in flight: experiment 7 (MATRIX_LR 0.04 -> 0.06): training, 40 s left before the kill" in text.splitlines()
    assert "experiments in flight" not in text and "loop:" not in text
