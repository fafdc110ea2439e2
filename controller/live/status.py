"""The status of a lab as one typed value: gate state and why, the session, the experiment in flight, budgets, best vs baseline.

`StatusSnapshot` serves `charter status`, `charter status --json`, the live channel's `status`
and `watch` replies and the TUI; its `to_json()` is the JSON shape those have always printed and
`from_json()` reads it back. A running controller builds one with `build_status` after every event
and publishes it to `.charter/status.json` with `write_status` (a uniquely named temporary file,
then a rename, so concurrent writers never trip over each other and a reader never sees half a
file); with no controller running, `charter status` builds the same value from the ledger.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from constitution import Constitution
from controller.policy import budgets
from ledger import EventKind
from ledger.payloads import Decided

STATUS_FILE = "status.json"


# -- what the session keeps in memory ---------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a session stands, as its events say (pure; for resume and for status)."""

    experiments: int = 0  # the highest experiment number proposed
    baseline_bpb: float | None = None
    best_bpb: float | None = None
    best_commit: str | None = None
    keeps: int = 0


def session_progress(events: Iterable[Any]) -> Progress:
    experiments, baseline, best, best_commit, keeps = 0, None, None, None, 0
    for e in events:
        if e.kind in (EventKind.PROPOSED, EventKind.DECIDED):
            experiments = max(experiments, e.experiment or 0)
        if e.kind != EventKind.DECIDED:
            continue
        if e.decision == "baseline" and not Decided.from_json(e.payload).repair:
            baseline = best = e.val_bpb
            best_commit = e.commit_sha
        elif e.decision == "keep":
            best, best_commit = e.val_bpb, e.commit_sha
            keeps += 1
    return Progress(experiments, baseline, best, best_commit, keeps)


@dataclass
class Inflight:
    """The experiment the loop is working on now (mutable: the loop moves it through its steps)."""

    experiment: int
    description: str
    step: str
    started: float  # time.time()
    deadline: float | None = None  # time.time() at which the run is killed, while training
    pid: int | None = None  # the sandboxed run's process group, for an operator's stop


@dataclass(frozen=True)
class SessionView:
    """The few facts about a session that status shows, whoever builds it (loop or ledger)."""

    id: str
    tag: str
    branch: str
    started: datetime
    ended: str | None = None  # why it ended, for a session that is over


# -- the snapshot -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateStatus:
    state: str
    held_by_operator: bool = False
    rule: str | None = None  # the rule of the last transition
    evidence: str | None = None


@dataclass(frozen=True)
class SessionStatus:
    id: str | None = None  # None: no session yet
    tag: str | None = None
    branch: str | None = None
    started: datetime | None = None
    experiments: int = 0
    keeps: int = 0
    ended: str | None = None


@dataclass(frozen=True)
class InflightStatus:
    experiment: int
    description: str
    step: str
    elapsed_seconds: float
    seconds_left: float | None = None


@dataclass(frozen=True)
class ResourceUse:
    used: float
    limit: float


@dataclass(frozen=True)
class BudgetStatus:
    session: Mapping[str, ResourceUse]  # resource -> use, in `budgets.Usage` field order
    burn: float  # the largest fraction of a limit used; inf when a limit of 0 was used at all
    burn_resource: str


@dataclass(frozen=True)
class BestStatus:
    baseline_bpb: float | None = None
    best_bpb: float | None = None
    best_commit: str | None = None
    improvement: float | None = None


