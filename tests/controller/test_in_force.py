"""The constitution in force: hand edits before the first session, refusals after, amendments."""

import pytest

import constitution
from controller.policy.in_force import changed_keys, check_in_force, constitution_in_force
from ledger import EventKind, Ledger, payloads


@pytest.fixture
def led(tmp_path):
    with Ledger.open(tmp_path / "ledger.duckdb") as led:
        yield led


def base():
    return constitution.load_default()


def h(c):
    return constitution.constitution_hash(c)


def edited(c, **sections):
    """A copy of `c` with fields of some sections replaced: edited(c, decision={"min_improvement": 0.02})."""
    update = {name: getattr(c, name).model_copy(update=fields) for name, fields in sections.items()}
    return c.model_copy(update=update)


def amended(parent, **sections):
    """The next version after `parent`, as the amendments feature would write it."""
    child = edited(parent, meta={"version": parent.meta.version + 1, "parent_hash": h(parent)}, **sections)
    assert constitution.check_succession(parent, child) == []
    return child


def start_session(led, c, session="s1", rules=True):
    """What the session records at start: session_started with the hash, then constitution_loaded."""
    led.record(payloads.SessionStarted(tag="t", branch="charter/t", constitution_hash=h(c), constitution_version=c.meta.version),
               actor="controller", session=session)
    if rules:
        led.record(payloads.ConstitutionLoaded(hash=h(c), version=c.meta.version, rules=c.model_dump(mode="json")),
                   actor="controller", session=session)


def apply(led, parent, child, amendment_id="a1", version=None, parent_hash=None):
    led.record(payloads.AmendmentApplied(
        amendment_id=amendment_id, version=child.meta.version if version is None else version, hash=h(child),
        parent_hash=h(parent) if parent_hash is None else parent_hash,
    ), actor="controller")


def test_before_the_first_session_hand_edits_are_allowed(led):
    c = base()
    # charter init and charter prepare write events, but no session has put anything in force
    led.record(payloads.LabCreated(root="/lab", constitution_hash=h(c), constitution_version=1), actor="operator")
    led.record(payloads.ConstitutionLoaded(hash=h(c), version=1, reason="pinned", pinned={"data_hash": "0" * 64}), actor="operator")
    assert constitution_in_force(led.events()) is None
    assert check_in_force(edited(c, decision={"min_improvement": 0.5}), led.events()) is None


def test_the_same_constitution_is_fine_and_is_what_is_in_force(led):
    c = base()
    start_session(led, c)
    in_force = constitution_in_force(led.events())
    assert (in_force.hash, in_force.version) == (h(c), 1)
    assert in_force.rules == c.model_dump(mode="json")
    assert check_in_force(c, led.events()) is None
    # formatting and comments are not part of the canonical hash
    assert check_in_force(constitution.parse_text(constitution.default_text() + "\n# a note\n"), led.events()) is None


def test_a_hand_edit_is_refused_in_one_line_naming_each_change(led):
    c = base()
    start_session(led, c)
    session_budget = c.budgets.session.model_copy(update={"experiments": 41})
    changed = edited(c, decision={"min_improvement": 0.02}, budgets={"session": session_budget})
    line = check_in_force(changed, led.events())
    assert line == (
        "constitution.toml changed since it was put in force (budgets.session.experiments: 40 -> 41; "
        "decision.min_improvement: 0.01 -> 0.02) and the ledger records no amendment that made this version; "
        "restore it with git checkout; after a lab's first session only a ratified amendment may change it"
    )
    assert "\n" not in line


def test_a_text_edit_is_refused_too(led):
    start_session(led, base())
    text = constitution.default_text().replace("threshold = 15", "threshold = 50")
    line = check_in_force(constitution.parse_text(text), led.events())
    assert "gates.rules[4].threshold: 15.0 -> 50.0" in line


