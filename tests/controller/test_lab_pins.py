"""Pinning hashes into constitution text: a TOML round trip that keeps every comment and line."""

import pytest

import constitution
from controller.workspace.lab import LabError, set_pins

PREPARE = ("evaluation", "immutable", "prepare.py")
PROGRAM = ("evaluation", "immutable", "program.md")
DATA = ("evaluation", "data_hash")
TOKENIZER = ("evaluation", "tokenizer_hash")
ALL_PINS = {PREPARE: "a" * 64, PROGRAM: "b" * 64, DATA: "c" * 64, TOKENIZER: "d" * 64}


def comment_of(line):
    """The comment part of a line (what follows an unquoted #), or ''."""
    in_string = None
    for i, ch in enumerate(line):
        if in_string:
            if ch == in_string:
                in_string = None
        elif ch in "\"'":
            in_string = ch
        elif ch == "#":
            return line[i:]
    return ""


def test_pins_change_only_the_pinned_values_and_keep_every_comment():
    text = constitution.default_text()
    out = set_pins(text, ALL_PINS)
    before, after = text.splitlines(), out.splitlines()
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == 4  # one line per pin, nothing else
    by_key = {'"prepare.py"': "a" * 64, '"program.md"': "b" * 64, "data_hash": "c" * 64, "tokenizer_hash": "d" * 64}
    for a, b in changed:
        key = a.split("=")[0].strip()
        # only the empty value became the pin: key, spacing and comment are byte-for-byte the same
        assert b == a.replace('""', f'"{by_key.pop(key)}"', 1)
        assert comment_of(b) == comment_of(a) != ""
    assert by_key == {}
    for line in before:
        if comment_of(line):
            assert comment_of(line) in out
    assert out.endswith("\n") and text.endswith("\n")


def test_the_pinned_text_still_parses_with_the_pins_set():
    rules = constitution.parse_text(set_pins(constitution.default_text(), ALL_PINS))
    assert rules.evaluation.immutable == {"prepare.py": "a" * 64, "program.md": "b" * 64}
    assert (rules.evaluation.data_hash, rules.evaluation.tokenizer_hash) == ("c" * 64, "d" * 64)
    # everything else is the default
    default = constitution.load_default().model_dump(mode="json")
    pinned = rules.model_dump(mode="json")
    pinned["evaluation"].update(immutable=default["evaluation"]["immutable"], data_hash="", tokenizer_hash="")
    assert pinned == default


def test_pinning_twice_replaces_the_value_and_no_pins_is_the_identity():
    text = constitution.default_text()
    assert set_pins(text, {}) == text
    once = set_pins(text, {DATA: "1" * 64})
    twice = set_pins(once, {DATA: "2" * 64})
    assert set_pins(once, {DATA: ""}) == text  # back to unpinned, byte for byte
    assert constitution.parse_text(twice).evaluation.data_hash == "2" * 64


def test_a_hand_written_layout_is_kept():
    text = constitution.default_text().replace(
        '[evaluation.immutable]     # files nobody', '[evaluation.immutable]   # (spacing changed)  files nobody')
    text = text.replace('"program.md" = ""', "'program.md'   =   \"\"")
    out = set_pins(text, {PROGRAM: "e" * 64})
    assert "[evaluation.immutable]   # (spacing changed)  files nobody" in out
    assert "'program.md'   =   \"" + "e" * 64 + '"' in out


@pytest.mark.parametrize("path, shown", [
    (("evaluation", "immutable", "missing.py"), 'evaluation.immutable."missing.py"'),
    (("evaluation", "nope"), "evaluation.nope"),
    (("nosection", "data_hash"), "nosection.data_hash"),
    (("evaluation", "eval_tokens"), "evaluation.eval_tokens"),  # not a string pin
    (("evaluation", "immutable"), "evaluation.immutable"),  # a table, not a pin
])
def test_a_missing_key_is_one_line_naming_it(path, shown):
    with pytest.raises(LabError) as e:
        set_pins(constitution.default_text(), {path: "f" * 64})
    msg = str(e.value)
    assert shown in msg and "\n" not in msg


def test_invalid_toml_is_a_lab_error():
    with pytest.raises(LabError, match="not valid TOML"):
        set_pins("[evaluation\n", {DATA: "0" * 64})


def test_a_changed_immutable_file_names_the_legal_path(tmp_path):
    from controller.execution.runner import immutable_problems
    from controller.workspace.lab import init_lab
    lab = init_lab(tmp_path / "lab")
    assert immutable_problems(lab.root, lab.load_constitution()) == []
    (lab.root / "program.md").write_text("# a new brief, by hand\n")
    (problem,) = immutable_problems(lab.root, lab.load_constitution())
    assert "program.md does not match its pin" in problem and "charter amend propose --immutable program.md=" in problem
