"""The amendment process on a real lab: propose, ratify, reject, apply, and read the history.

Each step reads the ledger, asks the pure parts (`proposal`, `tiers`, `duty`, `history`) what may
happen, and only then touches the edges: ssh-keygen (`signatures`), git on the lab's main line
(`main_line`) and the ledger, which records every step, refused ratifications included. The
constitution in force is the ledger's (`controller.policy.in_force`); a lab whose
`constitution.toml` is not that constitution is refused before anything is proposed or applied.
The ledger is written only with no controller running (the controller is its only writer while
it runs); `apply` also needs no open session and a clean work tree, so rules change only between
sessions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomlkit

import constitution
from constitution import Constitution, ConstitutionError
from constitution.schema import ssh_fingerprint
from controller.live.client import ControllerUnreachable, LiveClient, LiveError
from controller.policy.identity import AGENT_PREFIX, person_refusal
from controller.policy.in_force import check_in_force
from controller.session.resume import open_session
from controller.workspace.lab import Lab
from ledger import Event, Ledger, payloads

from amendments import duty, history, main_line, signatures
from amendments.errors import AmendmentRefused
from amendments.history import AmendmentRecord
from amendments.patch import Setting, apply_settings
from amendments.proposal import Proposal, amendment_id, build_proposal, file_name, file_sha256, read_file, render_file


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def actor_of(by: str) -> str:
    """The ledger actor for a name: an agent keeps its own identity, a person is `person:NAME`."""
    name = by.strip()
    return name if name.casefold().startswith(AGENT_PREFIX) else f"person:{name}"


@dataclass(frozen=True)
class Context:
    """What every step starts from: the ledger's events and the constitution in force."""

    events: list[Event]
    rules: Constitution  # the constitution in force (= the lab's constitution.toml, checked)
    text: str  # constitution.toml as it is
    hash: str
    records: dict[str, AmendmentRecord]


def _no_controller(lab: Lab, what: str) -> None:
    try:
        LiveClient(lab.state_dir, timeout=5).status()
    except ControllerUnreachable:
        return
    except LiveError:
        pass  # something answers on the socket but not as it should: treat it as running
    raise AmendmentRefused(
        f"a controller is running a session on {lab.root}: amendments are {what} between sessions "
        f"(stop it with `charter stop --lab {lab.root}` or let it end)"
    )


def _context(lab: Lab, led: Ledger) -> Context:
    events = led.events()
    text = lab.constitution_path.read_text(encoding="utf-8")
    rules = constitution.parse_text(text, "constitution.toml")
    problem = check_in_force(rules, events)
    if problem:
        raise AmendmentRefused(f"the lab's constitution is not the one in force: {problem}")
    return Context(events, rules, text, constitution.constitution_hash(rules), history.fold(events))


def load_records(lab: Lab) -> dict[str, AmendmentRecord]:
    """Every amendment of the lab (read-only; works whenever no controller holds the ledger)."""
    with Ledger.open(lab.ledger_path, read_only=True, wait_s=5) as led:
        return history.fold(led.events(kinds=history.KINDS))


# -- propose --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposed:
    record: AmendmentRecord
    proposal: Proposal
    commit: str


def _with_succession(text: str, settings: list[Setting], rules: Constitution, digest: str, files: dict[str, str]) -> str:
    """The --set text with meta.version / parent_hash and the pins of carried files filled in,
    unless the person set them."""
    doc = tomlkit.parse(text)
    meta = doc["meta"]
    set_keys = {s.path for s in settings}
    if ("meta", "version") not in set_keys:
        meta["version"] = rules.meta.version + 1
    if ("meta", "parent_hash") not in set_keys:
        meta["parent_hash"] = digest
    pins = doc["evaluation"]["immutable"]
    for path, body in files.items():
        if ("evaluation", "immutable", path) not in set_keys and path in pins:
            pins[path] = file_sha256(body)
    return tomlkit.dumps(doc)


