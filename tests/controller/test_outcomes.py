"""The loop's pure policies: run status -> decision, THROTTLE confirmations, FREEZE repair, budget stops."""

import constitution
from constitution import GateState
from controller.policy.budgets import Usage
from controller.policy.gates import Firing
from controller.policy.outcomes import (
    FreezeStep, budget_stop, decision_for_failed_run, freeze_action, keep_rule_for, outcome_of,
)
from ledger import Decision
from ledger.payloads import Decided

RULES = constitution.load_default()


def firing(metric: str, target=GateState.FREEZE) -> Firing:
    return Firing(f"{metric}-rule", metric, 1.0, 1.0, target)


def test_failed_run_status_maps_to_its_decision_and_a_stop_makes_it_interrupted():
    assert decision_for_failed_run("timeout", False) == Decision.TIMEOUT
    assert decision_for_failed_run("crash", False) == Decision.CRASH
    assert decision_for_failed_run("timeout", True) == Decision.INTERRUPTED
    assert decision_for_failed_run("crash", True) == Decision.INTERRUPTED


def test_throttle_asks_for_at_least_its_confirmation_runs():
    rules = RULES.model_copy(update={"decision": RULES.decision.model_copy(update={"confirmation_runs": 0})})
    throttle = rules.gates.throttle.confirmation_runs
    assert throttle > 0
    assert keep_rule_for(rules, GateState.RUN).runs == 1
    assert keep_rule_for(rules, GateState.THROTTLE).runs == 1 + throttle
    more = rules.model_copy(update={"decision": rules.decision.model_copy(update={"confirmation_runs": throttle + 2})})
    assert keep_rule_for(more, GateState.THROTTLE).runs == throttle + 3  # never fewer than the keep rule asks
    rule = keep_rule_for(RULES, GateState.RUN)
    assert (rule.min_improvement, rule.confidence) == (RULES.decision.min_improvement, RULES.decision.confidence)


def test_freeze_waits_for_an_operator_hold_repairs_then_gives_up():
    assert freeze_action(True, [firing("crash_streak")], 0).step == FreezeStep.WAIT
    assert freeze_action(False, [firing("crash_streak")], 0).step == FreezeStep.REPAIR
    assert freeze_action(False, [firing("crash_streak")], 1, max_repairs=2).step == FreezeStep.REPAIR
    ended = freeze_action(False, [firing("crash_streak")], 2, max_repairs=2)
    assert ended.step == FreezeStep.END and "2 repair runs" in ended.reason


def test_freeze_from_budget_burn_ends_at_once_since_no_repair_can_clear_it():
    action = freeze_action(False, [firing("crash_streak"), firing("budget_burn")], 0)
    assert action.step == FreezeStep.END and "budget" in action.reason


def test_budget_stop_names_the_period_and_resource():
    s, d = RULES.budgets.session, RULES.budgets.day
    assert budget_stop(RULES, Usage(experiments=1), Usage(experiments=1)) is None
    stop = budget_stop(RULES, Usage(experiments=s.experiments), Usage(experiments=s.experiments))
    assert stop.period == "session" and stop.resource.startswith("experiments")
    assert stop.reason == f"session budget exhausted: experiments {s.experiments}/{s.experiments}"
    day = budget_stop(RULES, Usage(agent_dollars=1.0), Usage(agent_dollars=d.agent_dollars))
    assert day.period == "day" and day.resource.startswith("agent_dollars")


def test_outcome_of_a_decision_carries_the_gate_flags():
    o = outcome_of(Decision.REFUSED, Decided(hard_violation=True, memory_soft_exceeded=True, baseline_drift=0.2))
    assert (o.decision, o.hard_violation, o.integrity_failure, o.memory_soft_exceeded, o.baseline_drift) == ("refused", True, False, True, 0.2)
