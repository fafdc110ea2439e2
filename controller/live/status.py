"""The status of a lab: gate state and why, the session, the experiment in flight, budgets, best vs baseline.

One dictionary shape serves `charter status`, `charter status --json` and the TUI. A running
controller writes it to `.charter/status.json` after every event (atomically: write, then
rename), so readers never open the ledger while a session holds it; with no controller running,
`charter status` rebuilds the same shape from the ledger itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from constitution import Constitution
from controller.policy import budgets

STATUS_FILE = "status.json"


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
        kind = str(e.kind)
        if kind in ("proposed", "decided"):
            experiments = max(experiments, e.experiment or 0)
        if kind != "decided":
            continue
        if e.decision == "baseline" and not e.payload.get("repair"):
            baseline = best = e.val_bpb
            best_commit = e.commit_sha
        elif e.decision == "keep":
            best, best_commit = e.val_bpb, e.commit_sha
            keeps += 1
    return Progress(experiments, baseline, best, best_commit, keeps)


def build_status(*, rules: Constitution, gate, session_id, tag, branch, started: datetime | None, experiment: int,
                 baseline, best, best_commit, keeps: int, usage: budgets.Usage, inflight, running: bool, pid: int | None,
                 now: datetime, gate_rule: str | None = None, gate_evidence: str | None = None) -> dict[str, Any]:
    limits = rules.budgets.session
    frac, which = budgets.burn(usage, limits)
    flight = None
    if inflight is not None:
        flight = {
            "experiment": inflight.experiment, "description": inflight.description, "step": inflight.step,
            "elapsed_seconds": round(time.time() - inflight.started, 1),
            "seconds_left": round(inflight.deadline - time.time(), 1) if inflight.deadline else None,
        }
    return {
        "running": running,
        "pid": pid,
        "updated": now.isoformat(),
        "gate": {"state": gate.state, "held_by_operator": gate.held_by_operator, "rule": gate_rule, "evidence": gate_evidence},
        "session": {"id": session_id, "tag": tag, "branch": branch, "started": started.isoformat() if started else None,
                     "experiments": experiment, "keeps": keeps},
        "inflight": flight,
        "budgets": {"session": {k: {"used": round(v, 4), "limit": getattr(limits, k)} for k, v in usage.as_dict().items()},
                    "burn": round(frac, 4) if frac != float("inf") else "inf", "burn_resource": which},
        "best": {"baseline_bpb": baseline, "best_bpb": best, "best_commit": best_commit,
                  "improvement": round(baseline - best, 6) if baseline is not None and best is not None else None},
    }


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    tmp = state_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, state_dir / STATUS_FILE)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
