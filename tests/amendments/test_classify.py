"""The pure parts: the semantic diff, tier classification, succession and the proposal file."""

from __future__ import annotations

import hashlib
import tomllib

import pytest

import constitution
from constitution import ConstitutionError, constitution_hash
from constitution.diff import ABSENT, semantic_diff
from amendments.errors import AmendmentRefused
from amendments.patch import apply_settings, parse_setting
from amendments.proposal import amendment_id, build_proposal, file_name, read_file, render_file, slug
from amendments.tiers import Tier

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICKU8/oE+8wKTezhcct2E3EDOd4MpC/i85l8wEgOMigR alice"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPBB/3vTUhsCiitKQkicjNqvJ64uCwmyQvcikCRcbNJZ bob"


def parent_text(extra: str = "") -> str:
    text = constitution.default_text().replace(
        "ratifiers = []", f'ratifiers = [{{ name = "alice", key = "{KEY}" }}, {{ name = "bob", key = "{KEY2}" }}]')
    return text.replace("[amendment]\n", "[amendment]\n" + extra, 1) if extra else text


def successor(parent: str, *sets: str) -> str:
    rules = constitution.parse_text(parent)
    settings = [parse_setting(s) for s in sets]
    settings += [parse_setting(f"meta.version={rules.meta.version + 1}"),
                 parse_setting(f'meta.parent_hash="{constitution_hash(rules)}"')]
    return apply_settings(parent, settings)


def classify(*sets: str, parent: str | None = None):
    parent = parent or parent_text()
    return build_proposal(successor(parent, *sets), constitution.parse_text(parent)).classification


def test_the_diff_names_each_leaf_where_it_changed():
    parent = constitution.parse_text(parent_text())
    child = constitution.parse_text(successor(parent_text(), "budgets.session.experiments=60", "gates.rules[2].threshold=4",
                                              'evaluation.immutable."prepare.py"="' + "a" * 64 + '"'))
    words = [c.words for c in semantic_diff(parent.model_dump(mode="json"), child.model_dump(mode="json"))]
    assert "budgets.session.experiments: 40 -> 60" in words
    assert "gates.rules[2].threshold: 3.0 -> 4.0" in words
    assert any(w.startswith('evaluation.immutable."prepare.py": ') for w in words)
    assert any(w.startswith("meta.version: 1 -> 2") for w in words)


def test_an_added_list_item_is_one_change_from_absent():
    old = {"gates": {"rules": [{"name": "a"}]}}
    new = {"gates": {"rules": [{"name": "a"}, {"name": "b"}]}}
    [c] = semantic_diff(old, new)
    assert c.path == ("gates", "rules", 1) and c.old is ABSENT and c.new == {"name": "b"}


@pytest.mark.parametrize("sets, tier, why", [
    (["budgets.session.experiments=60"], Tier.MAJOR, "loosens a limit"),
    (["budgets.session.experiments=20"], Tier.MINOR, "tightens a limit"),
    (["budgets.experiment.memory_hard_mb=9000"], Tier.MAJOR, "loosens a limit"),
    (["decision.min_improvement=0.02"], Tier.MINOR, "tightens a threshold"),
    (["decision.min_improvement=0.005"], Tier.MAJOR, "loosens a threshold"),
    (["gates.rules[0].threshold=2"], Tier.MINOR, "a gate rule fires sooner"),  # crash-streak >= 3
    (["gates.rules[0].threshold=5"], Tier.MAJOR, "a gate rule fires later"),
    (['gates.rules[0].target="FREEZE"'], Tier.MINOR, "a gate rule escalates further"),
    (['gates.rules[6].target="THROTTLE"'], Tier.MAJOR, "a gate rule escalates less"),  # budget-exhausted
    (["scope.max_diff_lines=400"], Tier.MAJOR, "loosens a limit"),
    (['scope.editable=["train.py", "model.py"]'], Tier.MAJOR, "widens editable"),
    (['scope.forbidden=["network"]'], Tier.MAJOR, "forbids less"),
    (["proposer.network=true"], Tier.MAJOR, "gives the agent the network"),
    (['budgets.experiment.clock="wall"'], Tier.MAJOR, "no known direction"),
    (['meta.name="renamed"'], Tier.MINOR, "a label for people"),
    (['sandbox.level="none"'], Tier.CONSTITUTIONAL, "the sandbox level"),
    (["sandbox.allow_weaker=true"], Tier.CONSTITUTIONAL, "the sandbox level"),
    (["evaluation.eval_tokens=8192"], Tier.CONSTITUTIONAL, "the evaluation"),
    (['evaluation.immutable."prepare.py"="' + "b" * 64 + '"'], Tier.CONSTITUTIONAL, "an immutable file's pin"),
    (["amendment.cooling_hours=1"], Tier.CONSTITUTIONAL, "the amendment rules"),
    (['amendment.ratifiers[1].name="bobby"'], Tier.CONSTITUTIONAL, "the ratifier list"),
    # the amendment's tier is its highest change's
    (["budgets.session.experiments=20", "evaluation.eval_tokens=8192"], Tier.CONSTITUTIONAL, "the evaluation"),
])
def test_tiers(sets, tier, why):
    c = classify(*sets)
    assert c.tier == tier
    assert any(why in r.why for r in c.reasons if r.tier == tier), [r.words for r in c.reasons]


