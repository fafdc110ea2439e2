"""What an operator does from another terminal: status, pause, stop, resume.

With a controller running, each goes over the live channel (`controller.live.client`; the
controller is the only ledger writer and holds the file). With none running, status is rebuilt
from the ledger and a pause/stop/resume is applied to the persisted gate state directly, as the
same typed ledger events the controller would write, so the next session starts from it. A
command the gate does not allow (a pause at STOP) is refused with `OperatorRefused`, one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from datetime import datetime, timezone

from transitions import MachineError

from controller.live.client import ControllerUnreachable, LiveClient, LiveError, ProtocolMismatch, RequestRefused
from controller.live.status import (
    InflightStatus, Progress, SessionView, StatusSnapshot, build_status, read_status, session_progress,
)
from controller.policy import budgets
from controller.policy.gates import restore_gate, transition_payload
from constitution import GateState
from controller.workspace.lab import Lab
from ledger import EventKind, Ledger, LedgerBusy
from ledger import payloads

STATUS_KINDS = [
    EventKind.SESSION_STARTED, EventKind.SESSION_RESUMED, EventKind.SESSION_ENDED, EventKind.DECIDED,
    EventKind.GATE_TRANSITION, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.AGENT_CALL,
    EventKind.PROPOSED,
]
NOT_ENDED = "not ended (the controller died; `charter run` resumes it)"


class OperatorRefused(Exception):
    """The command cannot be applied (the gate does not allow it, or the controller refused it)."""


def status_from_ledger(lab: Lab) -> StatusSnapshot:
    rules = lab.load_constitution()
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        events = led.events(kinds=STATUS_KINDS)
    gate, rule, evidence = restore_gate(events)
    starts = [e for e in events if e.kind == EventKind.SESSION_STARTED]
    now = datetime.now(timezone.utc)
    common = dict(rules=rules, gate=gate, gate_rule=rule, gate_evidence=evidence, inflight=None, running=False, pid=None, now=now)
    if not starts:
        return build_status(session=None, progress=Progress(), usage=budgets.Usage(), **common)
    start = starts[-1]
    begun = payloads.read(start)
    mine = [e for e in events if e.session == start.session]
    ended = [e for e in mine if e.kind == EventKind.SESSION_ENDED]
    usage = budgets.usage_from_events(mine, None, ended[-1].ts if ended else now, started=start.ts)
    why = payloads.read(ended[-1]).reason if ended else NOT_ENDED
    view = SessionView(start.session, begun.tag, begun.branch, start.ts, ended=why)
    return build_status(session=view, progress=session_progress(mine), usage=usage, **common)


def lab_status(lab: Lab) -> StatusSnapshot:
    try:
        return LiveClient(lab.state_dir, timeout=10).status()
    except ProtocolMismatch:
        raise  # the person must hear that the controller is of another version
    except LiveError:
        pass  # no controller (or one that did not answer): the ledger, or its last published status
    try:
        return status_from_ledger(lab)
    except LedgerBusy:
        # a controller holds the file but did not answer: its last published status is the best we have
        status = read_status(lab.state_dir)
        if status is None:
            raise
        return dataclasses.replace(status, stale=True)


RESUME_NAMESPACE = "charter-resume"


def resume_message(stop_event_hash: str) -> str:
    """What a resume from STOP signs: the STOP it lifts (the hash of that gate_transition event), so
    a signature lifts that one STOP and can't be replayed on a later one."""
    return f"resume {stop_event_hash}"


def _signed_resume(lab: Lab, led: Ledger, by: str, key: Path | None, signature: Path | None) -> str:
    """The fingerprint that signs this resume from STOP, when the lab requires signatures; "" when
    it does not. OperatorRefused (one line) for a missing or bad signature."""
    from amendments import signatures  # the OpenSSH edge, shared with ratification

    rules = lab.load_constitution().amendment
    if not (rules.require_signatures and rules.ratifiers):
        return ""
    stops = [e for e in led.events(kinds=[EventKind.GATE_TRANSITION]) if e.gate_state == "STOP"]
    if not stops:
        return ""
    message = resume_message(stops[-1].hash)
    try:
        if key is not None:
            text = signatures.sign(message, key, RESUME_NAMESPACE)
        elif signature is not None:
            text = signatures.read_signature(signature)
        else:
            raise OperatorRefused(
                "resume from STOP needs a ratifier's signature in this lab: --key PRIVATE_KEY, or --signature FILE "
                f"made with: printf %s '{message}' > msg; ssh-keygen -Y sign -f KEY -n {RESUME_NAMESPACE} msg")
        return signatures.verify(message, text, by, rules.ratifiers, RESUME_NAMESPACE).fingerprint
    except signatures.SignatureError as e:
        raise OperatorRefused(f"resume refused: {e}") from None


