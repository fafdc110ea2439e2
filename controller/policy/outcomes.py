"""The loop's pure policies: what a run's status means, the keep rule in force, what
FREEZE does next, and whether a budget forbids another experiment.

Each is a function of plain values (the constitution, the gate, usage, counts), so the session
only sequences steps and every policy is tested without processes, git or DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from constitution import Constitution, GateState
from controller.policy import budgets
from controller.policy.gates import Firing, Outcome
from controller.policy.keep_rule import KeepRule
from ledger import Decision
from ledger.payloads import Decided

MAX_REPAIRS = 2  # baseline re-verifications in one FREEZE before the session ends
MAX_PROPOSER_FAILURES = 3  # consecutive proposer failures before the session ends


def decision_for_failed_run(status: str, stop_requested: bool) -> Decision:
    """A run that did not end "ok": a stop from a person, or a worker lost under it, makes it
    interrupted, not the change's fault."""
    if stop_requested or status == "interrupted":
        return Decision.INTERRUPTED
    return Decision.TIMEOUT if status == "timeout" else Decision.CRASH


def keep_rule_for(rules: Constitution, gate: GateState) -> KeepRule:
    """The keep rule in force: the constitution's, with THROTTLE's demand for more confirmation runs;
    the incumbent is judged on at least `baseline_runs` runs."""
    d = rules.decision
    extra = d.confirmation_runs
    if gate == GateState.THROTTLE:
        extra = max(extra, rules.gates.throttle.confirmation_runs)
    return KeepRule(d.min_improvement, d.confidence, 1 + extra, d.baseline_runs)


class FreezeStep(StrEnum):
    WAIT = "wait"  # an operator holds the gate: do nothing until they resume
    REPAIR = "repair"  # re-verify the baseline: the condition may clear
    END = "end"  # nothing can clear it within this session


@dataclass(frozen=True)
class FreezeAction:
    step: FreezeStep
    reason: str = ""


def freeze_action(held_by_operator: bool, firing: list[Firing], repairs_done: int, max_repairs: int = MAX_REPAIRS) -> FreezeAction:
    """What the loop does while the gate is at FREEZE."""
    if held_by_operator:
        return FreezeAction(FreezeStep.WAIT)
    if any(f.metric == "budget_burn" for f in firing):
        return FreezeAction(FreezeStep.END, "gate at FREEZE: budget exhausted")
    failing = [f for f in firing if f.metric == "proposer_failures"]
    if failing:  # a repair run re-measures the baseline; it can't fix the agent
        return FreezeAction(FreezeStep.END, f"gate at FREEZE: the proposer keeps failing ({failing[0].evidence()})")
    if repairs_done >= max_repairs:
        return FreezeAction(FreezeStep.END, f"gate at FREEZE after {max_repairs} repair runs; the condition has not cleared")
    return FreezeAction(FreezeStep.REPAIR)


@dataclass(frozen=True)
class BudgetStop:
    period: str  # "session" or "day"
    resource: str  # e.g. "experiments 40/40"
    usage: budgets.Usage

    @property
    def reason(self) -> str:
        return f"{self.period} budget exhausted: {self.resource}"


def budget_stop(rules: Constitution, session_usage: budgets.Usage, day_usage: budgets.Usage) -> BudgetStop | None:
    """The first period with no room for one more experiment (or agent call), or None."""
    for period, usage, limits in (("session", session_usage, rules.budgets.session), ("day", day_usage, rules.budgets.day)):
        why = budgets.exhausted(usage, limits)
        if why:
            return BudgetStop(period, why, usage)
    return None


def outcome_of(decision: Decision | str, payload: Decided) -> Outcome:
    """A decided event as the gate rules see it."""
    return Outcome(str(decision), payload.hard_violation, payload.integrity_failure, payload.memory_soft_exceeded,
                   payload.baseline_drift)