def test_an_entrenched_section_needs_the_constitutional_tier():
    parent = parent_text().replace('entrenched = ["evaluation", "amendment"]', 'entrenched = ["evaluation", "amendment", "decision"]')
    c = classify("decision.min_improvement=0.02", parent=parent)
    assert c.tier == Tier.CONSTITUTIONAL and "entrenched section decision" in c.reasons[0].why
    assert c.needed(constitution.parse_text(parent)) == 2


def test_succession_is_checked_with_the_values_it_needs():
    parent = constitution.parse_text(parent_text())
    wrong = apply_settings(parent_text(), [parse_setting("meta.version=3"), parse_setting(f'meta.parent_hash="{"c" * 64}"'),
                                           parse_setting("budgets.session.experiments=20")])
    with pytest.raises(ConstitutionError) as e:
        build_proposal(wrong, parent, label="p.toml")
    assert e.value.problems == [
        "p.toml: meta.version: must be 2 (parent is version 1)",
        f"p.toml: meta.parent_hash: must be {constitution_hash(parent)}, the parent's canonical hash",
    ]


def test_a_rollback_below_the_highest_applied_version_is_refused():
    with pytest.raises(AmendmentRefused, match="at or below version 2, the highest ever applied: a rollback is refused"):
        build_proposal(parent_text(), constitution.parse_text(parent_text()), highest_applied=2)


def test_a_proposal_that_changes_no_rule_is_refused():
    with pytest.raises(AmendmentRefused, match="changes no rule of version 1"):
        build_proposal(successor(parent_text()), constitution.parse_text(parent_text()))


def test_the_id_is_the_sha256_of_the_exact_text():
    text = successor(parent_text(), "budgets.session.experiments=20")
    p = build_proposal(text, constitution.parse_text(parent_text()))
    assert p.id == hashlib.sha256(text.encode()).hexdigest() == amendment_id(text)
    # a comment is not a rule, but it is content: another text is another amendment
    assert build_proposal(text + "# note\n", constitution.parse_text(parent_text())).id != p.id


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_the_proposal_file_holds_the_text_exactly(line_end):
    text = successor(parent_text(), "budgets.session.experiments=20").replace("\n", line_end)
    p = build_proposal(text, constitution.parse_text(parent_text()))
    body = render_file(p, 7, "carol", "fewer experiments", "2026-12-01T00:00:00Z", 1)
    f = read_file(body, "x.toml")
    assert f.text == text and f.id == p.id == f.content_id
    fields = tomllib.loads(body)
    assert fields["tier"] == "minor" and fields["changes"] == ["budgets.session.experiments: 40 -> 20 (tightens a limit: minor)"]
    assert file_name(7, "Fewer experiments, please!") == "amendments/0007-fewer-experiments-please.toml"
    assert slug("!!!") == "amendment"