def operator_command(lab: Lab, op: str, by: str, reason: str, key: Path | None = None,
                     signature: Path | None = None) -> str:
    """Apply pause / stop / resume; the line to print. OperatorRefused if it cannot be applied.
    A resume from STOP in a lab that requires signatures is signed by a listed ratifier."""
    try:
        reply = LiveClient(lab.state_dir, timeout=30).command(op, by, reason)
    except ControllerUnreachable:
        reply = None
    except RequestRefused as e:
        raise OperatorRefused(f"{op} refused by the controller: {e}") from None
    if reply is not None:
        if reply.queued:
            return reply.message or f"{op} queued; the session is starting and applies it at its first step"
        return f"{op}: gate now {reply.gate} (applied by the running controller)"
    actor = f"person:{by}"
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        gate, _, _ = restore_gate(led.events(kinds=[EventKind.GATE_TRANSITION]))
        signed = _signed_resume(lab, led, by, key, signature) if op == "resume" and gate.gate == GateState.STOP else ""
        try:
            t = gate.operator(op, actor, reason)
        except MachineError as e:
            raise OperatorRefused(f"{op} refused: {e.value}") from None
        led.record(payloads.OperatorCommand(command=op, reason=reason, signed_by=signed), actor=actor)
        led.record(transition_payload(t, gate.held_by_operator), actor=actor, gate_state=t.dest.value, rule=t.rule)
    return f"{op}: gate {t.source.value} -> {t.dest.value} (no controller running; recorded for the next session)"


def flight_text(f: InflightStatus) -> str:
    left = f", {f.seconds_left:.0f} s left before the kill" if f.seconds_left is not None else ""
    return f"experiment {f.experiment} ({f.description}): {f.step}{left}"


def in_flight_lines(s: StatusSnapshot) -> list[str]:
    """One line for the one experiment in flight, as always; with several workers a line for each,
    oldest first, then the loop's own step when it is none of them (proposing the next)."""
    if not s.in_flight:
        return [f"in flight: {flight_text(s.inflight)}"] if s.inflight else []
    lines = [f"in flight: {len(s.in_flight)} experiments"] + [f"  {flight_text(f)}" for f in s.in_flight]
    if s.inflight and s.inflight.experiment not in {f.experiment for f in s.in_flight}:
        lines.append(f"  loop: {flight_text(s.inflight)}")
    return lines


def format_status(s: StatusSnapshot) -> str:
    g, sess, best, b = s.gate, s.session, s.best, s.budgets
    lines = [f"gate: {g.state}" + (" (held by operator)" if g.held_by_operator else "")
             + (f"  (last change by rule {g.rule}: {g.evidence})" if g.rule else "")]
    if sess.id:
        state = "running" if s.running else f"stopped ({sess.ended or ''})"
        lines.append(f"session: {sess.id} ({sess.tag}, branch {sess.branch}) {state}")
        lines.append(f"experiments: {sess.experiments}  keeps: {sess.keeps}")
    else:
        lines.append("session: none yet (charter run)")
    lines += in_flight_lines(s)
    if best.baseline_bpb is not None:
        lines.append(f"val_bpb: baseline {best.baseline_bpb:.4f}, best {best.best_bpb:.4f}")
    used = ", ".join(f"{k} {v.used:g}/{v.limit:g}" for k, v in b.session.items())
    burn = "inf" if b.burn == float("inf") else b.burn
    lines.append(f"session budget: {used} (burn {burn})")
    if s.stale:
        lines.append("(the controller did not answer; this is its last published status)")
    return "\n".join(lines)
