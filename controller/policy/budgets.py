"""Budgets: what a session and a UTC day have consumed, against the constitution's limits.

Usage is summed from ledger events by `usage_from_events` (pure: events in, numbers out), so the
same figures serve the gate rules (budget burn), the loop's "may another experiment start?"
check, `charter status` and the auditors. A limit of 0 means nothing of that resource is allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Iterable

from constitution.schema import PeriodBudget
from ledger import Decision, EventKind
from ledger import payloads as P


@dataclass(frozen=True)
class Usage:
    experiments: int = 0
    device_seconds: float = 0.0
    wall_hours: float = 0.0
    agent_tokens: int = 0
    agent_dollars: float = 0.0
    disk_mb: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def usage_from_events(events: Iterable[Any], since: datetime | None, now: datetime, started: datetime | None = None, disk_mb: float = 0.0) -> Usage:
    """Sum usage over events at or after `since` (None = all). Events need .kind, .ts, .payload."""
    experiments, device, tokens, dollars = 0, 0.0, 0, 0.0
    for ev in events:
        if since is not None and ev.ts < since:
            continue
        kind = ev.kind
        if kind == EventKind.DECIDED:
            p = P.Decided.from_json(ev.payload)
            if p.decision in RAN and not p.repair:
                experiments += 1
        elif kind in (EventKind.TRAINING_FINISHED, EventKind.EVALUATED):
            device += float(P.read(ev).wall_seconds or 0.0)
        elif kind == EventKind.AGENT_CALL:
            call = P.AgentCall.from_json(ev.payload)
            tokens += agent_tokens(call)
            dollars += float(call.dollars or 0.0)
    wall = (now - started).total_seconds() / 3600 if started else 0.0
    return Usage(experiments, device, wall, tokens, dollars, disk_mb)


RAN = frozenset(Decision.group("ran"))
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def agent_tokens(call: P.AgentCall) -> int:
    """Every token a call processed counts against the token budget, cached ones included."""
    return sum(int(getattr(call, f) or 0) for f in TOKEN_FIELDS)


def burn(usage: Usage, limits: PeriodBudget) -> tuple[float, str]:
    """Largest fraction of any limit consumed, and which resource it is."""
    worst, which = 0.0, ""
    for name, used in usage.as_dict().items():
        limit = getattr(limits, name)
        frac = (float("inf") if used > 0 else 0.0) if limit == 0 else used / limit
        if frac > worst:
            worst, which = frac, name
    return worst, which


def exhausted(usage: Usage, limits: PeriodBudget) -> str | None:
    """The first resource with no room for one more experiment, or None."""
    if limits.experiments == 0 or usage.experiments >= limits.experiments:
        return f"experiments {usage.experiments}/{limits.experiments}"
    for name in ("device_seconds", "wall_hours", "agent_tokens", "agent_dollars", "disk_mb"):
        used, limit = getattr(usage, name), getattr(limits, name)
        if used >= limit and (limit > 0 or used > 0):
            return f"{name} {used:.6g}/{limit:g}"
    return None
