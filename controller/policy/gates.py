"""The gate: a persistent RUN / THROTTLE / FREEZE / STOP state machine driven by constitution rules.

Rules are data (metric, comparison, threshold, window, target state). After every decided
experiment the controller hands the gate the outcome history and budget burn; `firing_rules`
computes each metric over its window (pure), and `GateMachine.evaluate` escalates at once to the
most severe firing target, but steps down only after `probation` consecutive clear experiments
(hysteresis). STOP is never left by a rule, only by a person (`resume`); an operator's pause holds
FREEZE until resumed. Legal moves are a `transitions` machine, so an illegal one cannot happen.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from transitions import Machine, MachineError

from constitution.schema import GATE_SEVERITY, GateMetric, GateRule, GateState
from ledger import Decision, EventKind
from ledger.payloads import GateTransition

RAN = frozenset(Decision.group("ran"))
FAILED = frozenset(Decision.group("failed"))
# a failed proposing step takes a place in the outcome history (it is not an experiment: never `ran`)
PROPOSER_FAILED = "proposer_failed"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Outcome:
    """One decided experiment (or a failed proposing step, decision "proposer_failed"), as the gate rules see it."""

    decision: str
    hard_violation: bool = False
    integrity_failure: bool = False
    memory_soft_exceeded: bool = False
    baseline_drift: float | None = None


@dataclass(frozen=True)
class Firing:
    rule: str
    metric: str
    value: float
    threshold: float
    target: GateState

    def evidence(self) -> str:
        return f"{self.metric} = {self.value:g} (threshold {self.threshold:g})"


def metric_value(metric: GateMetric, window: int, outcomes: list[Outcome], budget_burn: float) -> float:
    """The value of one gate metric over the last `window` outcomes (oldest first). Failed
    proposing steps count only for `proposer_failures`: a flapping API must not push crashes or
    refusals out of the other rules' windows."""
    if metric != GateMetric.PROPOSER_FAILURES:
        outcomes = [o for o in outcomes if o.decision != PROPOSER_FAILED]
    recent = outcomes[-window:]
    ran = [o for o in recent if o.decision in RAN]
    if metric == GateMetric.CRASH_STREAK:
        streak = 0
        for o in reversed(ran):
            if o.decision not in FAILED:
                break
            streak += 1
        return streak
    if metric == GateMetric.CRASHES:
        return sum(o.decision in FAILED for o in ran)
    if metric == GateMetric.REFUSALS:
        return sum(o.decision == "refused" for o in recent)
    if metric == GateMetric.STAGNATION:
        since = 0
        for o in reversed(ran):
            if o.decision in ("keep", "baseline"):
                break
            since += 1
        return since
    if metric == GateMetric.BUDGET_BURN:
        return budget_burn
    if metric == GateMetric.INTEGRITY_FAILURES:
        return sum(o.integrity_failure for o in recent)
    if metric == GateMetric.HARD_CONSTRAINT_VIOLATIONS:
        return sum(o.hard_violation for o in recent)
    if metric == GateMetric.MEMORY_SOFT_EXCEEDED:
        return sum(o.memory_soft_exceeded for o in recent)
    if metric == GateMetric.PROPOSER_FAILURES:
        return sum(o.decision == PROPOSER_FAILED for o in recent)
    if metric == GateMetric.BASELINE_DRIFT:
        drifts = [o.baseline_drift for o in recent if o.baseline_drift is not None]
        return abs(drifts[-1]) if drifts else 0.0
    raise ValueError(f"unknown gate metric {metric!r}")


def firing_rules(rules: list[GateRule], outcomes: list[Outcome], budget_burn: float) -> list[Firing]:
    """Every rule whose condition holds now, most severe target first."""
    fired = []
    for r in rules:
        value = metric_value(r.metric, r.window, outcomes, budget_burn)
        if OPS[r.op](value, r.threshold):
            fired.append(Firing(r.name, r.metric.value, value, r.threshold, r.target))
    return sorted(fired, key=lambda f: -GATE_SEVERITY[f.target])


@dataclass(frozen=True)
class Transition:
    source: GateState
    dest: GateState
    rule: str  # the rule name, or "operator-pause" / "operator-stop" / "operator-resume" / "probation"
    evidence: str
    by: str  # "controller" or "person:NAME"


ESCALATE = [(a, b) for a in GateState for b in GateState if GATE_SEVERITY[b] > GATE_SEVERITY[a]]
RELAX = [(a, b) for a in (GateState.THROTTLE, GateState.FREEZE) for b in GateState if GATE_SEVERITY[b] < GATE_SEVERITY[a]]


