"""The constitution in force: may a session start or resume under the lab's constitution.toml?

Pure decision logic over ledger events (no DuckDB, no git). Until a lab's first session starts its
owner may edit and commit the constitution freely; the first session records what is in force.
From then on the file must either be exactly that version (same canonical hash) or a version the
ledger says was applied by ratified amendments chained from it, each `amendment_applied` naming
the in-force hash as its parent and version + 1. Anything else is a hand edit with no record of
how it got there, and it is refused with one line naming what changed (from the rules that a
session's `constitution_loaded` event recorded, or the hashes where none were recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

import constitution
from constitution import Constitution
from constitution.diff import semantic_diff, value_text
from constitution.loader import validate_data
from ledger import EventKind, payloads

MAX_KEYS_SHOWN = 3  # a refusal stays one readable line; the rest is counted
MAX_VALUE_CHARS = 24  # long values (sha256 pins, patterns) are shortened in a refusal

REMEDY = "restore it with git checkout; after a lab's first session only a ratified amendment may change it"


@dataclass(frozen=True)
class InForce:
    """The constitution the ledger records as in force."""

    hash: str  # canonical hash (constitution.constitution_hash)
    version: int
    rules: dict[str, Any] | None  # its model_dump(mode="json"), where a constitution_loaded recorded it
    parent_hash: str = ""  # set when it came from an applied amendment: the version it followed
    amendment_id: str = ""  # the applied amendment that made it in force ("" = a session recorded it)


def constitution_in_force(events: Iterable[Any]) -> InForce | None:
    """The constitution in force after `events` (in ledger order); None before any session started.

    A session's start or resume records the hash it ran under; an applied amendment moves the
    record forward only if it follows it (parent hash = the in-force hash, version = in-force + 1),
    so a chain of amendments applied between sessions is followed step by step, and one that
    does not follow changes nothing. Older ledgers whose session_resumed lacks the hash keep the
    record of the session's start; a session event without a hash falls back on the hash of the
    `constitution_loaded` the session recorded at its start.
    """
    current: InForce | None = None
    rules_by_hash: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev.kind in (EventKind.SESSION_STARTED, EventKind.SESSION_RESUMED):
            p = payloads.read(ev)
            if p.constitution_hash:
                current = InForce(p.constitution_hash, p.constitution_version, None)
        elif ev.kind == EventKind.CONSTITUTION_LOADED:
            p = payloads.read(ev)
            if p.hash and p.rules is not None:
                rules_by_hash[p.hash] = p.rules
            # inside a session it is the session's own record of what it runs under; outside one
            # (charter prepare pinning hashes before the first session) it puts nothing in force
            if p.hash and ev.session is not None:
                current = InForce(p.hash, p.version, None)
        elif ev.kind == EventKind.AMENDMENT_APPLIED and current is not None:
            p = payloads.read(ev)
            if p.parent_hash == current.hash and p.version == current.version + 1:
                current = InForce(p.hash, p.version, None, p.parent_hash, p.amendment_id)
    if current is None:
        return None
    return replace(current, rules=rules_by_hash.get(current.hash))


def check_in_force(current: Constitution, events: Iterable[Any], label: str = "constitution.toml") -> str | None:
    """None when `current` may be used now; otherwise the one-line refusal to show the person."""
    events = list(events)
    in_force = constitution_in_force(events)
    if in_force is None:
        return None  # no session yet: the owner's committed hand edits become version 1
    digest = constitution.constitution_hash(current)
    if digest == in_force.hash:
        return _meta_disagreement(current, in_force, label)
    if in_force.rules is not None and _same_rules_under_this_schema(in_force.rules, digest):
        return None  # the file is unchanged; only this Charter's schema grew a field with a default

    if in_force.rules is not None:
        changes = changed_keys(in_force.rules, current.model_dump(mode="json"))
    else:
        changes = []
    if not changes:  # the old rules are not recorded (or differ only in what the hash covers)
        changes = [f"hash {in_force.hash[:12]} -> {digest[:12]}"]
    what = "; ".join(changes[:MAX_KEYS_SHOWN])
    if len(changes) > MAX_KEYS_SHOWN:
        what += f"; and {len(changes) - MAX_KEYS_SHOWN} more"

    # an amendment recorded for exactly this version, that does not follow the one in force, is
    # named: the person then knows the ledger knows it, and why it did not count
    stray = _amendment_making(digest, events)
    name = (stray.amendment_id[:12] or "(no id)") if stray is not None else ""
    if stray is None:
        how = "the ledger records no amendment that made this version"
    elif stray.version <= in_force.version:
        how = f"amendment {name} made this version ({stray.version}), but version {in_force.version} is in force now"
    else:
        why = []
        if stray.version != in_force.version + 1:
            why.append(f"its version is {stray.version}, not {in_force.version + 1}")
        if stray.parent_hash != in_force.hash:
            why.append(f"its parent is {stray.parent_hash[:12] or '(none)'}, not {in_force.hash[:12]}")
        if not why:  # it chained, but from a record an earlier session has since replaced
            why.append(f"it was recorded before version {in_force.version} was put in force")
        how = f"amendment {name} that made this version does not follow version {in_force.version} in force ({', '.join(why)})"
    return f"{label} changed since it was put in force ({what}) and {how}; {REMEDY}"


def changed_keys(old_rules: dict[str, Any], new_rules: dict[str, Any]) -> list[str]:
    """Each differing leaf as 'dotted.key: old -> new', sorted by key path.

    Tables are walked key by key and lists of tables item by item (gates.rules[2].threshold), so a
    change is named where it happened; lists of plain values are compared whole. Keys that are not
    bare TOML keys are quoted as TOML writes them (evaluation.immutable."prepare.py").
    """
    return [f"{c.key}: {value_text(c.old, MAX_VALUE_CHARS)} -> {value_text(c.new, MAX_VALUE_CHARS)}"
            for c in semantic_diff(old_rules, new_rules)]


# -- helpers ---------------------------------------------------------------------------------


def _meta_disagreement(current: Constitution, in_force: InForce, label: str) -> str | None:
    """An amended version whose file says another version or parent than the ledger's amendment.

    The hash already matches, so this only catches an amendment written inconsistently; letting it
    pass would leave the file's meta and the ledger's chain telling two different stories.
    """
    if not in_force.amendment_id and not in_force.parent_hash:
        return None  # recorded by a session: the hash is the whole story
    problems = []
    if current.meta.version != in_force.version:
        problems.append(f"meta.version is {current.meta.version}, the ledger says {in_force.version}")
    if current.meta.parent_hash != in_force.parent_hash:
        problems.append(f"meta.parent_hash is {current.meta.parent_hash[:12] or '(none)'}, the ledger says {in_force.parent_hash[:12]}")
    if not problems:
        return None
    return f"{label} is the version amendment {in_force.amendment_id[:12]} applied but disagrees with the ledger ({'; '.join(problems)}); {REMEDY}"


def _same_rules_under_this_schema(recorded: dict[str, Any], digest: str) -> bool:
    """Do the recorded rules, validated by this version of the schema, hash to `digest`?"""
    try:
        return constitution.constitution_hash(validate_data(recorded)) == digest
    except constitution.ConstitutionError:
        return False


def _amendment_making(digest: str, events: list[Any]) -> payloads.AmendmentApplied | None:
    """The last amendment_applied whose new version has this hash, if any."""
    found = None
    for ev in events:
        if ev.kind == EventKind.AMENDMENT_APPLIED:
            p = payloads.read(ev)
            if p.hash == digest:
                found = p
    return found


