"""The console (tui.app.CharterApp) driven by Pilot on real labs and ledgers with no controller
running: what it shows from the ledger, its actions (they land in the ledger with the operator's
name), the confirmation a stop needs, notes, queries, the detail screen, untrusted text, and the
refusal of an agent's name. The same app against a running controller is tests/tui/test_console_live.py."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from controller.live.protocol import WireEvent
from controller.operators import status_from_ledger
from controller.workspace.lab import init_lab
from ledger import Decision, EventKind, Ledger
from ledger import payloads as P
from tui.app import CharterApp
from tui.components.chart import Point, chart_text
from tui.components.detail import DetailScreen
from tui.components.modals import ConfirmScreen, PromptScreen
from tui.components.query import QueryScreen
from tui.feed import FeedUpdate, Source
from tui.model import LabView

SAFETY_S = 30  # a safety net against a hang; nothing here measures time
SIZE = (160, 50)
FIXED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


async def wait_for(pilot, condition, what: str, timeout: float = SAFETY_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            app = pilot.app
            said = list(app.messages)
            raise AssertionError(f"timed out waiting for {what}; header: {header(app)!r}; notifications: {said}; "
                                 f"source {app.source}, problem {app.problem!r}")
        await pilot.pause(0.05)


def header(app) -> str:
    return str(app.query_one("#gate-badge").render()) + " | " + str(app.query_one("#gate-info").render())


def ledger_events(lab, kind):
    with Ledger.open(lab.ledger_path, read_only=True, wait_s=5) as led:
        return led.events(kinds=[kind])


@pytest.fixture
def lab(tmp_path):
    return init_lab(tmp_path / "lab")


def test_an_agent_cannot_be_the_operator(lab):
    with pytest.raises(ValueError, match="agent"):
        CharterApp(lab, "agent:claude", feed=False)
    with pytest.raises(ValueError, match="controller"):
        CharterApp(lab, "controller", feed=False)


def test_with_no_controller_it_reads_the_ledger_and_pause_and_resume_land_with_the_name(lab):
    async def go():
        app = CharterApp(lab, "alice", refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.status is not None and app.source == Source.LEDGER, "the ledger view")
            assert "RUN" in header(app) and "no controller running" in header(app)
            await pilot.press("p")
            await wait_for(pilot, lambda: "FREEZE · paused by alice" in header(app), "the header to show the pause")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the reason prompt")
            await pilot.press("enter")  # an empty reason is not sent
            assert isinstance(app.screen, PromptScreen)
            for ch in "checked it":
                await pilot.press("space" if ch == " " else ch)
            await pilot.press("enter")
            await wait_for(pilot, lambda: header(app).startswith(" RUN "), "the header to show RUN again")
    asyncio.run(go())
    commands = ledger_events(lab, EventKind.OPERATOR_COMMAND)
    assert [(e.actor, e.payload["command"]) for e in commands] == [("person:alice", "pause"), ("person:alice", "resume")]
    assert commands[1].payload["reason"] == "checked it"


def test_stop_needs_the_confirmation(lab):
    async def go():
        app = CharterApp(lab, "bob", refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.status is not None, "the first status")
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
            await pilot.press("n")
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the modal to close")
            await pilot.pause(0.5)  # a refused stop would have had time to land; nothing must
            assert ledger_events(lab, EventKind.OPERATOR_COMMAND) == []
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation again")
            await pilot.press("y")
            await wait_for(pilot, lambda: header(app).startswith(" STOP"), "the header to show STOP")
    asyncio.run(go())
    assert [(e.actor, e.payload["command"]) for e in ledger_events(lab, EventKind.OPERATOR_COMMAND)] == [("person:bob", "stop")]


def test_a_note_lands_and_a_query_renders_as_a_table(lab):
    async def go():
        app = CharterApp(lab, "carol", refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.status is not None, "the first status")
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the note prompt")
            app.screen.query_one("Input").value = "looked at [bold]it[/]"
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("note" in line and "carol" in line for line in app.view.feed), "the note in the feed")
            await pilot.press("slash")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the query prompt")
            app.screen.query_one("Input").value = "select seq, kind, actor from events order by seq"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen), "the result table")
            table = app.screen.query_one("DataTable")
            assert [str(c.label) for c in table.columns.values()] == ["seq", "kind", "actor"]
            assert table.row_count == 2 and table.get_row_at(1)[2] == "person:carol"
            await pilot.press("escape")
            await pilot.press("slash")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the query prompt")
            app.screen.query_one("Input").value = "delete from events"
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("refused" in m for m in app.messages), "a one-sentence refusal")
            refusal = next(m for m in app.messages if "refused" in m)
            assert "\n" not in refusal and "Traceback" not in refusal
            assert not isinstance(app.screen, QueryScreen)
    asyncio.run(go())
    notes = ledger_events(lab, EventKind.NOTE)
    assert [(e.actor, e.payload["text"]) for e in notes] == [("person:carol", "looked at [bold]it[/]")]


# -- fixed data: the model, the chart, the detail screen ------------------------------------------

def fixed_session(lab) -> list[WireEvent]:
    """A short real session record: a baseline, a keep, a discard, a refusal, a pause."""
    s = "s-fixed"
    with Ledger.open(lab.ledger_path) as led:
        rec = lambda p, **kw: led.record(p, actor=kw.pop("actor", "controller"), session=s, **kw)
        rec(P.SessionStarted(tag="night", branch="charter/night", constitution_hash="c0ffee" * 10, constitution_version=3))
        rec(P.Proposed(description="baseline"), experiment=0)
        rec(P.Decided(decision="baseline", description="baseline", reason="baseline val_bpb 2.0000"), experiment=0,
            decision=Decision.BASELINE, val_bpb=2.0)
        rec(P.Proposed(description="LR [red]up[/] \x1b[2J"), experiment=1)
        rec(P.Committed(parent="a" * 40, diff="-LR = 1\n+LR = 2\n"), experiment=1, commit_sha="b" * 40)
        rec(P.TrainingStarted(run_dir="/nonexistent", run=1, deadline_seconds=17), experiment=1)
        rec(P.TrainingFinished(run=1, returncode=0, wall_seconds=12.5, peak_rss_mb=300, log_tail_untrusted="step 1 | loss 3"), experiment=1)
        rec(P.Decided(decision="keep", reason="kept: improvement 0.1 > 0.01; detail", best_before=2.0), experiment=1,
            decision=Decision.KEEP, val_bpb=1.9)
        rec(P.Proposed(description="depth 2"), experiment=2)
        rec(P.Decided(decision="discard", reason="not kept: worse", best_before=1.9), experiment=2, decision=Decision.DISCARD, val_bpb=1.95)
        rec(P.Proposed(description="import socket"), experiment=3)
        rec(P.HarmRefused(refusals=[P.RefusalItem(rule="network", path="train.py", line=3, evidence="import socket", hard=True)]), experiment=3)
        rec(P.Decided(decision="refused", reason="harm test: network"), experiment=3, decision=Decision.REFUSED)
        rec(P.GateTransition(from_state="RUN", to_state="FREEZE", rule="operator-pause", evidence="lunch", by="person:dan", held=True),
            actor="person:dan", gate_state="FREEZE", rule="operator-pause")
        events = led.events()
    return [WireEvent.from_event(e) for e in events]



async def show(app, pilot, events, status) -> None:
    """Hand the app a fixed ledger's events and status, as its feed would, and draw them."""
    app.apply(FeedUpdate(Source.LEDGER, events=tuple(events), status=status, at=FIXED.timestamp()))
    app.draw()  # the tables are otherwise drawn on the next tick
    await pilot.pause()


