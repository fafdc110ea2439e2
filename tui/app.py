"""`charter tui`: the operator's console over one lab, live while a controller runs, read-only after.

`CharterApp` composes the screen (header, Now, budgets, the val_bpb chart and counts, tabs of
experiments, gate history, refusals, agent calls, amendments and the live event feed) and keeps
the console's state: a `tui.model.LabView` folded from events and the latest status snapshot.
Data arrives as `FeedUpdate`s from `tui.feed.LabFeed` running in two thread workers; the
operator's actions (pause, resume, stop, note, query) also run in thread workers, through the
same paths as the CLI: the live channel when a controller runs, the ledger file when none does,
always with the operator's name (`--by`, refused if it names an agent or the controller). The UI
thread only folds and draws. Every failure becomes one sentence in a notification.
"""

from __future__ import annotations

import getpass
import os
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Footer, RichLog, Static, TabbedContent, TabPane

import constitution
from controller import audit
from controller.live.client import ControllerUnreachable, LiveClient, LiveError
from controller.operators import OperatorRefused, operator_command
from controller.policy import budgets
from controller.policy.identity import person_refusal
from controller.session.narrator import short, short_reason
from controller.workspace.lab import Lab, LabError
from ledger import Ledger, LedgerError
from ledger import payloads as P
from tui.components.budgets import BudgetMeters, meter_lines
from tui.components.chart import BpbChart, Point, chart_text
from tui.components.detail import DetailScreen
from tui.components.header import GateHeader, header_texts
from tui.components.help import HelpScreen
from tui.components.modals import ConfirmScreen, PromptScreen
from tui.components.now import NowPanel
from tui.components.query import QueryScreen
from tui.feed import FeedUpdate, LabFeed, Source, one_line
from tui.model import LabView, still_to_ratify

QUERY_ROWS = 1000
TICK_S = 0.5  # the countdown's step, and the longest a new event waits to reach the tables
NUMERIC_COLUMNS = {"#", "val_bpb", "vs best"}


def default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "operator")


def _file_rules(lab: Lab) -> dict | None:
    try:
        return lab.load_constitution().model_dump(mode="json")
    except Exception:  # a malformed file: the console still opens, `charter constitution validate` says why
        return None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class FeedUpdated(Message):
    """A `FeedUpdate` handed from a feed thread to the UI thread."""

    def __init__(self, update: FeedUpdate):
        super().__init__()
        self.update = update


class CharterApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "charter"
    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("r", "resume", "resume"),
        Binding("s", "stop", "stop"),
        Binding("n", "note", "note"),
        Binding("slash", "query", "query"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, lab: Lab, by: str | None = None, *, refresh_s: float = 1.0, feed: bool = True,
                 clock: Callable[[], datetime] = utc_now):
        super().__init__()
        self.lab = lab
        self.by = (by or default_operator()).strip()
        refusal = person_refusal(self.by)
        if refusal:
            raise ValueError(f"--by {refusal}")
        self.clock = clock
        self.view = LabView()
        self.status = None
        self.source = None
        self.status_at: float | None = None
        self.problem: str | None = None
        self.tail = ""
        self.sort: tuple[str, bool] | None = None  # experiments table: (column, reverse)
        self.file_rules = _file_rules(lab)  # the day limits before any session recorded its rules
        self.feed = LabFeed(lab, lambda u: self.post_message(FeedUpdated(u)), refresh_s) if feed else None
        self._events_logged = 0
        self._budgets_shown = ""
        self._tables_due = False
        self._day_cache: tuple | None = None
        self.messages: deque[str] = deque(maxlen=100)  # every sentence said to the operator, newest last

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield GateHeader(id="header")
        with Horizontal(id="top"):
            yield NowPanel(id="now")
            yield BudgetMeters("", id="budgets")
        with Horizontal(id="middle"):
            yield BpbChart("", id="chart")
            yield Static("", id="counts")
        with TabbedContent(id="tabs"):
            with TabPane("Experiments", id="tab-experiments"):
                yield DataTable(id="experiments", cursor_type="row", zebra_stripes=True)
            with TabPane("Gate", id="tab-gate"):
                yield DataTable(id="gates", cursor_type="row")
            with TabPane("Refusals", id="tab-refusals"):
                yield DataTable(id="refusals", cursor_type="row")
            with TabPane("Agent calls", id="tab-agents"):
                yield DataTable(id="agent-calls", cursor_type="row")
            with TabPane("Amendments", id="tab-amendments"):
                yield DataTable(id="amendments", cursor_type="row")
            with TabPane("Events", id="tab-events"):
                yield RichLog(id="events", max_lines=500, wrap=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"charter · {self.lab.root.name}"
        self.query_one("#experiments", DataTable).add_columns("#", "decision", "val_bpb", "vs best", "description", "reason")
        self.query_one("#gates", DataTable).add_columns("seq", "time (UTC)", "from", "to", "rule", "by", "evidence")
        self.query_one("#refusals", DataTable).add_columns("session", "#", "description", "refusal")
        self.query_one("#agent-calls", DataTable).add_columns("seq", "#", "model", "in tokens", "out tokens", "$", "stop")
        self.query_one("#amendments", DataTable).add_columns("id", "status", "tier", "version", "proposed by", "ratified by", "must still ratify", "why")
        self.query_one("#experiments", DataTable).focus()
        if self.feed is not None:
            self.run_worker(self.feed.watch_loop, thread=True, group="feed", name="watch", exit_on_error=False)
            self.run_worker(self.feed.poll_loop, thread=True, group="feed", name="poll", exit_on_error=False)
        self.set_interval(TICK_S, self.tick)
        self.draw()
        self.call_after_refresh(self._draw_progress)  # the chart's size is known once laid out

    def on_resize(self) -> None:
        self.call_after_refresh(self._draw_progress)

    # -- data ----------------------------------------------------------------------------------
    def on_feed_updated(self, message: FeedUpdated) -> None:
        self.apply(message.update)

    def apply(self, u: FeedUpdate) -> None:
        """Fold one update into the view and redraw (UI thread; tests call it with fixed data)."""
        if u.source is not None:
            self.source, self.problem = u.source, u.problem
        elif u.problem:
            self.problem = u.problem
        if u.events:
            self.view.apply(list(u.events))
            if self.feed is not None and self.feed.run_dir != self.view.run_dir:
                # the tail follows another run now: drop the old run's until the feed reads the new
                # one, or it would show for a moment under the new run's number
                self.feed.run_dir, self.tail = self.view.run_dir, ""
        best_before = self.status.best if self.status else None
        if u.status is not None and not (u.live_only and self.source != Source.LIVE):
            # the controller's own clock (same machine): a stale status.json counts down from when it was written
            self.status, self.status_at = u.status, u.status.updated.timestamp() if u.status.updated else u.at
        if u.log_tail is not None:
            self.tail = u.log_tail
        if u.problem and u.source == Source.GONE:
            self.tell(u.problem, "warning")
        if u.events or (self.status is not None and self.status.best != best_before):
            self._tables_due = True  # drawn on the next tick: a burst of events costs one redraw
        if self._drawable():
            self.draw_live_parts()
            self._draw_budgets()

    def _drawable(self) -> bool:
        """False while the app is closing (it stops running, then removes its widgets, children
        first, before its timers stop) or before compose: there is nothing to draw on."""
        return self.is_running and bool(self.query(GateHeader))

    def tick(self) -> None:
        """Twice a second: the countdown and freshness, and the tables if events arrived."""
        if not self._drawable():
            return
        if self._tables_due:
            self._tables_due = False
            self.draw()
        else:
            self.draw_live_parts()

    def draw(self, tables: bool = True) -> None:
        """Redraw; the chart, counts and tables only when events arrived (a status alone moves
        the header, the countdown and the meters)."""
        if not self._drawable():
            return
        self.draw_live_parts()
        self._draw_budgets()
        if tables:
            self._draw_progress()
            self._draw_tables()

    def draw_live_parts(self) -> None:
        """The parts that move between updates: the header's freshness and the countdown."""
        if not self._drawable():
            return
        now = self.clock()
        badge, info = header_texts(self.lab.root.name, self.view, self.status, self.source, self.status_at, self.problem, now)
        state = self.status.gate.state if self.status else (self.view.last_gate().to_state if self.view.last_gate() else "RUN")
        self.query_one(GateHeader).show(badge, state, info)
        running = self.status is not None and self.status.running
        flight = self.status.inflight if running else None
        flights = self.status.in_flight if running else ()  # several workers: every experiment in flight
        received = self.status_at if self.status_at is not None else now.timestamp()
        self.query_one(NowPanel).show(flight, received, now.timestamp(), self.tail, flights, self.view.run_experiment)

    def _draw_budgets(self) -> None:
        now = self.clock()
        session = {k: (v.used, v.limit) for k, v in self.status.budgets.session.items()} if self.status else {}
        started = self.status.session.started if self.status else None
        day = {}
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        rules = self.view.rules or self.file_rules
        if rules:
            try:
                key = (self.view.head_seq, midnight, id(rules))
                if self._day_cache is None or self._day_cache[0] != key:  # events moved, or a new day
                    limits = constitution.Constitution.model_validate(rules).budgets.day
                    used = budgets.usage_from_events(self._today_events(midnight), midnight, now)
                    self._day_cache = (key, {k: (v, getattr(limits, k)) for k, v in used.as_dict().items()})
                day = self._day_cache[1]
            except ValueError:
                day = {}  # rules of another schema: the session meters still hold
        text = meter_lines(session, started, day, midnight, now) if session or day else Text("no budgets yet", style="dim")
        if text.plain != self._budgets_shown:  # a status a second: repaint only when a figure moved
            self._budgets_shown = text.plain
            self.query_one(BudgetMeters).update(text)

    def _today_events(self, midnight: datetime) -> list:
        return [e for e in self.view.budget_events if e.ts >= midnight]

    def _draw_progress(self) -> None:
        if not self._drawable():  # also called after a refresh, which may come as the app closes
            return
        rows = [r for r in self.view.session_experiments() if not r.repair]
        baseline = self.status.best.baseline_bpb if self.status and self.status.best.baseline_bpb is not None else next(
            (r.val_bpb for r in rows if r.decision == "baseline"), None)
        points = [Point(r.number, r.val_bpb, r.decision or "") for r in rows if r.decision]
        chart = self.query_one(BpbChart)
        width = chart.size.width or 60
        height = chart.size.height or 10
        chart.update(chart_text(points, baseline, width, height))
        c = self.view.counts()
        t = Text()
        t.append("counts\n", style="bold")
        for name, style in (("keep", "green"), ("discard", ""), ("crash", "red"), ("timeout", "red"),
                            ("refused", "magenta"), ("interrupted", "yellow")):
            t.append(f"{name:<12}{c.get(name, 0):>4}\n", style=style)
        best = self.status.best if self.status else None
        if best and best.baseline_bpb is not None and best.best_bpb is not None:
            t.append(f"\nbaseline {best.baseline_bpb:.4f}\nbest     {best.best_bpb:.4f}\n"
                     f"         {best.best_bpb - best.baseline_bpb:+.4f}")
        self.query_one("#counts", Static).update(t)

    def _draw_tables(self) -> None:
        table = self.query_one("#experiments", DataTable)
        keep_row = table.cursor_row
        table.clear()
        for i, r in enumerate(self.view.experiments):
            if r.session != self.view.session:
                continue
            bpb = f"{r.val_bpb:.4f}" if r.val_bpb is not None else "-"
            delta = f"{r.val_bpb - r.best_before:+.4f}" if r.val_bpb is not None and r.best_before is not None else ""
            style = {"keep": "bold green", "crash": "red", "timeout": "red", "refused": "magenta", "interrupted": "yellow"}.get(r.decision or "", "")
            table.add_row(str(r.number), Text(r.decision or "in flight", style=style), bpb, delta,
                          Text(short(r.description, 50)), Text(short_reason(r.reason, 80)), key=str(i))
        if self.sort is not None:
            self._sort_experiments()
        if table.row_count:
            table.move_cursor(row=min(keep_row, table.row_count - 1))
        gates = self.query_one("#gates", DataTable)
        gates.clear()
        for g in reversed(self.view.gate_history):
            gates.add_row(str(g.seq), f"{g.ts.astimezone(timezone.utc):%m-%d %H:%M:%S}", g.from_state, g.to_state, g.rule,
                          g.by.removeprefix("person:"), Text(short(g.evidence, 80)))
        refusals = self.query_one("#refusals", DataTable)
        refusals.clear()
        for row, text in self.view.refusals():
            refusals.add_row(row.session, str(row.number), Text(short(row.description, 40)), Text(short(text, 100)))
        calls = self.query_one("#agent-calls", DataTable)
        calls.clear()
        for c in self.view.agent_calls[-500:]:
            calls.add_row(str(c.seq), str(c.experiment or ""), c.model, str(c.input_tokens), str(c.output_tokens),
                          f"{c.dollars:.4f}", c.stop_reason)
        amendments = self.query_one("#amendments", DataTable)
        amendments.clear()
        for a in self.view.amendments():
            amendments.add_row(a.id[:12], a.status, a.proposed.tier, str(a.proposed.version), a.proposed.by,
                               ", ".join(a.ratified_by) or "-", still_to_ratify(a), Text(short(a.proposed.why, 60)))
        log = self.query_one("#events", RichLog)
        lines = list(self.view.feed)
        new = self.view.events_seen - self._events_logged
        for line in lines[-new:] if 0 < new <= len(lines) else (lines if new > 0 else []):
            log.write(Text(line))
        self._events_logged = self.view.events_seen

    # -- sorting and detail ---------------------------------------------------------------------
    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id != "experiments":
            return
        column = str(event.label)
        reverse = bool(self.sort and self.sort[0] == column and not self.sort[1])
        self.sort = (column, reverse)
        self._sort_experiments()

    def _sort_experiments(self) -> None:
        table = self.query_one("#experiments", DataTable)
        column, reverse = self.sort
        key = next((k for k, c in table.columns.items() if str(c.label) == column), None)
        if key is None:
            return

        no_number = (-1, 0.0) if reverse else (1, 0.0)  # a row with no number sorts last either way

        def value(cell):
            text = str(cell)
            if column in NUMERIC_COLUMNS:
                try:
                    return (0, float(text))
                except ValueError:
                    return no_number
            return (0, text)

        table.sort(key, key=value, reverse=reverse)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "experiments" or event.row_key.value is None:
            return
        self.push_screen(DetailScreen(self.view.experiments[int(event.row_key.value)]))

    # -- actions -------------------------------------------------------------------------------
    def action_pause(self) -> None:
        self.operate("pause", "paused from charter tui")

    def action_resume(self) -> None:
        def send(reason: str | None) -> None:
            if reason:
                self.operate("resume", reason)
        self.push_screen(PromptScreen("Resume: why? (recorded in the ledger with your name)", "checked the crash"), send)

    def action_stop(self) -> None:
        def send(yes: bool | None) -> None:
            if yes:
                self.operate("stop", "stopped from charter tui")
        self.push_screen(ConfirmScreen("Stop the session now? The run in flight is killed, the gate goes to STOP, "
                                       "and only a resume with a reason clears it."), send)

    def action_note(self) -> None:
        def send(text: str | None) -> None:
            if text:
                self.add_note(text)
        self.push_screen(PromptScreen("Note for the ledger (recorded with your name)", "looked at experiment 7"), send)

    def action_query(self) -> None:
        def send(sql: str | None) -> None:
            if sql:
                self.run_query(sql)
        self.push_screen(PromptScreen("Read-only SQL over the ledger (events and the auditor views)",
                                      "select experiment, decision, val_bpb, reason from experiments"), send)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.by))

    async def action_quit(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.exit()

    def on_unmount(self) -> None:
        if self.feed is not None:
            self.feed.close()

    def on_file(self, work: Callable[[], object]) -> object:
        """Run `work` (which may open the ledger file when no controller answers) without overlapping
        the feed's own reads of the file in this process."""
        if self.feed is None or self.feed.live:
            return work()
        with self.feed.file_lock:
            return work()

    def tell(self, text: str, severity: str = "information") -> None:
        """A one-sentence notification (UI thread); kept in `messages` too."""
        self.messages.append(text)
        self.notify(text, severity=severity, timeout=8)

    def say(self, text: str, error: bool = False) -> None:
        """`tell` from a worker thread."""
        try:
            self.call_from_thread(self.tell, text, "error" if error else "information")
        except RuntimeError:  # the app is closing: nobody to tell
            pass

    @work(thread=True, group="actions", exit_on_error=False)
    def operate(self, op: str, reason: str) -> None:
        """pause / stop / resume through the controller (or the ledger with none running)."""
        try:
            self.say(self.on_file(lambda: operator_command(self.lab, op, by=self.by, reason=reason)))
        except (OperatorRefused, LiveError, LedgerError, LabError, OSError) as e:
            self.say(one_line(e), error=True)
        except Exception as e:  # a bug must still be one sentence here, never a traceback over the screen
            self.say(f"{op} failed: {type(e).__name__}: {one_line(e)}", error=True)

    @work(thread=True, group="actions", exit_on_error=False)
    def add_note(self, text: str) -> None:
        def write() -> str:
            try:
                return f"noted as seq {LiveClient(self.lab.state_dir).note(self.by, text)}"
            except ControllerUnreachable:
                with Ledger.open(self.lab.ledger_path, wait_s=5) as led:
                    ev = led.record(P.Note(text[:10_000]), actor=f"person:{self.by}")
                return f"noted as seq {ev.seq} (no controller running: written to the ledger)"

        try:
            self.say(self.on_file(write))
        except (LiveError, LedgerError, OSError) as e:
            self.say(f"the note was not recorded: {one_line(e)}", error=True)
        except Exception as e:
            self.say(f"the note failed: {type(e).__name__}: {one_line(e)}", error=True)

    @work(thread=True, group="actions", exit_on_error=False)
    def run_query(self, sql: str) -> None:
        try:
            result = self.on_file(lambda: audit.query(self.lab, sql, limit=QUERY_ROWS))
        except (LiveError, LedgerError, OSError) as e:
            self.say(one_line(e), error=True)
            return
        except Exception as e:
            self.say(f"the query failed: {type(e).__name__}: {one_line(e)}", error=True)
            return
        self.call_from_thread(self.push_screen, QueryScreen(sql, result))


def run_console(lab_dir: str | None, by: str | None, refresh_s: float = 1.0) -> None:
    from controller.workspace.lab import find_lab
    CharterApp(find_lab(lab_dir), by, refresh_s=refresh_s).run()
