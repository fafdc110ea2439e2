"""What a session's events say about it, rebuilt without running anything (pure).

A controller that died mid-session left its events in the ledger; `replay_session` rebuilds what
the loop keeps in memory from them (numbers, best, history, experiments left undecided), and
`lab_outcomes` gives the gate rules their lab-wide history. The same functions serve a fresh
session (history of earlier events) and a resume, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.live.status import Progress, session_progress
from controller.policy.gates import PROPOSER_FAILED, Outcome
from controller.policy.outcomes import outcome_of
from controller.proposers.base import HistoryItem
from ledger import Decision, EventKind
from ledger.payloads import Decided, Proposed, SessionStarted


def history_item(proposed: Proposed | None, decided: Decided, decision: Decision | str, val_bpb: float | None,
                 session: str = "", experiment: int = 0) -> HistoryItem:
    """One decided experiment as a proposer learns from it."""
    p = proposed or Proposed()
    return HistoryItem(
        description=p.description or decided.description, decision=str(decision), val_bpb=val_bpb,
        source=p.source or decided.source, params=decided.params if decided.params is not None else p.params,
        improvement=decided.improvement, reason=decided.reason, rule=decided.refusal_rule,
        session=session, experiment=experiment, runs=tuple(decided.runs), threshold=decided.threshold,
        noise_sd=decided.noise_sd, lesson=p.lesson,
    )


def lab_history(events: Iterable[Any], exclude_session: str | None = None) -> list[HistoryItem]:
    """Every decided experiment of the lab's other sessions, oldest first, for proposers that
    learn across sessions."""
    proposals: dict[tuple[str, int], Proposed] = {}
    out = []
    for e in events:
        if e.session == exclude_session:
            continue
        if e.kind == EventKind.PROPOSED:
            proposals[(e.session, e.experiment)] = Proposed.from_json(e.payload)
        elif e.kind == EventKind.DECIDED:
            out.append(history_item(proposals.get((e.session, e.experiment)), Decided.from_json(e.payload),
                                    e.decision, e.val_bpb, e.session or "", e.experiment or 0))
    return out


def lab_outcomes(events: Iterable[Any], session: str | None = None) -> list[Outcome]:
    """Every decided experiment of the lab, oldest first, for the gate rules, and the failed
    proposing steps of `session` (the one resumed): an agent's trouble is the session's, so a new
    session, which a person starts, is not frozen by the last one's API outage."""
    return [outcome_of(e.decision, Decided.from_json(e.payload)) if e.kind == EventKind.DECIDED else Outcome(PROPOSER_FAILED)
            for e in events if e.kind == EventKind.DECIDED
            or (e.kind == EventKind.PROPOSER_FAILED and session is not None and e.session == session)]


def open_session(events: Iterable[Any]) -> Any | None:
    """The `session_started` event of the latest session that never ended, if any."""
    events = list(events)
    ended = {e.session for e in events if e.kind == EventKind.SESSION_ENDED}
    started = [e for e in events if e.kind == EventKind.SESSION_STARTED and e.session not in ended]
    return started[-1] if started else None


@dataclass
class Replay:
    start: SessionStarted
    progress: Progress
    history: list[HistoryItem] = field(default_factory=list)  # this session's, for proposers
    interrupted: list[tuple[int, Proposed]] = field(default_factory=list)  # proposed, never decided


def replay_session(events: Iterable[Any]) -> Replay:
    """Rebuild one session's state from its own events (oldest first)."""
    events = list(events)
    start = next(SessionStarted.from_json(e.payload) for e in events if e.kind == EventKind.SESSION_STARTED)
    proposals: dict[int, Proposed] = {}
    decided: set[int] = set()
    history: list[HistoryItem] = []
    for e in events:
        if e.kind == EventKind.PROPOSED:
            proposals[e.experiment] = Proposed.from_json(e.payload)
            decided.discard(e.experiment)  # a number may be proposed again after an interruption
        elif e.kind == EventKind.DECIDED:
            decided.add(e.experiment)
            # the baseline too: its params are what the first moves are measured from
            history.append(history_item(proposals.get(e.experiment), Decided.from_json(e.payload), e.decision, e.val_bpb,
                                        e.session or "", e.experiment or 0))
    interrupted = [(n, p) for n, p in proposals.items() if n not in decided]
    return Replay(start, session_progress(events), history, interrupted)