@dataclass
class GateMachine:
    """The gate state plus what hysteresis needs; `state` is driven by a transitions Machine."""

    state: str = GateState.RUN.value
    held_by_operator: bool = False  # a pause holds FREEZE until a person resumes
    clear_streak: int = 0  # consecutive evaluations with nothing at or above the current level
    _machine: Machine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._machine = Machine(
            model=self,
            states=[s.value for s in GateState],
            initial=self.state,
            auto_transitions=False,
            send_event=True,
        )
        for src, dst in ESCALATE:
            self._machine.add_transition("escalate", src.value, dst.value, conditions=[self._wants(dst)])
        for src, dst in RELAX:
            self._machine.add_transition("relax", src.value, dst.value, conditions=[self._wants(dst)])
        for src in (GateState.RUN, GateState.THROTTLE):
            self._machine.add_transition("pause", src.value, GateState.FREEZE.value)
        self._machine.add_transition("pause", GateState.FREEZE.value, GateState.FREEZE.value)
        for src in (GateState.FREEZE, GateState.STOP, GateState.THROTTLE, GateState.RUN):
            self._machine.add_transition("resume", src.value, GateState.RUN.value)

    @staticmethod
    def _wants(dst: GateState):
        return lambda event: event.kwargs.get("dest") == dst.value

    @property
    def gate(self) -> GateState:
        return GateState(self.state)

    def evaluate(self, rules: list[GateRule], outcomes: list[Outcome], budget_burn: float, probation: int,
                 escalate_only: bool = False) -> Transition | None:
        """Apply the rules after an experiment; return the transition made, if any. With
        `escalate_only` (after a failed proposing step, which is no clear experiment) the gate
        may only move up."""
        if self.gate == GateState.STOP:
            return None  # only a person leaves STOP
        fired = firing_rules(rules, outcomes, budget_burn)
        target = fired[0].target if fired else GateState.RUN
        here = GATE_SEVERITY[self.gate]
        if GATE_SEVERITY[target] > here:
            source = self.gate
            self.escalate(dest=target.value)
            self.clear_streak = 0
            names = [f for f in fired if f.target == target]
            return Transition(source, target, ", ".join(f.rule for f in names), "; ".join(f.evidence() for f in names), "controller")
        if GATE_SEVERITY[target] == here or self.held_by_operator or escalate_only:
            self.clear_streak = 0
            return None
        self.clear_streak += 1
        if self.clear_streak < probation:
            return None
        source = self.gate
        self.relax(dest=target.value)
        self.clear_streak = 0
        still = "; ".join(f.evidence() for f in fired) or "no rule fires"
        return Transition(source, target, "probation", f"{probation} clear experiment(s) at {source.value}; {still}", "controller")

    def operator_pause(self, by: str, reason: str) -> Transition:
        source = self.gate
        if source == GateState.STOP:
            raise MachineError("the gate is at STOP; only `charter resume` leaves it")
        self.pause()
        self.held_by_operator = True
        return Transition(source, GateState.FREEZE, "operator-pause", reason, by)

    def operator_stop(self, by: str, reason: str) -> Transition:
        source = self.gate
        if source != GateState.STOP:
            self.escalate(dest=GateState.STOP.value)
        return Transition(source, GateState.STOP, "operator-stop", reason, by)

    def operator(self, op: str, by: str, reason: str) -> Transition:
        """A person's pause / stop / resume; a move the gate forbids raises MachineError."""
        if op == "pause":
            return self.operator_pause(by, reason or "paused by operator")
        if op == "stop":
            return self.operator_stop(by, reason or "stopped by operator")
        if op == "resume":
            return self.operator_resume(by, reason)
        raise ValueError(f"unknown operator command {op!r}")

    def operator_resume(self, by: str, reason: str) -> Transition:
        source = self.gate
        self.resume()
        self.held_by_operator = False
        self.clear_streak = 0
        return Transition(source, GateState.RUN, "operator-resume", reason, by)


def transition_payload(t: Transition, held_by_operator: bool) -> GateTransition:
    """The ledger's record of a transition (the controller's and an operator's alike)."""
    return GateTransition(t.source.value, t.dest.value, t.rule, t.evidence, t.by, held_by_operator)


def restore_gate(events) -> tuple[GateMachine, str | None, str | None]:
    """The gate as the last recorded transition left it (RUN if none), with its rule and evidence."""
    gate, rule, evidence = GateMachine(), None, None
    for ev in events:
        if ev.kind == EventKind.GATE_TRANSITION:
            t = GateTransition.from_json(ev.payload)
            gate = GateMachine(state=t.to_state, held_by_operator=bool(t.held))
            rule, evidence = t.rule or None, t.evidence or None
    return gate, rule, evidence
