"""The noise-aware keep rule inside a real session: baseline repeats, screen-then-confirm, the
evidence on every decision, seeds that differ for every repeat of a commit across sessions, and
noise pooled across sessions.

A real lab (git, DuckDB ledger, the constitution in force); only the runs are scripted, so the
decisions can be checked against known numbers: `Session.run_job` returns the val_bpb the test
gives each (description, run) instead of training.
"""

import statistics

import pytest

from controller.execution.runner import RunOutcome
from controller.execution.sandbox import SandboxResult
from controller.policy import noise
from controller.proposers import Proposal
from controller.session.loop import Session
from ledger import Decision, EventKind, Ledger
from ledger import payloads as P

REPEATS = {"baseline_runs = 2 ": "baseline_runs = 3 ",   # three baseline runs and the shipped confirmations
           "confirmation_runs = 2      # a promising": "confirmation_runs = 2      # a promising"}


class Script:
    """Proposals in order, and the val_bpb each run of each one scores."""

    name = "script"

    def __init__(self, items):
        self.items = list(items)

    def propose(self, ctx):
        if not self.items:
            return None
        label, line = self.items.pop(0)
        text = ctx.files["train.py"] + f"\n# {line}\n"
        return Proposal(description=label, files={"train.py": text.encode()}, source=f"script:{label}")


def scripted_runs(monkeypatch, scores):
    """Replace training with scripted scores; returns the calls as (description, run_index, seed_offset)."""
    calls = []

    def run_job(self, n, commit, run_index, description, seed_offset=0):
        calls.append((description, run_index, seed_offset))
        bpb = scores[description][run_index - 1]
        t = SandboxResult(0, False, False, 1.0, 10.0, "none", "", stopped=True, exit_seconds=1.0)
        return RunOutcome("ok", "", bpb, t, None, {})

    monkeypatch.setattr(Session, "run_job", run_job)
    return calls


def decided(lab):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return [(e, P.Decided.from_json(e.payload)) for e in led.events(kinds=[EventKind.DECIDED])]


def test_repeats_screening_confirmation_and_the_evidence(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    scores = {
        "baseline": [2.00, 2.02, 1.98],
        "null": [2.00],                      # no gain: discarded on its first run
        "lucky": [1.90, 1.95, 2.05],         # a lucky first run earns confirmations, then falls back
        "good": [1.80, 1.81, 1.79],          # a real gain, confirmed
        "after": [1.795],                    # judged against the new incumbent: its three runs
    }
    calls = scripted_runs(monkeypatch, scores)
    Session(lab, Script([("null", "a"), ("lucky", "b"), ("good", "c"), ("after", "d")]), tag="one").run()

    assert [c for c in calls if c[0] == "baseline"] == [("baseline", 1, 0), ("baseline", 2, 1), ("baseline", 3, 2)]
    assert [c[1] for c in calls if c[0] == "lucky"] == [1, 2, 3] and [c[1] for c in calls if c[0] == "null"] == [1]
    rows = {p.description: (e, p) for e, p in decided(lab)}
    base_e, base = rows["baseline"]
    assert base_e.decision == Decision.BASELINE and base.runs == scores["baseline"]
    assert base_e.val_bpb == pytest.approx(2.00) and base.noise_df == 4 + 2
    assert "over 3 run(s), sd 0.0200" in base.reason

    for label, want in (("null", "discard"), ("lucky", "discard"), ("good", "keep"), ("after", "discard")):
        e, p = rows[label]
        assert e.decision == want, (label, p.reason)
        assert p.runs == scores[label] and p.confidence == 0.95 and p.setup == noise.measurement_setup(lab.load_constitution())
        assert p.threshold is not None and p.noise_sd >= 0.02 and f"required {p.threshold:.4f}" in p.reason
    assert rows["lucky"][1].incumbent_runs == scores["baseline"]
    assert rows["lucky"][1].improvement == pytest.approx(2.00 - statistics.fmean(scores["lucky"]), abs=1e-6)
    assert rows["good"][1].reason.startswith("kept: the mean of its 3 runs")
    assert rows["after"][1].incumbent_runs == scores["good"]   # the new incumbent: all its runs
    assert rows["null"][1].reason.startswith("discarded: its run")


def test_a_later_session_pools_the_noise_and_draws_new_seeds(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    calls = scripted_runs(monkeypatch, {"baseline": [2.00, 2.04, 1.96], "x": [2.0]})
    Session(lab, Script([("x", "a")]), tag="first").run()
    calls.clear()
    # the second session's baseline is the same commit: its repeats continue the seed sequence
    scripted_runs(monkeypatch, {"baseline": [2.01, 1.99, 2.03], "y": [2.0]})
    Session(lab, Script([("y", "b")]), tag="second").run()
    second = decided(lab)[-2:]
    (base_e, base), (y_e, y) = second
    assert base_e.decision == Decision.BASELINE
    assert base_e.val_bpb == pytest.approx(statistics.fmean([2.00, 2.04, 1.96, 2.01, 1.99, 2.03]))  # all its runs
    assert base.noise_df == 4 + 5      # one commit, six runs in two sessions
    assert y.incumbent_runs == [2.00, 2.04, 1.96, 2.01, 1.99, 2.03]


def test_seed_offsets_continue_across_sessions(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    calls = scripted_runs(monkeypatch, {"baseline": [2.0, 2.0, 2.0], "x": [2.0]})
    Session(lab, Script([("x", "a")]), tag="first").run()
    Session(lab, Script([("x", "b")]), tag="second").run()
    assert [c[2] for c in calls if c[0] == "baseline"] == [0, 1, 2, 3, 4, 5]


def test_an_experiment_the_controller_trips_on_is_a_crash_that_still_says_what_it_was(make_lab, monkeypatch):
    lab = make_lab()
    scores = {"baseline": [2.0, 2.0], "after": [2.0]}
    calls = scripted_runs(monkeypatch, scores)
    real = Session.run_job

    def run_job(self, n, commit, run_index, description, seed_offset=0):
        if description == "trips":
            raise OSError("disk gone")  # anything the controller itself fails on mid-experiment
        return real(self, n, commit, run_index, description, seed_offset)

    monkeypatch.setattr(Session, "run_job", run_job)
    Session(lab, Script([("trips", "a"), ("after", "b")]), tag="trip").run()
    rows = {p.description: (e, p) for e, p in decided(lab)}
    e, p = rows["trips"]  # not an anonymous crash: the decision names the proposal it was
    assert e.decision == Decision.CRASH and p.source == "script:trips"
    assert "could not carry this experiment through (OSError: disk gone)" in p.reason
    assert rows["after"][0].decision == Decision.DISCARD and ("after", 1, 0) in calls  # the session went on