def _lab_files(lab: Lab, *rules: Constitution) -> dict[str, str | None]:
    """sha256 of each immutable file the lab has (None where it has none), for every path named."""
    out: dict[str, str | None] = {}
    for r in rules:
        for path in r.evaluation.immutable:
            f = lab.root / path
            out[path] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
    return out


def propose(lab: Lab, by: str, why: str, *, text: str | None = None, settings: list[Setting] | None = None,
            files: dict[str, str] | None = None, label: str = "proposal", now: datetime | None = None) -> Proposed:
    """Record a proposal (the full text, or --set edits of the constitution in force), carrying
    new versions of immutable files (`files`, path -> text) where it changes them."""
    files = dict(files or {})
    name = by.strip()
    if not why.strip():
        raise AmendmentRefused("a proposal needs a reason: --why TEXT")
    if not name.casefold().startswith(AGENT_PREFIX):
        refusal = person_refusal(name)
        if refusal:
            raise AmendmentRefused(f"--by {refusal}")
    elif len(name) == len(AGENT_PREFIX):
        raise AmendmentRefused("--by agent: needs the agent's model, e.g. agent:claude-sonnet-4-5")
    if (text is None) == (settings is None):
        raise AmendmentRefused("a proposal is either a whole constitution (--file) or edits of the one in force (--set)")
    _no_controller(lab, "proposed")
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        ctx = _context(lab, led)
        if settings is not None:
            text = _with_succession(apply_settings(ctx.text, settings), settings, ctx.rules, ctx.hash, files)
        try:
            child = constitution.parse_text(text, label)
        except ConstitutionError:
            child = ctx.rules  # build_proposal says what is wrong with it
        proposal = build_proposal(text, ctx.rules, history.highest_applied(ctx.records), label,
                                  files=files, current=_lab_files(lab, ctx.rules, child))
        if proposal.id in ctx.records:
            old = ctx.records[proposal.id]
            raise AmendmentRefused(f"this exact text was already proposed as amendment {old.proposed.number:04d} "
                                   f"({old.id[:12]}, {old.status}); a new proposal needs a changed text")
        ratifiers = ctx.rules.amendment.ratifiers
        needed = proposal.classification.needed(ctx.rules)
        able = [r for r in ratifiers if r.name != name and (r.key or not ctx.rules.amendment.require_signatures)]
        if not ratifiers:
            raise AmendmentRefused("this lab lists no ratifiers (amendment.ratifiers), so nobody can ratify an amendment; "
                                   "a lab gets them at `charter init DIR --ratifier NAME=KEY.pub`, or by a hand edit "
                                   "before its first session")
        if len(able) < needed:
            raise AmendmentRefused(
                f"a {proposal.classification.tier.label} amendment needs {needed} ratification(s), but only {len(able)} listed "
                f"ratifier(s) other than {name} could give one (amendment.ratifiers"
                + (", each with a key" if ctx.rules.amendment.require_signatures else "") + ")"
            )
        now = now or utc_now()
        number = len(ctx.records) + 1
        path = file_name(number, why)
        body = render_file(proposal, number, name, why.strip(), _stamp(now), needed)
        commit = main_line.commit_on_main(lab.root, {path: body}, f"charter: amendment {number:04d} proposed by {name}: {why.strip()[:60]}")
        payload = payloads.AmendmentProposed(
            amendment_id=proposal.id, by=name, why=why.strip(), version=proposal.version, hash=proposal.hash,
            number=number, path=path, parent_version=proposal.parent_version, parent_hash=proposal.parent_hash,
            tier=proposal.classification.tier.label, needed=needed,
            changes=[r.words for r in proposal.classification.reasons],
            ratifiers={r.name: ssh_fingerprint(r.key) if r.key else "" for r in ratifiers},
            require_signatures=ctx.rules.amendment.require_signatures,
            cooling_hours=ctx.rules.amendment.cooling_hours, text=proposal.text, files=proposal.files,
        )
        ev = led.record(payload, actor=actor_of(name), commit_sha=commit)
        record = history.fold([ev])[proposal.id]
    return Proposed(record, proposal, commit)