@dataclass(frozen=True)
class StatusSnapshot:
    gate: GateStatus
    session: SessionStatus
    inflight: InflightStatus | None
    budgets: BudgetStatus
    best: BestStatus
    running: bool
    pid: int | None
    updated: datetime
    stale: bool = False  # a reader's mark: the controller did not answer, this is its last published one
    in_flight: tuple[InflightStatus, ...] = ()  # with several workers: every experiment in flight, oldest first

    def to_json(self) -> dict[str, Any]:
        """The JSON shape `charter status --json` and status.json have always had."""
        g, s, b = self.gate, self.session, self.budgets
        session: dict[str, Any] = {
            "id": s.id, "tag": s.tag, "branch": s.branch, "started": _iso(s.started),
            "experiments": s.experiments, "keeps": s.keeps,
        }
        if s.ended is not None:  # present only for a session that is over, as before
            session["ended"] = s.ended
        out: dict[str, Any] = {
            "running": self.running,
            "pid": self.pid,
            "updated": _iso(self.updated),
            "gate": {"state": g.state, "held_by_operator": g.held_by_operator, "rule": g.rule, "evidence": g.evidence},
            "session": session,
            "inflight": None if self.inflight is None else _flight_json(self.inflight),
            "budgets": {
                "session": {k: {"used": v.used, "limit": v.limit} for k, v in b.session.items()},
                "burn": "inf" if math.isinf(b.burn) else b.burn,  # JSON has no infinity
                "burn_resource": b.burn_resource,
            },
            "best": {"baseline_bpb": self.best.baseline_bpb, "best_bpb": self.best.best_bpb,
                     "best_commit": self.best.best_commit, "improvement": self.best.improvement},
        }
        if self.in_flight:  # several workers only: a single-worker status keeps its shape
            out["in_flight"] = [_flight_json(f) for f in self.in_flight]
        if self.stale:
            out["stale"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusSnapshot:
        """Read `to_json()`'s shape back; raises ValueError (or KeyError/TypeError) on anything else."""
        g, s, b, best, f = data["gate"], data["session"], data["budgets"], data["best"], data.get("inflight")
        burn = b["burn"]
        return cls(
            gate=GateStatus(g["state"], bool(g.get("held_by_operator")), g.get("rule"), g.get("evidence")),
            session=SessionStatus(s.get("id"), s.get("tag"), s.get("branch"), _datetime(s.get("started")),
                                  int(s.get("experiments", 0)), int(s.get("keeps", 0)), s.get("ended")),
            inflight=None if f is None else _flight(f),
            in_flight=tuple(_flight(x) for x in data.get("in_flight") or ()),
            budgets=BudgetStatus(
                {k: ResourceUse(v["used"], v["limit"]) for k, v in b["session"].items()},
                math.inf if burn == "inf" else float(burn), b.get("burn_resource", "")),
            best=BestStatus(best.get("baseline_bpb"), best.get("best_bpb"), best.get("best_commit"), best.get("improvement")),
            running=bool(data["running"]),
            pid=data.get("pid"),
            updated=_datetime(data["updated"]),
            stale=bool(data.get("stale", False)),
        )


def _flight_json(f: InflightStatus) -> dict[str, Any]:
    return {"experiment": f.experiment, "description": f.description, "step": f.step,
            "elapsed_seconds": f.elapsed_seconds, "seconds_left": f.seconds_left}


def _flight(f: Mapping[str, Any]) -> InflightStatus:
    return InflightStatus(int(f["experiment"]), f.get("description", ""), f.get("step", ""),
                          float(f.get("elapsed_seconds", 0.0)), f.get("seconds_left"))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _datetime(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def build_status(*, rules: Constitution, gate, gate_rule: str | None, gate_evidence: str | None,
                 session: SessionView | None, progress: Progress, usage: budgets.Usage, inflight: Inflight | None,
                 running: bool, pid: int | None, now: datetime, flights: list[Inflight] = ()) -> StatusSnapshot:
    """The snapshot of a lab from what its owner knows (`gate` is a GateMachine or anything with
    `state` and `held_by_operator`); pure but for reading the clock for the experiment in flight."""
    limits = rules.budgets.session
    frac, which = budgets.burn(usage, limits)
    clock = time.time()

    def view(f: Inflight) -> InflightStatus:
        return InflightStatus(f.experiment, f.description, f.step, elapsed_seconds=round(clock - f.started, 1),
                              seconds_left=round(f.deadline - clock, 1) if f.deadline else None)
    flight = None if inflight is None else view(inflight)
    baseline, best = progress.baseline_bpb, progress.best_bpb
    return StatusSnapshot(
        gate=GateStatus(gate.state, gate.held_by_operator, gate_rule, gate_evidence),
        session=SessionStatus() if session is None else SessionStatus(
            session.id, session.tag, session.branch, session.started, progress.experiments, progress.keeps, session.ended),
        inflight=flight,
        in_flight=tuple(view(f) for f in sorted(flights, key=lambda f: f.experiment)),
        budgets=BudgetStatus(
            {k: ResourceUse(round(v, 4), getattr(limits, k)) for k, v in usage.as_dict().items()},
            frac if math.isinf(frac) else round(frac, 4), which),
        best=BestStatus(baseline, best, progress.best_commit,
                        round(baseline - best, 6) if baseline is not None and best is not None else None),
        running=running,
        pid=pid,
        updated=now,
    )


# -- the published file -----------------------------------------------------------------------------


def write_status(state_dir: Path, snapshot: StatusSnapshot) -> None:
    """Publish `snapshot` as state_dir/status.json, atomically.

    Each call writes its own uniquely named temporary file (several threads of the controller,
    or a controller and a tool, may publish at once; a name made of the PID alone let one writer
    rename another's file away) and renames it over the old one, so a reader sees the old file
    or the new one, never a mix.
    """
    text = json.dumps(snapshot.to_json(), indent=2, default=str)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{STATUS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, state_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(state_dir: Path) -> StatusSnapshot | None:
    """The last published snapshot, or None if there is none (or it cannot be read)."""
    try:
        return StatusSnapshot.from_json(json.loads((state_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