def test_many_changes_are_counted_after_three(led):
    c = base()
    start_session(led, c)
    changed = edited(c, decision={"min_improvement": 0.02, "confirmation_runs": 4, "noise_sd": 0.01},
                     sandbox={"max_processes": 64, "max_file_mb": 100})
    line = check_in_force(changed, led.events())
    assert "decision.confirmation_runs: 2 -> 4; decision.min_improvement: 0.01 -> 0.02; decision.noise_sd: 0.04 -> 0.01; and 2 more)" in line


def test_without_recorded_rules_the_refusal_names_the_hashes(led):
    c = base()
    start_session(led, c, rules=False)
    changed = edited(c, decision={"min_improvement": 0.02})
    line = check_in_force(changed, led.events())
    assert f"(hash {h(c)[:12]} -> {h(changed)[:12]})" in line
    assert "the ledger records no amendment" in line


def test_an_applied_amendment_is_fine(led):
    v1 = base()
    start_session(led, v1)
    led.record(payloads.SessionEnded(reason="done"), actor="controller", session="s1")
    v2 = amended(v1, decision={"min_improvement": 0.02})
    apply(led, v1, v2)
    in_force = constitution_in_force(led.events())
    assert (in_force.hash, in_force.version, in_force.amendment_id) == (h(v2), 2, "a1")
    assert check_in_force(v2, led.events()) is None
    # the old version is no longer in force; v2's rules were never recorded, so the hashes are named
    assert f"(hash {h(v2)[:12]} -> {h(v1)[:12]})" in check_in_force(v1, led.events())


def test_two_chained_amendments_are_fine(led):
    v1 = base()
    start_session(led, v1)
    v2 = amended(v1, decision={"min_improvement": 0.02})
    v3 = amended(v2, decision={"min_improvement": 0.03})
    apply(led, v1, v2, "a1")
    apply(led, v2, v3, "a2")
    assert check_in_force(v3, led.events()) is None
    assert "amendment a1 made this version (2), but version 3 is in force now" in check_in_force(v2, led.events())
    # the next session puts v3 in force with its rules
    start_session(led, v3, session="s2")
    in_force = constitution_in_force(led.events())
    assert (in_force.hash, in_force.version, in_force.rules["decision"]["min_improvement"]) == (h(v3), 3, 0.03)
    assert check_in_force(v3, led.events()) is None


def test_an_amendment_with_the_wrong_version_is_refused(led):
    v1 = base()
    start_session(led, v1)
    v2 = amended(v1, decision={"min_improvement": 0.02})
    apply(led, v1, v2, "a1", version=3)
    assert constitution_in_force(led.events()).hash == h(v1)
    line = check_in_force(v2, led.events())
    assert "amendment a1 that made this version does not follow version 1 in force (its version is 3, not 2)" in line
    assert "decision.min_improvement: 0.01 -> 0.02" in line


def test_an_amendment_with_the_wrong_parent_is_refused(led):
    v1 = base()
    start_session(led, v1)
    v2 = amended(v1, decision={"min_improvement": 0.02})
    apply(led, v1, v2, "a1", parent_hash="f" * 64)
    line = check_in_force(v2, led.events())
    assert f"(its parent is ffffffffffff, not {h(v1)[:12]})" in line


def test_a_broken_link_breaks_the_rest_of_the_chain(led):
    v1 = base()
    start_session(led, v1)
    v2 = amended(v1, decision={"min_improvement": 0.02})
    v3 = amended(v2, decision={"min_improvement": 0.03})
    apply(led, v1, v2, "a1", parent_hash="f" * 64)
    apply(led, v2, v3, "a2")
    assert constitution_in_force(led.events()).hash == h(v1)
    assert "amendment a2 that made this version does not follow version 1 in force" in check_in_force(v3, led.events())


def test_an_amended_file_whose_meta_disagrees_with_the_ledger_is_refused(led):
    v1 = base()
    start_session(led, v1)
    # the amendment's text kept version 1 / no parent, yet the ledger applied it as version 2 of v1
    v2 = edited(v1, decision={"min_improvement": 0.02})
    apply(led, v1, v2, "a1", version=2)
    line = check_in_force(v2, led.events())
    assert line.startswith("constitution.toml is the version amendment a1 applied but disagrees with the ledger (meta.version is 1, the ledger says 2")


