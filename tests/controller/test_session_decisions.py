"""The noise-aware keep rule inside a real session: baseline repeats, screen-then-confirm, the
evidence on every decision, seeds that differ for every repeat of a commit across sessions, and
noise pooled across sessions.

A real lab (git, DuckDB ledger, the constitution in force); only the runs are scripted, so the
decisions can be checked against known numbers: `Session.run_job` returns the val_bpb the test
gives each (description, run) instead of training.
"""

import statistics
from datetime import datetime, timezone

import pytest

from controller.execution.runner import RunOutcome
from controller.execution.sandbox import SandboxResult
from controller.policy import noise
from controller.proposers import Proposal
from controller.session.loop import Session, SessionState
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
    """Replace training with scripted scores; returns the calls as (description, run_index, seed_offset).
    A run of an incumbent for a candidate's decision (run index 0) is named by the incumbent's
    label and scores that label's next value (by its seed offset, its runs so far in the lab)."""
    calls, labels = [], {}

    def run_job(self, n, commit, run_index, description, seed_offset=0, **where):
        if run_index == 0:
            description = labels[commit]
            bpb = scores[description][seed_offset]
        else:
            labels[commit] = description
            bpb = scores[description][run_index - 1]
        calls.append((description, run_index, seed_offset))
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
        "null": [2.00],                      # no gain: discarded on its first run, the baseline run once
        "lucky": [1.90, 1.95, 2.05],         # a lucky first run: the baseline's repeats, confirmations, then it falls back
        "good": [1.80, 1.81, 1.79],          # a real gain, confirmed
        "after": [1.795],                    # judged against the new incumbent: its three runs
    }
    calls = scripted_runs(monkeypatch, scores)
    Session(lab, Script([("null", "a"), ("lucky", "b"), ("good", "c"), ("after", "d")]), tag="one").run()

    # the baseline runs once at session start; its repeats only when "lucky" could be kept on them
    assert [c for c in calls if c[0] == "baseline"] == [("baseline", 1, 0), ("baseline", 0, 1), ("baseline", 0, 2)]
    order = [c[0] for c in calls]
    assert order == ["baseline", "null", "lucky", "baseline", "baseline", "lucky", "lucky", "good", "good", "good", "after"]
    assert [c[1] for c in calls if c[0] == "lucky"] == [1, 2, 3] and [c[1] for c in calls if c[0] == "null"] == [1]
    rows = {p.description: (e, p) for e, p in decided(lab)}
    base_e, base = rows["baseline"]
    assert base_e.decision == Decision.BASELINE and base.runs == scores["baseline"][:1]
    assert base_e.val_bpb == pytest.approx(2.00) and base.noise_df == 4
    assert "over 1 run(s)" in base.reason

    for label, want in (("null", "discard"), ("lucky", "discard"), ("good", "keep"), ("after", "discard")):
        e, p = rows[label]
        assert e.decision == want, (label, p.reason)
        assert p.runs == scores[label] and p.confidence == 0.95 and p.setup == noise.measurement_setup(lab.load_constitution())
        assert p.threshold is not None and p.noise_sd >= 0.02 and f"required {p.threshold:.4f}" in p.reason
    assert rows["null"][1].incumbent_runs == [2.00] and rows["null"][1].incumbent_added == []
    assert "after 3 runs and 3 of the incumbent" in rows["null"][1].reason  # the screen's bar: both sides' runs to come
    lucky = rows["lucky"][1]
    assert lucky.incumbent_runs == scores["baseline"] and lucky.incumbent_added == [2.02, 1.98]
    assert lucky.incumbent_commit == base_e.commit_sha
    assert lucky.improvement == pytest.approx(2.00 - statistics.fmean(scores["lucky"]), abs=1e-6)
    assert rows["good"][1].reason.startswith("kept: the mean of its 3 runs") and rows["good"][1].incumbent_added == []
    assert rows["after"][1].incumbent_runs == scores["good"]   # the new incumbent: all its runs
    assert rows["null"][1].reason.startswith("discarded: its run")
    # the repeats are in the ledger as runs of the baseline's commit, and pool into the noise
    runs = noise.runs_by_commit([e for e, _ in decided(lab)], noise.measurement_setup(lab.load_constitution()))
    assert runs[base_e.commit_sha] == scores["baseline"]


