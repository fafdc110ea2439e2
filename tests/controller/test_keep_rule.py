"""The keep rule: a candidate must beat the best by the constitution's bar, confirmed if asked."""

import math

from controller.policy.keep_rule import judge


def test_clear_improvement_is_kept():
    v = judge(best=1.80, runs=[1.75], min_improvement=0.01, confirmation_runs=0, noise_sd=0.007)
    assert v.keep and v.need_more_runs == 0 and math.isclose(v.improvement, 0.05)
    assert "beats best 1.8000" in v.reason and "7.1 sd" in v.reason


def test_improvement_below_the_bar_is_discarded():
    v = judge(1.80, [1.795], 0.01, 0)
    assert not v.keep and v.need_more_runs == 0 and "does not beat" in v.reason


def test_worse_is_discarded_even_with_zero_bar():
    assert not judge(1.80, [1.81], 0.0, 0).keep
    assert not judge(1.80, [1.80], 0.0, 0).keep


def test_confirmation_runs_are_requested_then_the_mean_decides():
    first = judge(1.80, [1.77], 0.01, 2)
    assert not first.keep and first.need_more_runs == 2
    assert judge(1.80, [1.77, 1.78, 1.775], 0.01, 2).keep
    lucky = judge(1.80, [1.77, 1.80, 1.81], 0.01, 2)
    assert not lucky.keep and lucky.need_more_runs == 0 and "mean of 3 runs" in lucky.reason


def test_a_failing_first_run_is_not_confirmed():
    v = judge(1.80, [1.85], 0.01, 3)
    assert not v.keep and v.need_more_runs == 0


def test_non_finite_is_never_kept():
    assert not judge(1.80, [float("nan")], 0.0, 0).keep
    assert not judge(1.80, [], 0.0, 0).keep
