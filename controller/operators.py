"""What an operator does from another terminal: status, pause, stop, resume.

With a controller running, each goes over its control socket (the controller is the only ledger
writer and holds the file). With none running, status is rebuilt from the ledger and a
pause/stop/resume is applied to the persisted gate state directly, as the same ledger events the
controller would write, so the next session starts from it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from controller.policy import budgets
from controller.live.server import ControllerUnreachable, request
from controller.policy.gates import GateMachine
from controller.workspace.lab import Lab
from controller.live.status import build_status, read_status, session_progress
from ledger import EventKind, Ledger, LedgerBusy

STATUS_KINDS = [
    EventKind.SESSION_STARTED, EventKind.SESSION_RESUMED, EventKind.SESSION_ENDED, EventKind.DECIDED,
    EventKind.GATE_TRANSITION, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.AGENT_CALL,
    EventKind.PROPOSED,
]


def restore_gate(events) -> tuple[GateMachine, str | None, str | None]:
    """The gate as the last recorded transition left it (RUN if none), with its rule and evidence."""
    gate, rule, evidence = GateMachine(), None, None
    for ev in events:
        if ev.kind == EventKind.GATE_TRANSITION:
            gate = GateMachine(state=ev.payload["to"], held_by_operator=bool(ev.payload.get("held")))
            rule, evidence = ev.payload.get("rule"), ev.payload.get("evidence")
    return gate, rule, evidence


def status_from_ledger(lab: Lab) -> dict[str, Any]:
    rules = lab.load_constitution()
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        events = led.events(kinds=STATUS_KINDS)
    gate, rule, evidence = restore_gate(events)
    starts = [e for e in events if e.kind == EventKind.SESSION_STARTED]
    now = datetime.now(timezone.utc)
    if not starts:
        return build_status(rules=rules, gate=gate, session_id=None, tag=None, branch=None, started=None, experiment=0,
                            baseline=None, best=None, best_commit=None, keeps=0, usage=budgets.Usage(), inflight=None,
                            running=False, pid=None, now=now, gate_rule=rule, gate_evidence=evidence)
    start = starts[-1]
    sid = start.session
    mine = [e for e in events if e.session == sid]
    ended = [e for e in mine if e.kind == EventKind.SESSION_ENDED]
    prog = session_progress(mine)
    end_ts = ended[-1].ts if ended else now
    usage = budgets.usage_from_events(mine, None, end_ts, started=start.ts)
    status = build_status(rules=rules, gate=gate, session_id=sid, tag=start.payload.get("tag"), branch=start.payload.get("branch"),
                          started=start.ts, experiment=prog.experiments, baseline=prog.baseline_bpb, best=prog.best_bpb,
                          best_commit=prog.best_commit, keeps=prog.keeps, usage=usage, inflight=None, running=False, pid=None, now=now,
                          gate_rule=rule, gate_evidence=evidence)
    status["session"]["ended"] = ended[-1].payload.get("reason") if ended else "not ended (the controller died; `charter run` resumes it)"
    return status


def lab_status(lab: Lab) -> dict[str, Any]:
    try:
        reply = request(lab.state_dir, {"op": "status"}, timeout=10)
        if reply.get("ok"):
            return reply["status"]
    except (ControllerUnreachable, OSError, ValueError):
        pass
    try:
        return status_from_ledger(lab)
    except LedgerBusy:
        # a controller holds the file but did not answer: its last published status is the best we have
        status = read_status(lab.state_dir)
        if status is None:
            raise
        status["stale"] = True
        return status


def operator_command(lab: Lab, op: str, by: str, reason: str) -> str:
    try:
        reply = request(lab.state_dir, {"op": op, "by": by, "reason": reason}, timeout=30)
    except ControllerUnreachable:
        reply = None
    if reply is not None:
        if not reply.get("ok"):
            return f"refused by the controller: {reply.get('error')}"
        if reply.get("queued"):
            return reply["message"]
        return f"{op}: gate now {reply['gate']} (applied by the running controller)"
    actor = f"person:{by}"
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        gate, _, _ = restore_gate(led.events(kinds=[EventKind.GATE_TRANSITION]))
        if op == "pause":
            t = gate.operator_pause(actor, reason or "paused by operator")
        elif op == "stop":
            t = gate.operator_stop(actor, reason or "stopped by operator")
        else:
            t = gate.operator_resume(actor, reason)
        led.append(EventKind.OPERATOR_COMMAND, actor=actor, payload={"command": op, "reason": reason})
        led.append(EventKind.GATE_TRANSITION, actor=actor, gate_state=t.dest.value, rule=t.rule, payload={
            "from": t.source.value, "to": t.dest.value, "rule": t.rule, "evidence": t.evidence, "by": t.by,
            "held": gate.held_by_operator,
        })
    return f"{op}: gate {t.source.value} -> {t.dest.value} (no controller running; recorded for the next session)"


def format_status(s: dict[str, Any]) -> str:
    g, sess, best, b = s["gate"], s["session"], s["best"], s["budgets"]
    lines = [f"gate: {g['state']}" + (" (held by operator)" if g.get("held_by_operator") else "")
             + (f"  (last change by rule {g['rule']}: {g['evidence']})" if g.get("rule") else "")]
    if sess["id"]:
        state = "running" if s["running"] else f"stopped ({sess.get('ended', '')})"
        lines.append(f"session: {sess['id']} ({sess['tag']}, branch {sess['branch']}) {state}")
        lines.append(f"experiments: {sess['experiments']}  keeps: {sess['keeps']}")
    else:
        lines.append("session: none yet (charter run)")
    if s.get("inflight"):
        f = s["inflight"]
        left = f", {f['seconds_left']:.0f} s left before the kill" if f.get("seconds_left") is not None else ""
        lines.append(f"in flight: experiment {f['experiment']} ({f['description']}): {f['step']}{left}")
    if best.get("baseline_bpb") is not None:
        lines.append(f"val_bpb: baseline {best['baseline_bpb']:.4f}, best {best['best_bpb']:.4f}")
    used = ", ".join(f"{k} {v['used']:g}/{v['limit']:g}" for k, v in b["session"].items())
    lines.append(f"session budget: {used} (burn {b['burn']})")
    if s.get("stale"):
        lines.append("(the controller did not answer; this is its last published status)")
    return "\n".join(lines)