def test_a_candidate_that_can_not_pay_for_the_repeats_never_asks_for_them(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    calls = scripted_runs(monkeypatch, {"baseline": [2.00], "worse": [2.10], "same": [1.99]})
    Session(lab, Script([("worse", "a"), ("same", "b")]), tag="quiet").run()
    assert [c[0] for c in calls] == ["baseline", "worse", "same"]  # one run each: nothing was promising


def test_an_incumbent_run_that_fails_leaves_the_judgement_on_the_runs_it_has(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    scores = {"baseline": [2.00], "good": [1.70, 1.71, 1.69]}
    scripted_runs(monkeypatch, scores)
    scripted = Session.run_job

    def run_job(self, n, commit, run_index, description, seed_offset=0, **where):
        if run_index == 0:  # the baseline's repeat crashes (the machine, not the candidate)
            assert where["work_dir"] != lab.root and where["work_dir"].joinpath("train.py").is_file()
            t = SandboxResult(1, False, False, 1.0, 10.0, "none", "Killed", exit_seconds=1.0)
            return RunOutcome("crash", "exit code 1", None, t, None, {})
        return scripted(self, n, commit, run_index, description, seed_offset, **where)

    monkeypatch.setattr(Session, "run_job", run_job)
    Session(lab, Script([("good", "a")]), tag="short").run()
    rows = {p.description: (e, p) for e, p in decided(lab)}
    e, p = rows["good"]
    assert e.decision == Decision.KEEP, p.reason
    assert p.incumbent_runs == [2.00] and p.incumbent_added == [] and p.runs == scores["good"]
    assert "(1 run)" in p.reason and "of the incumbent" not in p.reason  # the bar of a one-run incumbent
    assert lab.git.head() == e.commit_sha  # the keep is in the lab's work tree, the incumbent's worktree gone



def test_an_incumbent_run_whose_worker_is_lost_makes_the_candidate_interrupted(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    scripted_runs(monkeypatch, {"baseline": [2.00], "good": [1.70, 1.71, 1.69], "next": [2.0]})
    scripted = Session.run_job

    def run_job(self, n, commit, run_index, description, seed_offset=0, **where):
        if run_index == 0:
            t = SandboxResult(None, False, False, 1.0, 10.0, "none", "", exit_seconds=1.0)
            return RunOutcome("interrupted", "its worker was lost", None, t, None, {})
        return scripted(self, n, commit, run_index, description, seed_offset, **where)

    monkeypatch.setattr(Session, "run_job", run_job)
    Session(lab, Script([("good", "a"), ("next", "b")]), tag="lost").run()
    rows = {p.description: (e, p) for e, p in decided(lab)}
    assert rows["good"][0].decision == Decision.INTERRUPTED and "its worker was lost" in rows["good"][1].reason
    assert rows["next"][0].decision == Decision.DISCARD  # the session went on


def test_two_runs_of_one_incumbent_in_flight_at_once_never_share_a_seed(make_lab):
    # with several workers two promising candidates may each ask for a run of the incumbent
    lab = make_lab(rules=REPEATS)
    head = lab.git.head()
    session = Session(lab, Script([]), tag="seeds")
    session.state = SessionState(id="s-seeds", tag="seeds", branch="charter/seeds", started=datetime.now(timezone.utc),
                                 runs={head: [2.0]})
    first, second = session.incumbent_run(1, head), session.incumbent_run(2, head)
    a, b = next(first), next(second)  # both asked for before either comes back
    assert (a.seed_offset, b.seed_offset) == (1, 2) and a.commit == b.commit == head
    assert a.work_dir != b.work_dir and a.work_dir.joinpath("train.py").is_file() and a.work_dir != lab.root
    first.close(), second.close()  # a decision abandoned mid-run: its worktree goes with it
    assert not a.work_dir.exists() and not b.work_dir.exists()

def test_a_later_session_pools_the_noise_and_draws_new_seeds(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    calls = scripted_runs(monkeypatch, {"baseline": [2.00, 2.04, 1.96], "x": [1.80, 2.10]})
    Session(lab, Script([("x", "a")]), tag="first").run()   # promising: the baseline's two repeats, then x falls back
    assert [c[0] for c in calls] == ["baseline", "x", "baseline", "baseline", "x"]
    calls.clear()
    # the second session's baseline is the same commit: it has three runs already (the
    # repeats came from x's decided event), so its one run continues the seed sequence
    scripted_runs(monkeypatch, {"baseline": [2.01], "y": [1.80, 1.85, 1.83]})
    Session(lab, Script([("y", "b")]), tag="second").run()
    second = decided(lab)[-2:]
    (base_e, base), (y_e, y) = second
    assert base_e.decision == Decision.BASELINE
    assert base_e.val_bpb == pytest.approx(statistics.fmean([2.00, 2.04, 1.96, 2.01]))  # all its runs
    assert base.noise_df == 4 + 3 + 1  # the baseline: four runs in two sessions; x: two
    assert y.incumbent_runs == [2.00, 2.04, 1.96, 2.01] and y.incumbent_added == []  # enough runs: no repeat


def test_seed_offsets_continue_across_sessions(make_lab, monkeypatch):
    lab = make_lab(rules=REPEATS)
    calls = scripted_runs(monkeypatch, {"baseline": [2.0, 2.0, 2.0, 2.0], "x": [1.8, 2.2]})
    Session(lab, Script([("x", "a")]), tag="first").run()
    Session(lab, Script([("x", "b")]), tag="second").run()  # x again: a new commit, and worse, so one run
    assert [c[2] for c in calls if c[0] == "baseline"] == [0, 1, 2, 3]


def test_an_experiment_the_controller_trips_on_is_a_crash_that_still_says_what_it_was(make_lab, monkeypatch):
    lab = make_lab()
    scores = {"baseline": [2.0, 2.0], "after": [2.0]}
    calls = scripted_runs(monkeypatch, scores)
    real = Session.run_job

    def run_job(self, n, commit, run_index, description, seed_offset=0, **where):
        if description == "trips":
            raise OSError("disk gone")  # anything the controller itself fails on mid-experiment
        return real(self, n, commit, run_index, description, seed_offset, **where)

    monkeypatch.setattr(Session, "run_job", run_job)
    Session(lab, Script([("trips", "a"), ("after", "b")]), tag="trip").run()
    rows = {p.description: (e, p) for e, p in decided(lab)}
    e, p = rows["trips"]  # not an anonymous crash: the decision names the proposal it was
    assert e.decision == Decision.CRASH and p.source == "script:trips"
    assert "could not carry this experiment through (OSError: disk gone)" in p.reason
    assert rows["after"][0].decision == Decision.DISCARD and ("after", 1, 0) in calls  # the session went on
