"""Gate rules and the gate machine: each rule fires, escalation is immediate, relief needs probation."""

import pytest
from transitions import MachineError

import constitution
from constitution import GateState
from controller.policy.gates import GateMachine, Outcome, firing_rules, metric_value

RULES = constitution.load_default().gates.rules
PROBATION = constitution.load_default().gates.probation_experiments


def o(decision, **kw):
    return Outcome(decision, **kw)


# (outcomes, budget burn, the rule expected to fire, its target)
CASES = [
    ([o("baseline"), o("crash"), o("timeout"), o("crash")], 0.0, "crash-streak", GateState.THROTTLE),
    ([o("baseline"), o("crash"), o("crash"), o("discard")] + [o("crash")] * 4, 0.0, "crash-storm", GateState.FREEZE),
    ([o("baseline"), o("refused"), o("discard"), o("refused"), o("refused")], 0.0, "refusal-streak", GateState.THROTTLE),
    ([o("baseline")] + [o("discard")] * 15, 0.0, "stagnation", GateState.THROTTLE),
    ([o("baseline")], 0.85, "budget-burn", GateState.THROTTLE),
    ([o("baseline")], 1.0, "budget-exhausted", GateState.FREEZE),
    ([o("baseline"), o("discard", memory_soft_exceeded=True), o("keep", memory_soft_exceeded=True)], 0.0, "memory-soft", GateState.THROTTLE),
    ([o("baseline"), o("baseline", baseline_drift=0.08)], 0.0, "baseline-drift", GateState.FREEZE),
    ([o("baseline"), o("crash", integrity_failure=True)], 0.0, "integrity", GateState.STOP),
    ([o("baseline"), o("refused", hard_violation=True)], 0.0, "hard-constraint", GateState.STOP),
]


@pytest.mark.parametrize("outcomes,burn,rule,target", CASES, ids=[c[2] for c in CASES])
def test_each_default_rule_fires_and_machine_escalates(outcomes, burn, rule, target):
    fired = firing_rules(RULES, outcomes, burn)
    assert rule in [f.rule for f in fired]
    g = GateMachine()
    t = g.evaluate(RULES, outcomes, burn, PROBATION)
    assert t is not None and t.dest == target and g.gate == target
    assert rule in t.rule and "threshold" in t.evidence


def test_quiet_history_fires_nothing():
    outcomes = [o("baseline"), o("discard"), o("keep"), o("crash"), o("discard")]
    assert firing_rules(RULES, outcomes, 0.1) == []
    g = GateMachine()
    assert g.evaluate(RULES, outcomes, 0.1, PROBATION) is None and g.gate == GateState.RUN


def test_crash_streak_is_broken_by_a_success_and_ignores_refusals():
    assert metric_value("crash_streak", 10, [o("crash"), o("crash"), o("discard"), o("crash")], 0) == 1
    assert metric_value("crash_streak", 10, [o("crash"), o("refused"), o("crash")], 0) == 2


def test_throttle_recovers_only_after_probation():
    g = GateMachine()
    history = [o("baseline"), o("crash"), o("crash"), o("crash")]
    assert g.evaluate(RULES, history, 0, PROBATION).dest == GateState.THROTTLE
    for i in range(PROBATION - 1):
        history.append(o("discard"))
        assert g.evaluate(RULES, history, 0, PROBATION) is None, f"stepped down after {i + 1} clear experiments"
        assert g.gate == GateState.THROTTLE
    history.append(o("discard"))
    t = g.evaluate(RULES, history, 0, PROBATION)
    assert t.dest == GateState.RUN and t.rule == "probation"


def test_a_relapse_during_probation_restarts_it():
    g = GateMachine()
    history = [o("baseline"), o("crash"), o("crash"), o("crash"), o("discard")]
    g.evaluate(RULES, history[:4], 0, PROBATION)
    g.evaluate(RULES, history, 0, PROBATION)
    assert g.clear_streak == 1
    history += [o("discard"), o("refused"), o("refused"), o("refused")]
    g.evaluate(RULES, history[:-3], 0, PROBATION)
    assert g.clear_streak == 2
    g.evaluate(RULES, history, 0, PROBATION)
    assert g.clear_streak == 0 and g.gate == GateState.THROTTLE


def test_freeze_steps_down_to_what_still_fires():
    g = GateMachine()
    assert g.evaluate(RULES, [o("baseline")], 1.0, 1).dest == GateState.FREEZE
    t = g.evaluate(RULES, [o("baseline")], 0.9, 1)  # burn still over the THROTTLE bar
    assert t.source == GateState.FREEZE and t.dest == GateState.THROTTLE


def test_stop_is_left_only_by_a_person():
    g = GateMachine()
    history = [o("baseline"), o("refused", hard_violation=True)]
    assert g.evaluate(RULES, history, 0, 0).dest == GateState.STOP
    clean = [o("baseline")] * 5
    for _ in range(5):
        assert g.evaluate(RULES, clean, 0, 0) is None
    assert g.gate == GateState.STOP
    with pytest.raises(MachineError):
        g.relax(dest="RUN")
    t = g.operator_resume("person:alice", "reviewed the violation")
    assert (t.source, t.dest, t.by) == (GateState.STOP, GateState.RUN, "person:alice")


def test_operator_pause_holds_freeze_until_resumed():
    g = GateMachine()
    g.operator_pause("person:bob", "lunch")
    assert g.gate == GateState.FREEZE and g.held_by_operator
    for _ in range(5):
        assert g.evaluate(RULES, [o("baseline")], 0, 0) is None
    assert g.gate == GateState.FREEZE
    g.operator_resume("person:bob", "back")
    assert g.gate == GateState.RUN and not g.held_by_operator


def test_operator_stop_from_any_state():
    for start in ("RUN", "THROTTLE", "FREEZE"):
        g = GateMachine(state=start)
        t = g.operator_stop("person:c", "enough")
        assert g.gate == GateState.STOP and t.source.value == start
