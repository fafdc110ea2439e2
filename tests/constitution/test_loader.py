"""The constitution loader: the default is valid, bad files give one clear line per problem."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import constitution
from constitution import ConstitutionError, check_succession, constitution_hash, parse_text
from constitution.canonical import canonical_json

DEFAULT = constitution.default_text()
ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConstitutionError) as err:
        parse_text(text, "default.toml")
    return err.value.problems


def test_default_is_valid_and_matches_shipped_file():
    rules = constitution.load(ROOT / "constitution" / "default.toml")
    assert rules.meta.version == 1
    assert rules.budgets.experiment.training_seconds == 60
    assert rules.scope.editable == ["train.py"]
    assert set(rules.evaluation.immutable) == {"prepare.py", "program.md"}


# (edit applied to the default text, the exact expected problem line)
BAD = [
    ("training_seconds = 60", "training_seconds = 0",
     "default.toml: budgets.experiment.training_seconds: must be greater than 0"),
    ("training_seconds = 60", "training_seconds = -5",
     "default.toml: budgets.experiment.training_seconds: must be greater than 0"),
    ("experiments = 40 ", "experiments = -1 ",
     "default.toml: budgets.session.experiments: must be greater than or equal to 0"),
    ("memory_soft_mb = 6000", "memory_soft_mb = 9000",
     "default.toml: budgets.experiment: memory_soft_mb must not exceed memory_hard_mb"),
    ('metric = "crashes"', 'metric = "crash_count"',
     "default.toml: gates.rules.1.metric: must be 'crash_streak', 'crashes', 'refusals', 'stagnation', "
     "'budget_burn', 'integrity_failures', 'hard_constraint_violations', 'memory_soft_exceeded', 'baseline_drift' "
     "or 'proposer_failures'"),
    ('target = "FREEZE"', 'target = "PANIC"',
     "default.toml: gates.rules.1.target: must be 'RUN', 'THROTTLE', 'FREEZE' or 'STOP'"),
    ('target = "FREEZE"', 'target = "RUN"',
     "default.toml: gates.rules.1.target: a rule escalates: target must be THROTTLE, FREEZE or STOP"),
    ('name = "crash-storm"', 'name = "crash-streak"',
     "default.toml: gates: rule names must be unique (repeated: crash-streak)"),
    ("[meta]\n", "[meta]\ncolour = \"blue\"\n", "default.toml: meta.colour: unknown key"),
    ("[sandbox]\n", "[sandboxx]\nlevel = \"none\"\n[sandbox]\n", "default.toml: sandboxx: unknown key"),
    ('editable = ["train.py"]', 'editable = ["prepare.py"]',
     "default.toml: editable path 'prepare.py' overlaps immutable path 'prepare.py'"),
    ('editable = ["train.py"]', 'editable = ["../outside.py"]',
     "default.toml: scope.editable.0: path '../outside.py' leaves the lab"),
    ('editable = ["train.py"]', 'editable = ["/etc/passwd"]',
     "default.toml: scope.editable.0: path '/etc/passwd' must be relative to the lab"),
    ('editable = ["train.py"]', 'editable = []',
     "default.toml: scope.editable: must have at least 1 item after validation, not 0"),
    ('"prepare.py" = ""', '"prepare.py" = "abc"',
     'default.toml: evaluation.immutable.prepare.py: must be a lowercase sha256 hex digest or "" (not pinned yet)'),
    ("version = 1 ", "version = 0 ", "default.toml: meta.version: must be greater than or equal to 1"),
    ("version = 1 ", "version = 2 ", "default.toml: meta: version 2 needs the parent_hash of version 1"),
    ('parent_hash = ""', 'parent_hash = "' + "a" * 64 + '"',
     'default.toml: meta: version 1 has no parent: parent_hash must be ""'),
    ('level = "bubblewrap"', 'level = "chroot"', "default.toml: sandbox.level: must be 'bubblewrap' or 'none'"),
    ("ratifiers = []", 'ratifiers = [{ name = "alice" }]',
     "default.toml: amendment: tiers.constitutional needs 2 ratifiers but only 1 are listed"),
    ('entrenched = ["evaluation", "amendment"]', 'entrenched = ["evaluation", "budget"]',
     "default.toml: amendment: entrenched names unknown sections: budget"),
    ("min_improvement = 0.01", 'min_improvement = "a lot"',
     "default.toml: decision.min_improvement: must be a number, unable to parse string as a number"),
    ("pattern = 'prepare\\.evaluate|evaluate_bpb'", "pattern = '(unclosed'",
     "default.toml: scope.hard_constraints.0.pattern: not a valid regular expression "
     "(missing ), unterminated subpattern at position 0)"),
    ('forbidden = ["network",', 'forbidden = ["telepathy",',
     "default.toml: scope.forbidden.0: must be 'network', 'subprocess', 'dynamic_import', 'file_write', "
     "'data_access', 'timing' or 'evaluation'"),
    ('profile = "cpu"', 'profile = "gpu"',
     'default.toml: the gpu profile needs budgets.experiment.clock = "wall" (the cpu clock does not count device time)'),
    ("noise_prior_df = 4 ", "noise_prior_df = 0 ", "default.toml: decision.noise_prior_df: must be greater than 0"),
    ('clock = "cpu" ', 'clock = "gpu" ', "default.toml: budgets.experiment.clock: must be 'wall' or 'cpu'"),
    ("confidence = 0.95 ", "confidence = 0.5 ", "default.toml: decision.confidence: must be greater than 0.5"),
]


@pytest.mark.parametrize("old,new,expected", BAD, ids=[b[2].split(": ")[1] for b in BAD])
def test_bad_constitution_gives_expected_line(old, new, expected):
    assert old in DEFAULT, f"test edit {old!r} no longer matches the default"
    assert problems(DEFAULT.replace(old, new, 1)) == [expected]


def test_missing_section_and_several_problems_reported_together():
    text = re.sub(r"\[decision\].*?\n\n", "", DEFAULT, flags=re.S)
    text = text.replace("training_seconds = 60", "training_seconds = -1")
    got = problems(text)
    assert "default.toml: budgets.experiment.training_seconds: must be greater than 0" in got
    assert "default.toml: decision: missing" in got
    assert len(got) == 2


def test_toml_syntax_error_names_line():
    got = problems("[meta]\nversion = = 1\n")
    assert got == ["default.toml: not valid TOML: line 2, column 11: invalid value"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConstitutionError, match="no such file"):
        constitution.load(tmp_path / "nope.toml")
    with pytest.raises(ConstitutionError, match="is a directory"):
        constitution.load(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConstitutionError, match="not UTF-8"):
        constitution.load(tmp_path / "bin.toml")


def test_hash_ignores_comments_order_and_formatting():
    original = parse_text(DEFAULT)
    # reformat: drop every comment, then dump the data back in reversed key order via JSON-ish TOML
    data = tomllib.loads(DEFAULT)

    def to_toml(d, prefix=""):
        lines, tables = [], []
        for k in reversed(list(d)):
            v = d[k]
            if isinstance(v, dict):
                tables.append((k, v))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    tables.append(("[" + k + "]", item))
            else:
                lines.append(f'"{k}" = {canonical_json(v)}')
        out = "\n".join(lines) + "\n"
        for k, v in tables:
            name = k[1:-1] if k.startswith("[") else k
            full = f"{prefix}.{name}" if prefix else name
            header = f"[[{full}]]" if k.startswith("[") else f"[{full}]"
            out += f"\n{header}\n" + to_toml(v, full)
        return out

    reformatted = to_toml(data)
    assert "#" not in reformatted and reformatted != DEFAULT
    assert constitution_hash(parse_text(reformatted)) == constitution_hash(original)
    # and a real change does change it
    changed = parse_text(DEFAULT.replace("min_improvement = 0.01", "min_improvement = 0.02"))
    assert constitution_hash(changed) != constitution_hash(original)


def test_succession_needs_version_plus_one_and_parent_hash():
    parent = parse_text(DEFAULT)
    h = constitution_hash(parent)
    child_text = DEFAULT.replace("version = 1 ", "version = 2 ").replace('parent_hash = ""', f'parent_hash = "{h}"')
    assert check_succession(parent, parse_text(child_text)) == []
    skip = child_text.replace("version = 2 ", "version = 3 ")
    assert check_succession(parent, parse_text(skip)) == ["meta.version: must be 2 (parent is version 1)"]
    wrong = child_text.replace(h, "b" * 64)
    assert check_succession(parent, parse_text(wrong)) == [f"meta.parent_hash: must be {h}, the parent's canonical hash"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT)


def test_cli_validate_exit_codes_and_no_traceback(tmp_path):
    ok = run_cli("constitution", "validate", "constitution/default.toml")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: constitution/default.toml")
    broken = tmp_path / "default.toml"
    broken.write_text(DEFAULT.replace("training_seconds = 60", "training_seconds = 0").replace("[meta]\n", "[meta]\nx = 1\n"))
    bad = run_cli("constitution", "validate", str(broken))
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "default.toml: meta.x: unknown key",
        "default.toml: budgets.experiment.training_seconds: must be greater than 0",
    ]
    assert "Traceback" not in bad.stderr


def test_cli_hash_show_schema():
    h = run_cli("constitution", "hash", "constitution/default.toml")
    assert h.stdout.strip() == constitution_hash(constitution.load_default())
    shown = run_cli("constitution", "show", "constitution/default.toml")
    assert '"training_seconds": 60' in shown.stdout
    schema = run_cli("constitution", "schema")
    assert '"Constitution"' in schema.stdout and '"properties"' in schema.stdout


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_an_infinite_or_nan_number_is_a_one_line_problem(value):
    """TOML has inf and nan; the canonical JSON that hashes a constitution has neither (hypothesis
    found `amendment.cooling_hours = inf` tracebacking in `charter amend propose`)."""
    text = DEFAULT.replace("cooling_hours = ", f"cooling_hours = {value} # ", 1)
    found = problems(text)
    assert len(found) == 1 and "cooling_hours" in found[0] and "finite" in found[0], found
