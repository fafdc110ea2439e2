"""What the console knows about a lab, folded from its ledger events: pure, no IO, no widgets.

`LabView.apply(events)` takes events in seq order (the live channel's `WireEvent`s, or ledger
`Event`s converted to them) and keeps what the screens show: the current session and the
constitution it runs under, every experiment with its runs, diff, reason and refusal evidence,
the gate's history, refusals, agent calls, amendments, notes and a bounded feed of one-line
event summaries. The latest status snapshot (from the controller or rebuilt from the ledger) is
kept beside it by the app; this module only answers questions of the events. Everything an
agent or a run wrote (descriptions, diffs, log tails, evidence) is untrusted text: it is kept as
it came and made printable where it is shown (`controller.execution.log_tail.printable`).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.session.narrator import event_line, short, short_reason
from amendments.history import AmendmentRecord
from amendments.history import fold as fold_amendments
from ledger import Event, EventKind
from ledger import payloads as P

FEED_LINES = 500  # the live feed keeps this many lines
BUDGET_KINDS = frozenset({EventKind.DECIDED, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.AGENT_CALL})
DECISIONS = ("keep", "discard", "crash", "timeout", "refused", "interrupted")


@dataclass
class RunRecord:
    """One training run of an experiment (a baseline or a candidate may have several)."""

    run: int
    returncode: int | None = None
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    timed_out: bool = False
    val_bpb: float | None = None
    status: str = ""
    log_tail: str = ""
    peak_vram_mb: float | None = None  # the controller's NVML reading (GPU labs)
    mfu: float | None = None


@dataclass
class ExperimentRow:
    session: str
    number: int
    description: str = ""
    hypothesis: str = ""
    source: str = ""
    decision: str | None = None  # None while in flight
    val_bpb: float | None = None
    reason: str = ""
    commit: str | None = None
    diff: str = ""
    best_before: float | None = None
    threshold: float | None = None
    runs: list[RunRecord] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    repair: bool = False
    decided_at: datetime | None = None


@dataclass(frozen=True)
class GateRow:
    seq: int
    ts: datetime
    from_state: str
    to_state: str
    rule: str
    evidence: str
    by: str
    held: bool


@dataclass(frozen=True)
class AgentCallRow:
    seq: int
    experiment: int | None
    model: str
    input_tokens: int
    output_tokens: int
    dollars: float
    stop_reason: str


@dataclass
class LabView:
    head_seq: int = 0
    session: str | None = None
    tag: str = ""
    branch: str = ""
    session_started: datetime | None = None
    session_ended: str | None = None
    constitution_version: int | None = None
    constitution_hash: str = ""
    rules: dict[str, Any] | None = None  # the full rules of the latest constitution_loaded
    experiments: list[ExperimentRow] = field(default_factory=list)
    gate_history: list[GateRow] = field(default_factory=list)
    agent_calls: list[AgentCallRow] = field(default_factory=list)
    # amendment events, few: folded on demand by the amendments package's own rules (who counts)
    amendment_events: list[Event] = field(default_factory=list)
    feed: deque[str] = field(default_factory=lambda: deque(maxlen=FEED_LINES))
    run_dir: str | None = None  # the run in flight's directory (its train.log is the Now tail)
    run_experiment: int | None = None  # whose run that is
    # with several workers, every run still in flight in this session, oldest start first: one
    # experiment's decision must not end another's tail
    run_dirs: dict[int | None, str] = field(default_factory=dict)
    budget_events: list[Any] = field(default_factory=list)  # the kinds budgets count, for the day's meters
    events_seen: int = 0

    # -- folding ---------------------------------------------------------------------------------
    def apply(self, events: list[Any]) -> None:
        for ev in events:
            if ev.seq <= self.head_seq:
                continue  # already seen (a reconnect re-reads from the last seq)
            self._apply_one(ev)
            self.head_seq = ev.seq
            self.events_seen += 1

    def _row(self, ev: Any, create: bool = True) -> ExperimentRow | None:
        """The row of this event's (session, experiment): the last one, or a new one when the last
        is decided and this event starts another (an experiment number reused after a resume)."""
        if ev.experiment is None or ev.session is None:
            return None
        for row in reversed(self.experiments):
            if row.session == ev.session and row.number == ev.experiment:
                if row.decision is None or not create or ev.kind != EventKind.PROPOSED:
                    return row
                break
        if not create:
            return None
        row = ExperimentRow(ev.session, ev.experiment)
        self.experiments.append(row)
        return row

    def _apply_one(self, ev: Any) -> None:
        kind = ev.kind
        self.feed.append(feed_line(ev))
        if kind in BUDGET_KINDS:
            self.budget_events.append(ev)
        if kind in (EventKind.SESSION_STARTED, EventKind.SESSION_RESUMED):
            p = P.read(ev)
            if kind == EventKind.SESSION_STARTED:
                self.session_started, self.branch = ev.ts, p.branch
            self.session, self.tag, self.session_ended = ev.session, p.tag, None
            self.constitution_version, self.constitution_hash = p.constitution_version, p.constitution_hash
            self._no_runs()
        elif kind == EventKind.SESSION_ENDED:
            self.session_ended = P.read(ev).reason
            self._no_runs()
        elif kind in (EventKind.CONSTITUTION_LOADED, EventKind.LAB_CREATED, EventKind.AMENDMENT_APPLIED):
            p = P.read(ev)
            self.constitution_version = p.version if kind != EventKind.LAB_CREATED else p.constitution_version
            self.constitution_hash = p.hash if kind != EventKind.LAB_CREATED else p.constitution_hash
            if kind == EventKind.CONSTITUTION_LOADED and p.rules:
                self.rules = p.rules
            if kind == EventKind.AMENDMENT_APPLIED:
                self.amendment_events.append(ev)
        elif kind == EventKind.PROPOSED:
            row = self._row(ev)
            p = P.read(ev)
            if row is not None:
                row.description, row.hypothesis, row.source = p.description, p.hypothesis, p.source
        elif kind == EventKind.HARM_REFUSED:
            row = self._row(ev, create=False)
            if row is not None:
                p = P.read(ev)
                row.refusals = [refusal_text(item) for item in p.refusals]
                row.diff = row.diff or p.diff
        elif kind == EventKind.COMMITTED:
            row = self._row(ev, create=False)
            if row is not None:
                row.diff, row.commit = P.read(ev).diff, ev.commit_sha
        elif kind == EventKind.TRAINING_STARTED:
            p = P.read(ev)
            row = self._row(ev, create=False)
            if row is not None:
                row.runs.append(RunRecord(p.run))
            if ev.session == self.session:
                self.run_dirs.pop(ev.experiment, None)  # a rerun of the same experiment is its newest run
                self.run_dirs[ev.experiment] = p.run_dir
                self._latest_run()
        elif kind == EventKind.TRAINING_FINISHED:
            row, p = self._row(ev, create=False), P.read(ev)
            run = _run(row, p.run)
            if run is not None:
                run.returncode, run.wall_seconds, run.peak_rss_mb = p.returncode, p.wall_seconds, p.peak_rss_mb
                run.timed_out, run.log_tail = p.timed_out, p.log_tail_untrusted
                run.peak_vram_mb, run.mfu = p.peak_vram_mb, p.mfu
        elif kind == EventKind.EVALUATED:
            row, p = self._row(ev, create=False), P.read(ev)
            run = _run(row, p.run)
            if run is not None:
                run.val_bpb, run.status = ev.val_bpb, p.status
        elif kind == EventKind.DECIDED:
            row = self._row(ev)
            p = P.read(ev)
            if row is not None:
                row.decision, row.val_bpb, row.reason = p.decision, ev.val_bpb, p.reason
                row.description = row.description or p.description
                row.best_before, row.threshold, row.repair = p.best_before, p.threshold, p.repair
                row.commit = ev.commit_sha or row.commit
                row.decided_at = ev.ts
            if ev.session == self.session:
                self.run_dirs.pop(ev.experiment, None)
                self._latest_run()
        elif kind == EventKind.GATE_TRANSITION:
            p = P.read(ev)
            self.gate_history.append(GateRow(ev.seq, ev.ts, p.from_state, p.to_state, p.rule, p.evidence, p.by, p.held))
        elif kind == EventKind.AGENT_CALL:
            p = P.read(ev)
            self.agent_calls.append(AgentCallRow(ev.seq, ev.experiment, p.model, p.input_tokens, p.output_tokens,
                                                 p.dollars, p.stop_reason))
        elif kind in (EventKind.AMENDMENT_PROPOSED, EventKind.AMENDMENT_RATIFIED, EventKind.AMENDMENT_REJECTED):
            self.amendment_events.append(ev)

    def _no_runs(self) -> None:
        self.run_dirs.clear()
        self._latest_run()

    def _latest_run(self) -> None:
        """The Now tail follows the latest run started that is still in flight (with one worker:
        the run in flight, or none once it is decided)."""
        self.run_experiment = next(reversed(self.run_dirs), None)
        self.run_dir = self.run_dirs.get(self.run_experiment)

    # -- questions -------------------------------------------------------------------------------
    def session_experiments(self) -> list[ExperimentRow]:
        """The current session's experiments, in the order they were proposed."""
        return [r for r in self.experiments if r.session == self.session]

    def counts(self) -> Counter[str]:
        """Decisions of the current session's experiments (the baseline and repairs not counted)."""
        return Counter(r.decision for r in self.session_experiments() if r.decision in DECISIONS and not r.repair)

    def last_gate(self) -> GateRow | None:
        return self.gate_history[-1] if self.gate_history else None

    def refusals(self) -> list[tuple[ExperimentRow, str]]:
        return [(r, text) for r in self.experiments for text in r.refusals]

    def amendments(self) -> list[AmendmentRecord]:
        """Every amendment, as `charter amend status` sees it (refused attempts don't count)."""
        return list(fold_amendments(self.amendment_events).values())

    def pending_amendments(self) -> list[AmendmentRecord]:
        return [a for a in self.amendments() if a.status in ("pending", "ratified")]


