"""Proposer kinds come from a registry: built-ins, entry points of installed packages, clear refusals."""

import threading

import pytest

import constitution
from controller.proposers import ProposerError, ProposerOptions, Proposal, ProposerResult, as_result, available, make_proposer
from controller.proposers.offline import OfflineProposer
from controller.session.loop import _call_with_deadline

RULES = constitution.load_default()


def test_builtin_kinds_build_from_options(tmp_path):
    assert {"offline", "queue"} <= set(available())
    assert isinstance(make_proposer("offline", ProposerOptions(RULES, seed=3)), OfflineProposer)
    assert make_proposer("queue", ProposerOptions(RULES, queue_dir=tmp_path)).directory == tmp_path
    with pytest.raises(ProposerError, match="needs --queue"):
        make_proposer("queue", ProposerOptions(RULES))


def test_an_installed_package_adds_a_kind_through_an_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "charter_fake_proposer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "class Fake:\n    name = 'fake'\n    def __init__(self, seed): self.seed = seed\n"
        "    def propose(self, ctx): return None\n\n"
        "def build(options):\n    return Fake(options.seed)\n")
    dist = tmp_path / "charter_fake_proposer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: charter-fake-proposer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[charter.proposers]\nfake = charter_fake_proposer:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert "fake" in available()
    made = make_proposer("fake", ProposerOptions(RULES, seed=7))
    assert (made.name, made.seed) == ("fake", 7)


def test_an_unknown_kind_is_refused_with_what_is_installed():
    with pytest.raises(ProposerError) as err:
        make_proposer("anthropic-typo", ProposerOptions(RULES))
    assert "not installed" in str(err.value) and "offline" in str(err.value)


def test_what_a_proposer_returns_is_normalized_or_refused():
    p = Proposal("d")
    assert as_result(p) == ProposerResult(p) and as_result(None) == ProposerResult(None)
    with pytest.raises(TypeError, match="not a Proposal"):
        as_result({"description": "a dict is not a proposal"})
    with pytest.raises(TypeError, match="holds a str"):
        as_result(ProposerResult("train.py"))


def test_a_proposer_that_raises_or_overruns_its_deadline_is_an_outcome(tmp_path):
    def boom(ctx):
        raise KeyError("no such file")

    value, error, overran = _call_with_deadline(boom, None, 5)
    assert value is None and error == "KeyError: 'no such file'" and not overran
    never = threading.Event()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    value, error, overran = _call_with_deadline(lambda ctx: never.wait(), None, 0.05, cleanup=scratch)
    assert value is None and overran and "did not return within proposer.deadline_seconds = 0.05" in error
    assert scratch.exists(), "the abandoned proposer's scratch dir must outlive its deadline"
    never.set()
    assert _call_with_deadline(lambda ctx: Proposal("ok"), None, 5) == (Proposal("ok"), None, False)


@pytest.mark.parametrize("bad, why", [
    (Proposal(None), "description must be text"),
    (Proposal("d", params={"LR": float("nan")}), "finite numbers"),
    (Proposal("d", params={"LR": 10**400}), "finite numbers"),
    (Proposal("d", files={"train.py": "text, not bytes"}), "bytes or None"),
    (Proposal("d", patch=b"bytes"), "patch must be text"),
])
def test_a_malformed_proposal_is_refused_with_what_is_wrong(bad, why):
    with pytest.raises(TypeError, match=why):
        as_result(bad)


@pytest.mark.parametrize("usage, why", [
    (dict(input_tokens="1000"), "input_tokens must be a count"),
    (dict(output_tokens=-5), "output_tokens must be a count"),
    (dict(dollars=float("nan")), "dollars must be a finite number"),
    (dict(calls=True), "calls must be a count"),
])
def test_malformed_usage_is_refused_before_it_reaches_the_budgets(usage, why):
    from controller.proposers import AgentUsage

    with pytest.raises(TypeError, match=why):
        as_result(ProposerResult(Proposal("d"), AgentUsage(**usage)))
