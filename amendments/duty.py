"""Who may ratify, reject or apply what, and when: separation of duty, thresholds, cooling.

Each function answers one question with the refusal line a person reads, or None when the act may
go ahead. A ratifier must be listed in the constitution the amendment was proposed under, must
not be its proposer, must not be an agent or the controller (`person_refusal`), and counts once;
an amendment is applied only when its tier's threshold is met, its cooling time has passed, it
still follows the constitution in force, and its version is above every version ever applied.
Pure: records and numbers in, a sentence or None out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from controller.policy.identity import person_refusal

from amendments.history import AmendmentRecord


def _closed(rec: AmendmentRecord) -> str | None:
    if rec.status == "applied":
        return f"amendment {rec.id[:12]} was already applied (version {rec.applied.version})"
    if rec.status == "rejected":
        return f"amendment {rec.id[:12]} was rejected by {rec.rejected.by} ({rec.rejected.why}); a new proposal needs a changed text"
    return None


def _not_a_person_or_closed(rec: AmendmentRecord, by: str) -> str | None:
    """What refuses any act on `rec`: `by` is not a person's name, or the amendment is closed."""
    return person_refusal(by) or _closed(rec)


def ratify_refusal(rec: AmendmentRecord, by: str) -> str | None:
    """Why `by` may not ratify `rec` now, or None."""
    refused = _not_a_person_or_closed(rec, by)
    if refused:
        return refused
    p = rec.proposed
    if by == p.by or by == rec.actor.removeprefix("person:"):
        return f"{by} proposed amendment {rec.id[:12]} and can't ratify it (separation of duty: another ratifier must)"
    if by not in p.ratifiers:
        listed = ", ".join(p.ratifiers) or "nobody"
        return f"{by} is not a ratifier of this lab (amendment.ratifiers lists {listed})"
    if by in rec.ratified_by:
        return f"{by} has already ratified amendment {rec.id[:12]}; each ratifier counts once"
    return None


def reject_refusal(rec: AmendmentRecord, by: str) -> str | None:
    """Why `by` may not reject `rec`: only a listed ratifier, or its proposer withdrawing it."""
    refused = _not_a_person_or_closed(rec, by)
    if refused:
        return refused
    p = rec.proposed
    if by not in p.ratifiers and by != p.by:
        return f"{by} is neither a ratifier of this lab nor the proposer of amendment {rec.id[:12]}"
    return None


def apply_refusal(rec: AmendmentRecord, in_force_hash: str, in_force_version: int, highest_applied: int,
                  now: datetime) -> str | None:
    """Why `rec` may not be applied now (the session boundary is checked by the caller), or None."""
    closed = _closed(rec)
    if closed:
        return closed
    p = rec.proposed
    if rec.status != "ratified":
        return (f"amendment {rec.id[:12]} ({p.tier}) has {len(rec.ratifications)} of the {p.needed} ratifications it needs; "
                f"may still ratify: {', '.join(rec.may_still_ratify()) or 'nobody'}")
    if p.parent_hash != in_force_hash or p.parent_version != in_force_version:
        return (f"amendment {rec.id[:12]} was proposed against version {p.parent_version} ({p.parent_hash[:12]}) but version "
                f"{in_force_version} ({in_force_hash[:12]}) is in force now: propose it again against the constitution in force")
    if p.version <= highest_applied:
        return (f"amendment {rec.id[:12]} would make version {p.version}, at or below version {highest_applied} already applied: "
                f"a rollback is refused; undo a change with a new amendment")
    ready = rec.ts + timedelta(hours=p.cooling_hours)
    if now < ready:
        return (f"amendment {rec.id[:12]} is cooling: cooling_hours = {p.cooling_hours:g} after its proposal, "
                f"it may be applied from {ready.strftime('%Y-%m-%d %H:%M:%S')} UTC")
    return None
