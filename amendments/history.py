"""Where every amendment stands, folded from the ledger's events alone.

One `AmendmentRecord` per `amendment_proposed`: its ratifications that count (refused attempts
kept apart), a rejection, the application. Status is `applied`, `rejected`, `ratified` (enough
ratifications for its tier, not applied yet) or `pending`. `resolve` turns what a person typed (a
full id or a unique prefix) into one record. Pure: events in, typed records out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from ledger import EventKind, payloads

from amendments.errors import AmendmentRefused

KINDS = [EventKind.AMENDMENT_PROPOSED, EventKind.AMENDMENT_RATIFIED, EventKind.AMENDMENT_REJECTED,
         EventKind.AMENDMENT_APPLIED]
MIN_PREFIX = 6


@dataclass(frozen=True)
class Act:
    """One ratification (or refused attempt) or rejection, as the ledger holds it."""

    seq: int
    ts: datetime
    by: str
    signed: bool = False
    fingerprint: str = ""
    why: str = ""  # the rejection's reason, or why an attempt was refused


@dataclass
class AmendmentRecord:
    proposed: payloads.AmendmentProposed
    seq: int
    ts: datetime
    actor: str
    ratifications: list[Act] = field(default_factory=list)
    refused: list[Act] = field(default_factory=list)
    rejected: Act | None = None
    applied: payloads.AmendmentApplied | None = None
    applied_ts: datetime | None = None

    @property
    def id(self) -> str:
        return self.proposed.amendment_id

    @property
    def ratified_by(self) -> list[str]:
        return [a.by for a in self.ratifications]

    @property
    def status(self) -> str:
        if self.applied is not None:
            return "applied"
        if self.rejected is not None:
            return "rejected"
        if len(self.ratifications) >= self.proposed.needed:
            return "ratified"
        return "pending"

    @property
    def still_needed(self) -> int:
        return max(0, self.proposed.needed - len(self.ratifications))

    def may_still_ratify(self) -> list[str]:
        """Listed ratifiers who could still add a ratification (not the proposer, not twice)."""
        done = set(self.ratified_by)
        return [n for n in self.proposed.ratifiers if n not in done and n != self.proposed.by]

    def to_json(self) -> dict[str, Any]:
        p = self.proposed
        return {
            "id": p.amendment_id, "number": p.number, "path": p.path, "status": self.status, "tier": p.tier,
            "proposed_by": p.by, "proposed_at": stamp(self.ts), "why": p.why,
            "version": p.version, "parent_version": p.parent_version, "parent_hash": p.parent_hash, "hash": p.hash,
            "needed": p.needed, "still_needed": self.still_needed if self.status in ("pending", "ratified") else 0,
            "may_still_ratify": self.may_still_ratify() if self.status == "pending" else [],
            "ratifications": [{"by": a.by, "signed": a.signed, "fingerprint": a.fingerprint, "at": stamp(a.ts)} for a in self.ratifications],
            "refused_ratifications": [{"by": a.by, "why": a.why, "at": stamp(a.ts)} for a in self.refused],
            "rejected": None if self.rejected is None else {"by": self.rejected.by, "why": self.rejected.why, "at": stamp(self.rejected.ts)},
            "applied": None if self.applied is None else {"version": self.applied.version, "hash": self.applied.hash,
                                                          "at": stamp(self.applied_ts)},
            "changes": list(p.changes),
        }


def stamp(ts: datetime | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _person(actor: str, by: str) -> str:
    return by or actor.removeprefix("person:")


def fold(events: Iterable[Any]) -> dict[str, AmendmentRecord]:
    """Every amendment by id, in the order proposed."""
    records: dict[str, AmendmentRecord] = {}
    for ev in events:
        if ev.kind not in KINDS:
            continue
        p = payloads.read(ev)
        if ev.kind == EventKind.AMENDMENT_PROPOSED:
            records.setdefault(p.amendment_id, AmendmentRecord(p, ev.seq, ev.ts, ev.actor))
            continue
        rec = records.get(p.amendment_id)
        if rec is None:
            continue  # an act on an id never proposed: a refused attempt at most, nothing to fold
        if ev.kind == EventKind.AMENDMENT_RATIFIED:
            act = Act(ev.seq, ev.ts, _person(ev.actor, p.by), p.signed, p.fingerprint, p.refused)
            (rec.refused if p.refused else rec.ratifications).append(act)
        elif ev.kind == EventKind.AMENDMENT_REJECTED and rec.rejected is None:
            rec.rejected = Act(ev.seq, ev.ts, _person(ev.actor, p.by), why=p.reason)
        elif ev.kind == EventKind.AMENDMENT_APPLIED and rec.applied is None:
            rec.applied, rec.applied_ts = p, ev.ts
    return records


def highest_applied(records: dict[str, AmendmentRecord]) -> int:
    return max((r.applied.version for r in records.values() if r.applied is not None), default=0)


def resolve(records: dict[str, AmendmentRecord], typed: str) -> AmendmentRecord:
    """The record a person means by a full id or a unique prefix of at least MIN_PREFIX characters."""
    key = typed.strip().lower()
    if key in records:
        return records[key]
    if len(key) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in key):
        raise AmendmentRefused(f"{typed!r} is not an amendment id (64 hex characters, or a unique prefix of {MIN_PREFIX} or more); see charter amend list")
    found = [r for i, r in records.items() if i.startswith(key)]
    if not found:
        raise AmendmentRefused(f"no amendment {typed} in this lab's ledger; see charter amend list")
    if len(found) > 1:
        raise AmendmentRefused(f"{typed} is the start of {len(found)} amendment ids; type more of it")
    return found[0]
