"""Who may act as a person: the rule that agents can't vote.

An agent's calls and proposals are ledgered as `agent:<model>`. The `--by` of a person's act (a
resume, a note, a pause or stop, and ratifications) must never be an agent's identity or the
controller's own, whether it arrives from the command line or over the live channel: otherwise
an agent that can run a shell could sign itself out of a STOP. Pure; one line per refusal.
"""

from __future__ import annotations

AGENT_PREFIX = "agent:"
RESERVED = frozenset({"controller", "charter"})


def agent_identity(model: str) -> str:
    return f"{AGENT_PREFIX}{model}"


def person_refusal(by: str) -> str | None:
    """Why `by` can't stand for a person here, or None if it can."""
    name = by.strip()
    if not name:
        return "`by` must name a person"
    if "".join(name.casefold().split()).startswith(AGENT_PREFIX):
        return f"{name!r} is an agent's identity: agents can't resume, note, pause, stop or ratify"
    if name.casefold() in RESERVED:
        return f"{name!r} is the controller's own identity, not a person's"
    return None