def test_the_main_screen_and_the_detail_screen_show_fixed_data(lab):
    events = fixed_session(lab)
    status = status_from_ledger(lab)

    async def go():
        app = CharterApp(lab, "erin", feed=False, clock=lambda: FIXED)
        async with app.run_test(size=SIZE) as pilot:
            await show(app, pilot, events, status)
            h = header(app)
            assert "FREEZE · paused by dan" in h and "s-fixed (night)" in h
            assert "constitution v3 c0ffeec0ffee" in h and f"ledger head seq {events[-1].seq}" in h
            table = app.query_one("#experiments")
            assert table.row_count == 4
            assert [str(table.get_row_at(i)[1]) for i in range(4)] == ["baseline", "keep", "discard", "refused"]
            assert str(table.get_row_at(1)[4]) == "LR [red]up[/] \\x1b[2J"  # untrusted: literal and printable
            counts = str(app.query_one("#counts").render())
            assert "keep           1" in counts and "refused        1" in counts
            assert app.query_one("#refusals").row_count == 1 and app.query_one("#gates").row_count == 1
            table.focus()
            table.move_cursor(row=1)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
            text = str(app.screen.query_one("#detail-text").render())
            assert "decision:    keep   val_bpb 1.9000   best before 2.0000" in text
            assert "+LR = 2" in text and "run 1: exit 0, 12.5 s, peak 300 MB" in text
            await pilot.press("escape")
            table.move_cursor(row=3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the refusal's detail")
            assert "network (hard) train.py:3: import socket" in str(app.screen.query_one("#detail-text").render())
    asyncio.run(go())


def test_events_arriving_under_a_detail_screen_are_drawn_on_the_main_screen(lab):
    """The operator reads an experiment while the session goes on: updates and ticks must draw on
    the main screen (not the one on top) and leave the detail screen open."""
    events = fixed_session(lab)
    status = status_from_ledger(lab)
    first, rest = events[:9], events[9:]  # up to the keep; the discard, the refusal and the pause arrive later

    async def go():
        app = CharterApp(lab, "erin", feed=False, clock=lambda: FIXED)
        async with app.run_test(size=SIZE) as pilot:
            await show(app, pilot, first, status)
            table = app.query_one("#experiments")
            assert table.row_count == 2
            table.move_cursor(row=1)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
            app.apply(FeedUpdate(Source.LEDGER, events=tuple(rest), status=status, at=FIXED.timestamp()))
            app.tick()  # the tables were due: drawn now, on the main screen under the detail screen
            await pilot.pause()
            assert app.is_running and isinstance(app.screen, DetailScreen) and not app._tables_due
            assert app.query_one("#experiments").row_count == 4  # app queries look at the main screen
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, DetailScreen), "the main screen")
            assert app.query_one("#experiments").row_count == 4
            assert "FREEZE · paused by dan" in header(app)
            assert "refused        1" in str(app.query_one("#counts").render())
    asyncio.run(go())


