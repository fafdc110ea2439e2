"""SVG snapshots of the console's main screen and an experiment's detail screen, with a fixed clock
and fixed data (events built in memory, a status snapshot built by hand), so any change to what an
operator sees shows up as a diff of tests/tui/snapshots/*.svg. Regenerate after an intended change
with CHARTER_UPDATE_SNAPSHOTS=1 (and look at the new files before committing them).

pytest-textual-snapshot is not used: it pins syrupy 4.8, which needs pytest < 9 (we run 9); the
comparison here is Textual's own `export_screenshot`, byte for byte."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controller.live.protocol import WireEvent
from controller.live.status import (
    BestStatus, BudgetStatus, GateStatus, InflightStatus, ResourceUse, SessionStatus, StatusSnapshot,
)
from controller.workspace.lab import init_lab
from ledger import payloads as P
from tui.app import CharterApp
from tui.components.detail import DetailScreen
from tui.feed import FeedUpdate, Source

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (150, 48)
START = datetime(2026, 12, 1, 9, 0, 0, tzinfo=timezone.utc)
NOW = START + timedelta(minutes=40)
SID = "s20261201090000-ab12"


def wire(seq: int, payload: P.Payload, experiment: int | None = None, *, actor: str = "controller", **typed) -> WireEvent:
    return WireEvent(seq, START + timedelta(minutes=seq), str(payload.KIND), actor, SID, experiment, typed.get("decision"),
                     typed.get("val_bpb"), typed.get("gate_state"), typed.get("rule"), typed.get("commit_sha"),
                     f"{seq:064x}", payload.to_json())


def fixed_events() -> list[WireEvent]:
    ev = [wire(1, P.SessionStarted(tag="night", branch="charter/night", constitution_hash="9f2c" * 16, constitution_version=2,
                                   isolation="bubblewrap", proposer="offline")),
          wire(2, P.Proposed(description="baseline"), 0),
          wire(3, P.Decided(decision="baseline", description="baseline", reason="baseline val_bpb 1.8120 over 2 run(s)"), 0,
               decision="baseline", val_bpb=1.812)]
    seq = 4
    results = [("MATRIX_LR 0.04 -> 0.06", "keep", 1.781, "kept: improvement 0.031 clears the threshold 0.012"),
               ("DEPTH 4 -> 6", "discard", 1.799, "not kept: improvement -0.018 is below the threshold 0.012"),
               ("import socket for logging", "refused", None, "harm test: network module"),
               ("TOTAL_BATCH_SIZE 2**16 -> 2**15", "keep", 1.752, "kept: improvement 0.029 clears the threshold 0.012"),
               ("WARMDOWN_RATIO 0.5 -> 0.9", "crash", None, "training exited with code 1")]
    best = 1.812
    for n, (desc, decision, bpb, reason) in enumerate(results, start=1):
        ev.append(wire(seq, P.Proposed(description=desc, hypothesis=f"{desc} should help", source="offline"), n)); seq += 1
        if decision == "refused":
            ev.append(wire(seq, P.HarmRefused(refusals=[P.RefusalItem(rule="network", path="train.py", line=12, evidence="import socket", hard=False)]), n)); seq += 1
        else:
            ev.append(wire(seq, P.Committed(parent="1" * 40, diff=f"--- a/train.py\n+++ b/train.py\n-{desc.split(' -> ')[0]}\n+{desc.split(' ')[0]} = {desc.split(' -> ')[-1]}\n"),
                           n, commit_sha=f"{n:040x}")); seq += 1
            ev.append(wire(seq, P.TrainingFinished(run=1, returncode=0 if bpb else 1, wall_seconds=61.2, peak_rss_mb=812,
                                                   log_tail_untrusted="step 00420 | loss 3.1042 | 9,800 tok/s"), n)); seq += 1
        ev.append(wire(seq, P.Decided(decision=decision, description=desc, reason=reason, best_before=best), n,
                       decision=decision, val_bpb=bpb)); seq += 1
        if decision == "keep":
            best = bpb
    ev.append(wire(seq, P.GateTransition(from_state="RUN", to_state="THROTTLE", rule="crash_streak", evidence="1 crash in the last 3 experiments",
                                         by="controller"), gate_state="THROTTLE", rule="crash_streak")); seq += 1
    ev.append(wire(seq, P.Proposed(description="HEAD_DIM 64 -> 128"), 6)); seq += 1
    ev.append(wire(seq, P.TrainingStarted(run_dir="/nonexistent/run", run=1, deadline_seconds=70), 6))
    return ev


def fixed_status() -> StatusSnapshot:
    limits = {"experiments": (5, 40), "device_seconds": (980.0, 7200), "wall_hours": (0.67, 8), "agent_tokens": (0, 2_000_000),
              "agent_dollars": (0.0, 20), "disk_mb": (31.5, 20480)}
    return StatusSnapshot(
        gate=GateStatus("THROTTLE", False, "crash_streak", "1 crash in the last 3 experiments"),
        session=SessionStatus(SID, "night", "charter/night", START, 6, 2),
        inflight=InflightStatus(6, "HEAD_DIM 64 -> 128", "training", 25.0, 45.0),
        budgets=BudgetStatus({k: ResourceUse(u, lim) for k, (u, lim) in limits.items()}, 0.136, "device_seconds"),
        best=BestStatus(1.812, 1.752, f"{4:040x}", 0.06),
        running=True, pid=4242, updated=NOW)


def check(name: str, svg: str) -> None:
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("CHARTER_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(svg)
        return
    if not path.exists():
        pytest.fail(f"no snapshot {path.name}: run with CHARTER_UPDATE_SNAPSHOTS=1 and look at the file")
    assert svg == path.read_text(), f"{path.name} changed: rerun with CHARTER_UPDATE_SNAPSHOTS=1 if intended, and look at it"


def test_snapshots_of_the_main_and_detail_screens(tmp_path):
    lab = init_lab(tmp_path / "lab")

    async def go():
        app = CharterApp(lab, "alice", feed=False, clock=lambda: NOW)
        async with app.run_test(size=SIZE) as pilot:
            app.apply(FeedUpdate(Source.LIVE, events=tuple(fixed_events()), status=fixed_status(), at=NOW.timestamp(),
                                 log_tail="step 00200 | loss 3.2210 | 9,912 tok/s\nstep 00210 | loss 3.2104 | 9,877 tok/s\n"))
            app.apply(FeedUpdate(log_tail="step 00200 | loss 3.2210 | 9,912 tok/s\nstep 00210 | loss 3.2104 | 9,877 tok/s\x1b[2J\n", at=NOW.timestamp()))
            app.draw()  # the tables are otherwise drawn on the next tick
            await pilot.pause()
            main = app.export_screenshot(title="charter tui")
            table = app.query_one("#experiments")
            table.focus()
            table.move_cursor(row=1)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, DetailScreen)
            detail = app.export_screenshot(title="charter tui: detail")
        return main, detail

    main, detail = asyncio.run(go())
    check("main", main)
    check("detail", detail)