# -- checks shared by ratify and apply ------------------------------------------------------------


def _file_refusal(lab: Lab, rec: AmendmentRecord) -> str | None:
    """Is the proposal file on main (and the ledger's copy) still exactly what was proposed?"""
    p = rec.proposed
    data = main_line.read_on_main(lab.root, p.path)
    if data is None:
        return f"{p.path} is missing from the lab's main line; restore it from git history"
    try:
        f = read_file(data, p.path)
    except AmendmentRefused as e:
        return str(e)
    if f.content_id != rec.id or f.id != rec.id:
        return (f"{p.path} was changed after it was proposed: its constitution's sha256 is {f.content_id[:12]}, "
                f"not the amendment id {rec.id[:12]}; restore it with `git checkout main -- {p.path}` or propose anew")
    if f.files != p.files:
        return (f"{p.path} was changed after it was proposed: the immutable files it carries differ from the ones "
                f"proposed; restore it with `git checkout main -- {p.path}` or propose anew")
    if amendment_id(p.text) != rec.id:
        return f"the ledger's copy of amendment {rec.id[:12]} does not match its id (run charter ledger verify)"
    return None


def _stale_refusal(rec: AmendmentRecord, ctx: Context) -> str | None:
    p = rec.proposed
    if p.parent_hash != ctx.hash:
        return (f"amendment {rec.id[:12]} was proposed against version {p.parent_version} ({p.parent_hash[:12]}) but version "
                f"{ctx.rules.meta.version} ({ctx.hash[:12]}) is in force now: propose it again against the constitution in force")
    return None


# -- ratify / reject ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratified:
    record: AmendmentRecord
    by: str
    signed: bool
    fingerprint: str


def ratify(lab: Lab, typed_id: str, by: str, *, key: Path | None = None, signature: Path | None = None) -> Ratified:
    """Add `by`'s ratification; every refusal of a known amendment is ledgered, then raised."""
    name = by.strip()
    if key is not None and signature is not None:
        raise AmendmentRefused("give either --key (sign here) or --signature (a signature made elsewhere), not both")
    _no_controller(lab, "ratified")
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        ctx = _context(lab, led)
        rec = history.resolve(ctx.records, typed_id)

        def refuse(why: str, **signed: Any) -> AmendmentRefused:
            led.record(payloads.AmendmentRatified(amendment_id=rec.id, by=name, refused=why, **signed), actor=actor_of(name or "?"))
            return AmendmentRefused(f"ratification refused: {why}")

        why = duty.ratify_refusal(rec, name) or _stale_refusal(rec, ctx) or _file_refusal(lab, rec)
        if why:
            raise refuse(why)
        p = rec.proposed
        sig_text = ""
        if key is not None or signature is not None:
            try:
                sig_text = signatures.sign(rec.id, key) if key is not None else signatures.read_signature(signature)
                verified = signatures.verify(rec.id, sig_text, name, ctx.rules.amendment.ratifiers)
            except signatures.SignatureError as e:
                raise refuse(str(e), signature=sig_text) from None
            if p.ratifiers.get(name) != verified.fingerprint:  # the key listed when it was proposed
                raise refuse(f"{name}'s key {verified.fingerprint} is not the key listed when the amendment was proposed",
                             signature=sig_text)
            payload = payloads.AmendmentRatified(amendment_id=rec.id, by=name, signed=True, signature=sig_text,
                                                 key=verified.key, fingerprint=verified.fingerprint)
        elif p.require_signatures:
            raise AmendmentRefused("this lab requires signed ratifications (amendment.require_signatures): "
                                   "add --key PRIVATE_KEY or --signature FILE")
        else:
            payload = payloads.AmendmentRatified(amendment_id=rec.id, by=name, signed=False)
        led.record(payload, actor=actor_of(name))
        rec = history.fold(led.events(kinds=history.KINDS))[rec.id]
    return Ratified(rec, name, payload.signed, payload.fingerprint)