def test_a_tick_or_an_update_as_the_app_closes_draws_nothing_and_does_not_fail(lab):
    """At exit Textual removes the widgets before it stops the timers: a tick with tables due, an
    update, or a redraw after a refresh then finds nothing to draw on (CI once failed on this)."""
    events = fixed_session(lab)
    status = status_from_ledger(lab)

    async def go():
        app = CharterApp(lab, "erin", feed=False, clock=lambda: FIXED)
        async with app.run_test(size=SIZE) as pilot:
            await show(app, pilot, events[:9], status)
            await app.default_screen.remove_children()  # what closing does first
            app.apply(FeedUpdate(Source.LEDGER, events=tuple(events[9:]), status=status, at=FIXED.timestamp()))
            assert app._tables_due
            app.tick()
            app.draw()
            app._draw_progress()
            await pilot.pause()
            assert app.is_running and app.view.head_seq == events[-1].seq  # the view still folds what arrives
    asyncio.run(go())


def test_clicking_a_column_header_sorts_the_experiments(lab):
    events = fixed_session(lab)
    status = status_from_ledger(lab)

    async def go():
        app = CharterApp(lab, "erin", feed=False, clock=lambda: FIXED)
        async with app.run_test(size=SIZE) as pilot:
            await show(app, pilot, events, status)
            table = app.query_one("#experiments")
            widths = [c.get_render_width(table) for c in table.ordered_columns]
            x = sum(widths[:2]) + 2  # inside the third column's header: val_bpb
            orders = []
            for _ in range(2):
                await pilot.click("#experiments", offset=(x, 0))
                await pilot.pause()
                orders.append([str(table.get_row_at(i)[1]) for i in range(table.row_count)])
            return orders

    ascending, descending = asyncio.run(go())
    assert ascending == ["keep", "discard", "baseline", "refused"]  # 1.90, 1.95, 2.00, then no val_bpb
    assert descending == ["baseline", "discard", "keep", "refused"]  # a second click reverses; no number stays last


