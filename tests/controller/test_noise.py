"""Noise, measured: repeated runs of a commit pool across commits and sessions of a real ledger,
within one measurement setup, and outweigh the constitution's prior as they accumulate."""

import math
import random
import statistics

import pytest

import constitution
from controller.policy import noise
from ledger import Decision, Ledger
from ledger import payloads as P

RULES = constitution.load_default()


def test_pooled_sd_weights_commits_by_their_degrees_of_freedom():
    a, b = [1.0, 1.2, 1.4], [2.0, 2.1]
    sd, df, used = noise.pooled([a, b, [3.0]])          # a single run says nothing about the noise
    want = math.sqrt((statistics.variance(a) * 2 + statistics.variance(b) * 1) / 3)
    assert (df, used) == (3, 2) and sd == pytest.approx(want)
    assert noise.pooled([[1.0], []]) == (None, 0, 0)


def test_the_prior_is_outweighed_as_repeats_accumulate():
    rng = random.Random(1)
    prior = noise.estimate([], prior_sd=0.007, prior_df=4)
    assert (prior.sd, prior.df, prior.measured_sd) == (0.007, 4, None)
    groups = [[rng.gauss(2.0, 0.03) for _ in range(3)] for _ in range(40)]   # the truth is 0.03
    few, many = noise.estimate(groups[:1], 0.007, 4), noise.estimate(groups, 0.007, 4)
    assert 0.007 < few.sd < many.sd and many.df == 4 + 80
    assert many.sd == pytest.approx(0.03, rel=0.15)
    assert "measured" in many.describe() and "80 df over 40 commit(s)" in many.describe()


def test_identical_repeats_cannot_lower_the_estimate_below_the_floor():
    # a train.py that ignores its seed offset repeats itself exactly: it must not shrink the bar
    copies = [[2.0, 2.0, 2.0] for _ in range(50)]
    est = noise.estimate(copies, prior_sd=0.02, prior_df=4)
    assert est.measured_sd == 0.0 and est.sd == 0.02 and est.df == 104


def with_values(**sections) -> constitution.Constitution:
    """The default rules with some fields changed, e.g. with_values(experiment={"clock": "wall"})."""
    data = RULES.model_dump(mode="json")
    for name, values in sections.items():
        where = data["budgets"] if name in ("experiment", "session") else data
        where[name].update(values)
    return constitution.Constitution.model_validate(data)


def test_setup_fingerprint_changes_with_the_budget_and_clock_not_the_gates():
    base = noise.measurement_setup(RULES)
    assert noise.measurement_setup(with_values(experiment={"training_seconds": 120})) != base
    assert noise.measurement_setup(with_values(experiment={"clock": "wall"})) != base
    assert noise.measurement_setup(with_values(evaluation={"eval_tokens": 4096})) != base
    assert noise.measurement_setup(with_values(gates={"probation_experiments": 9}, session={"experiments": 7})) == base
    # runs on one of several workers (a CPU each) are not comparable with runs on all the CPUs
    assert noise.measurement_setup(RULES, workers=1) == base != noise.measurement_setup(RULES, workers=2)
    assert noise.measurement_setup(RULES, workers=2) == noise.measurement_setup(RULES, workers=8)


def test_runs_pool_across_sessions_of_a_real_ledger_within_one_setup(tmp_path):
    setup = noise.measurement_setup(RULES)
    other = noise.measurement_setup(with_values(evaluation={"eval_tokens": 4096}))
    with Ledger.open(tmp_path / "ledger.duckdb") as led:
        def decided(session, n, decision, commit, runs, setup_key):
            led.record(P.Decided(decision=decision.value, runs=runs, setup=setup_key), actor="controller", session=session,
                       experiment=n, decision=decision, commit_sha=commit, val_bpb=statistics.fmean(runs) if runs else None)
        decided("s1", 0, Decision.BASELINE, "base", [2.00, 2.02, 2.04], setup)
        decided("s1", 1, Decision.DISCARD, "c1", [1.99, 2.03], setup)
        decided("s1", 2, Decision.CRASH, "c2", [], setup)
        decided("s2", 0, Decision.BASELINE, "base", [2.01, 2.03], setup)       # the same commit, a later session
        decided("s2", 1, Decision.KEEP, "c3", [1.90], setup)
        decided("s3", 0, Decision.BASELINE, "base", [2.50, 2.90], other)        # another setup: not comparable
        events = led.events()
    runs = noise.runs_by_commit(events, setup)
    assert runs == {"base": [2.00, 2.02, 2.04, 2.01, 2.03], "c1": [1.99, 2.03], "c3": [1.90]}
    est = noise.estimate(runs.values(), RULES.decision.noise_sd, RULES.decision.noise_prior_df)
    assert est.measured_df == 4 + 1 and est.commits == 2
    assert est.measured_sd == pytest.approx(noise.pooled([runs["base"], runs["c1"]])[0])
    assert noise.runs_by_commit(events, other) == {"base": [2.50, 2.90]}