def reject(lab: Lab, typed_id: str, by: str, why: str) -> AmendmentRecord:
    name = by.strip()
    if not why.strip():
        raise AmendmentRefused("a rejection needs a reason: --why TEXT")
    _no_controller(lab, "rejected")
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        records = history.fold(led.events(kinds=history.KINDS))
        rec = history.resolve(records, typed_id)
        refusal = duty.reject_refusal(rec, name)
        if refusal:
            raise AmendmentRefused(f"rejection refused: {refusal}")
        led.record(payloads.AmendmentRejected(amendment_id=rec.id, by=name, reason=why.strip()), actor=actor_of(name))
        return history.fold(led.events(kinds=history.KINDS))[rec.id]


# -- apply ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    record: AmendmentRecord
    old_version: int
    old_hash: str
    version: int
    hash: str
    commit: str
    left_branch: str  # the branch the lab had checked out before (main, or the last session's)


def _final_text(text: str, rec: AmendmentRecord) -> str:
    """The proposed text with meta saying which amendment made it and when it was ratified."""
    doc = tomlkit.parse(text)
    doc["meta"]["amendment_id"] = rec.id
    doc["meta"]["ratified_at"] = _stamp(rec.ratifications[-1].ts)
    return tomlkit.dumps(doc)


def apply(lab: Lab, typed_id: str, by: str, now: datetime | None = None) -> Applied:
    """Put a ratified amendment in force between sessions: constitution.toml on main + the ledger."""
    name = by.strip()
    refusal = person_refusal(name)
    if refusal:
        raise AmendmentRefused(f"--by {refusal}")
    _no_controller(lab, "applied")
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        ctx = _context(lab, led)
        rec = history.resolve(ctx.records, typed_id)
        start = open_session(ctx.events)
        if start is not None:
            raise AmendmentRefused(f"session {start.session} is open (it never ended): amendments are applied between "
                                   f"sessions; `charter run --lab {lab.root}` resumes it, then let it end or stop it")
        dirty = lab.git.dirty_paths()
        if dirty:
            raise AmendmentRefused(f"the lab has uncommitted changes ({', '.join(dirty[:3])}); commit or discard them first")
        why = duty.apply_refusal(rec, ctx.hash, ctx.rules.meta.version, history.highest_applied(ctx.records), now or utc_now())
        why = why or _file_refusal(lab, rec)
        if why:
            raise AmendmentRefused(f"apply refused: {why}")
        # re-validate against the constitution in force now, exactly as a fresh proposal would be
        again = build_proposal(rec.proposed.text, ctx.rules, history.highest_applied(ctx.records), rec.proposed.path,
                               files=rec.proposed.files,
                               current=_lab_files(lab, ctx.rules, constitution.parse_text(rec.proposed.text, rec.proposed.path)))
        if again.classification.tier.label != rec.proposed.tier:
            raise AmendmentRefused(f"apply refused: amendment {rec.id[:12]} now classifies as {again.classification.tier.label}, "
                                   f"not {rec.proposed.tier} as ratified; propose it again")
        final = _final_text(rec.proposed.text, rec)
        new_rules = constitution.parse_text(final, "constitution.toml")
        new_hash = constitution.constitution_hash(new_rules)
        # the files and their pins land in the same commit
        commit = main_line.commit_on_main(
            lab.root, {"constitution.toml": final, **rec.proposed.files},
            f"charter: amendment {rec.proposed.number:04d} applied: version {new_rules.meta.version} ({rec.proposed.why[:60]})")
        left = main_line.switch_to_main(lab.root)
        led.record(payloads.AmendmentApplied(
            amendment_id=rec.id, version=new_rules.meta.version, hash=new_hash, parent_hash=ctx.hash,
            parent_version=ctx.rules.meta.version, ratified_by=rec.ratified_by,
        ), actor=actor_of(name), commit_sha=commit)
        rec = history.fold(led.events(kinds=history.KINDS))[rec.id]
    return Applied(rec, ctx.rules.meta.version, ctx.hash, new_rules.meta.version, new_hash, commit, left)