def test_an_old_ledger_without_hashes_on_resume_reads_fine(led):
    v1 = base()
    start_session(led, v1)
    # an older controller wrote session_resumed without constitution_hash / constitution_version
    led.append(EventKind.SESSION_RESUMED, actor="controller", session="s1", payload={"tag": "t", "reset_to": "abc", "interrupted": []})
    in_force = constitution_in_force(led.events())
    assert (in_force.hash, in_force.version) == (h(v1), 1)
    assert check_in_force(v1, led.events()) is None
    assert "decision.min_improvement" in check_in_force(edited(v1, decision={"min_improvement": 0.02}), led.events())


def test_an_old_session_start_without_a_hash_falls_back_on_its_constitution_loaded(led):
    v1 = base()
    led.append(EventKind.SESSION_STARTED, actor="controller", session="s1", payload={"tag": "t", "branch": "charter/t"})
    assert constitution_in_force(led.events()) is None  # nothing recorded what it ran under
    led.record(payloads.ConstitutionLoaded(hash=h(v1), version=1, rules=v1.model_dump(mode="json")), actor="controller", session="s1")
    assert constitution_in_force(led.events()).hash == h(v1)
    assert check_in_force(v1, led.events()) is None


def test_a_resume_under_an_amended_version_moves_the_record(led):
    v1 = base()
    start_session(led, v1)
    v2 = amended(v1, decision={"min_improvement": 0.02})
    apply(led, v1, v2)
    led.record(payloads.SessionResumed(tag="t", constitution_hash=h(v2), constitution_version=2), actor="controller", session="s1")
    in_force = constitution_in_force(led.events())
    assert (in_force.hash, in_force.version, in_force.amendment_id) == (h(v2), 2, "")
    assert check_in_force(v2, led.events()) is None


def test_changed_keys_is_sorted_and_names_leaves():
    old = {"b": {"y": 1, "x": "a"}, "a": [1, 2], "rules": [{"t": 1}, {"t": 2}], "pins": {"prepare.py": "0" * 64}}
    new = {"b": {"y": 2, "x": "a", "z": True}, "a": [1, 3], "rules": [{"t": 1}, {"t": 5}], "pins": {"prepare.py": "1" * 64}}
    assert changed_keys(old, new) == [
        "a: [1, 2] -> [1, 3]",
        "b.y: 1 -> 2",
        "b.z: (absent) -> true",
        'pins."prepare.py": "00000000000000000000... -> "11111111111111111111...',
        "rules[1].t: 2 -> 5",
    ]
    assert changed_keys(old, old) == []


def test_changed_keys_sorts_list_items_by_number():
    old = {"rules": [{"t": i} for i in range(12)]}
    new = {"rules": [{"t": i + 1} for i in range(12)]}
    keys = [line.split(":")[0] for line in changed_keys(old, new)]
    assert keys == [f"rules[{i}].t" for i in range(12)]


def test_an_upgrade_that_adds_a_schema_field_with_a_default_is_not_a_change(led):
    # what an older Charter recorded: the same rules without a field this schema added since
    c = base()
    old = c.model_dump(mode="json")
    del old["proposer"]["deadline_seconds"]
    led.record(payloads.SessionStarted(tag="t", constitution_hash="1" * 64, constitution_version=1), actor="controller", session="s1")
    led.record(payloads.ConstitutionLoaded(hash="1" * 64, version=1, rules=old), actor="controller", session="s1")
    assert check_in_force(c, led.events()) is None
    # a real edit on top of the upgrade is still refused, and named
    line = check_in_force(edited(c, decision={"min_improvement": 0.02}), led.events())
    assert line is not None and "decision.min_improvement: 0.01 -> 0.02" in line