def test_the_chart_marks_kept_runs_the_best_and_the_baseline():
    pts = [Point(0, 2.0, "baseline"), Point(1, 1.9, "keep"), Point(2, 1.95, "discard"), Point(3, None, "crash")]
    text = chart_text(pts, 2.0, width=40, height=8).plain
    grid = "\n".join(text.splitlines()[:-1])  # the last line is the legend
    assert grid.count("●") == 2 and grid.count("○") == 1 and "×" in grid
    lines = grid.splitlines()
    assert lines[0].lstrip().startswith("2.0000 ●") and lines[5].lstrip().startswith("1.9000   ●")  # lower is better: further down
    assert "─" in text and "┈" in text and "2.0000" in text and "1.9000" in text
    assert chart_text([], None, 40, 8).plain == "no measured experiment yet"


def test_an_experiment_number_reused_after_a_resume_is_a_new_row():
    class E:
        def __init__(self, seq, kind, experiment=None, **payload):
            self.seq, self.kind, self.experiment, self.payload = seq, kind, experiment, payload
            self.session, self.actor, self.ts, self.val_bpb, self.commit_sha = "s", "controller", FIXED, None, None
    view = LabView()
    view.apply([E(1, EventKind.SESSION_STARTED, tag="t", branch="b"), E(2, EventKind.PROPOSED, 1, description="a"),
                E(3, EventKind.DECIDED, 1, decision="interrupted"), E(4, EventKind.PROPOSED, 1, description="b")])
    assert [(r.number, r.description, r.decision) for r in view.experiments] == [(1, "a", "interrupted"), (1, "b", None)]
    view.apply([E(4, EventKind.NOTE, text="dup")])  # an event seen before is not folded twice
    assert view.head_seq == 4 and view.events_seen == 4


def test_the_header_says_how_fresh_the_view_is():
    from tui.components.header import freshness
    now = 1000.0
    assert freshness(Source.LIVE, now - 0.5, now, None) == "live"
    assert freshness(Source.LIVE, now - 3, now, None) == "live (updated 3 s ago)"
    assert freshness(Source.LIVE, now - 30, now, None) == "live channel open, but no status for 30 s: the controller may be hung"
    assert freshness(Source.LEDGER, now - 2, now, None).startswith("no controller running: read from the ledger (2 s ago)")
    stale = freshness(Source.STALE, now - 600, now, "a controller holds the ledger but does not answer")
    assert stale == "stale: a controller holds the ledger but does not answer (status 10 min ago)"
    assert freshness(Source.GONE, None, now, "the controller closed the live channel").startswith("controller gone")
    assert freshness(None, None, now, None) == "connecting…"


def test_a_gpu_runs_vram_and_mfu_show_in_the_detail_and_a_cpu_run_shows_neither(lab):
    from tui.components.detail import detail_text
    with Ledger.open(lab.ledger_path) as led:
        led.record(P.Proposed(description="bigger model"), actor="controller", session="s-gpu", experiment=1)
        led.record(P.TrainingFinished(run=1, returncode=0, wall_seconds=310.0, peak_rss_mb=9000, peak_vram_mb=41234.0,
                                      device_name="NVIDIA H100 80GB HBM3", mfu=0.4123), actor="controller",
                   session="s-gpu", experiment=1)
        led.record(P.TrainingFinished(run=2, returncode=0, wall_seconds=61.0, peak_rss_mb=300), actor="controller",
                   session="s-gpu", experiment=1)
        view = LabView()
        view.apply(led.events())
    row = next(r for r in view.experiments if r.number == 1)
    text = str(detail_text(row))
    assert "run 1: exit 0, 310.0 s, peak 9000 MB, VRAM 41234 MB, MFU 41.2%, val_bpb -" in text
    assert "run 2: exit 0, 61.0 s, peak 300 MB, val_bpb -" in text  # nothing measured: nothing shown