def _run(row: ExperimentRow | None, index: int) -> RunRecord | None:
    if row is None:
        return None
    for run in reversed(row.runs):
        if run.run == index:
            return run
    run = RunRecord(index)
    row.runs.append(run)
    return run


def refusal_text(item: Any) -> str:
    where = f" {item.path}:{item.line}" if item.path and item.line else f" {item.path}" if item.path else ""
    hard = " (hard)" if item.hard else ""
    return f"{item.rule}{hard}{where}: {short(item.evidence, 200)}"


def feed_line(ev: Any) -> str:
    """One line per event for the live feed: seq, time, kind, actor and what it says."""
    if ev.kind == EventKind.DECIDED:
        p = P.read(ev)
        bpb = f" val_bpb {ev.val_bpb:.4f}" if ev.val_bpb is not None else ""
        what = f"#{ev.experiment} {p.decision}{bpb}: {short_reason(p.reason, 90)}"
    elif ev.kind == EventKind.PROPOSED:
        what = f"#{ev.experiment} {short(P.read(ev).description, 90)}"
    else:
        try:
            what = event_line(ev) or ""
        except (ValueError, KeyError):  # a kind this version does not know
            what = ""
    return f"{ev.seq:>6}  {ev.ts:%H:%M:%S}  {str(ev.kind):<19} {short(ev.actor, 24):<24} {what}".rstrip()


def still_to_ratify(a: AmendmentRecord) -> str:
    """Who must still ratify, in words: the amendments tab's column."""
    if a.status == "pending":
        names = ", ".join(a.may_still_ratify()) or "no listed ratifier is left"
        return f"{a.still_needed} more of: {names}"
    if a.status == "ratified":
        return f"nobody ({len(a.ratifications)} of {a.proposed.needed}): ready to apply"
    return "-"
