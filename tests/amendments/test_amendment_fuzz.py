"""Property-based fuzz of proposals: random `--set` keys and values, random TOML files, through the
parser and through `charter amend propose` on a real lab. Never a traceback; one line per problem."""

from __future__ import annotations

import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constitution
from constitution import ConstitutionError
from amendments.errors import AmendmentRefused
from amendments.patch import apply_settings, parse_setting
from amendments.proposal import build_proposal

DEFAULT = constitution.default_text()
RULES = constitution.parse_text(DEFAULT)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# each example of the CLI tests is a subprocess (~0.1 s): fewer of them, since the text they feed
# reaches the same parser the in-process tests above fuzz 150 times
FUZZ_CLI = settings(FUZZ, max_examples=40)


def leaf_paths(data, path=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from leaf_paths(v, path + (k,))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            yield from leaf_paths(v, path + (i,))
    else:
        yield path


PATHS = sorted(set(leaf_paths(tomllib.loads(DEFAULT))), key=str)


def key_text(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + (p if p.replace("_", "").replace("-", "").isalnum() else f'"{p}"'))
    return out


values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str), st.floats().map(repr), st.sampled_from(["true", "false", "[]", "{}", '""']),
    st.text(max_size=30), st.lists(st.integers(), max_size=3).map(str),
)


def one_line_each(lines: list[str]) -> None:
    assert lines and all(line and "\n" not in line and "Traceback" not in line for line in lines), lines


def propose_text(sets: list[str]) -> None:
    try:
        text = apply_settings(DEFAULT, [parse_setting(s) for s in sets])
        build_proposal(text, RULES)
    except ConstitutionError as e:
        one_line_each(e.problems)
    except AmendmentRefused as e:
        one_line_each([str(e)])


@FUZZ
@given(st.lists(st.text(max_size=40), min_size=1, max_size=3))
def test_random_set_text_never_tracebacks(sets):
    propose_text(sets)


@FUZZ
@given(path=st.sampled_from(PATHS), value=values, extra=st.text(max_size=6))
def test_random_values_at_real_keys_never_traceback(path, value, extra):
    propose_text([f"{key_text(path)}{extra}={value}"])


@FUZZ
@given(text=st.text(max_size=400))
def test_random_proposal_text_never_tracebacks(text):
    try:
        build_proposal(text, RULES, label="new.toml")
    except ConstitutionError as e:
        one_line_each(e.problems)
        assert all(p.startswith("new.toml: ") for p in e.problems)
    except AmendmentRefused as e:
        one_line_each([str(e)])


@FUZZ_CLI
@given(path=st.sampled_from(PATHS), value=values)
def test_the_cli_answers_random_sets_in_lines(lab, charter, path, value):
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "fuzz", "--set", f"{key_text(path)}={value}")
    assert r.code in (0, 1, 2) and "Traceback" not in r.err
    if r.code:
        assert r.err.strip() and all(line.startswith(("charter: ", "proposal: ")) for line in r.err.strip().splitlines()), r.err
    else:
        assert len(r.out.splitlines()[0]) == 64


@FUZZ_CLI
@given(text=st.text(max_size=300) | st.sampled_from([DEFAULT, DEFAULT.replace("version = 1 ", "version = 2 ")]))
def test_the_cli_answers_random_files_in_lines(lab, charter, tmp_path_factory, text):
    f = tmp_path_factory.mktemp("p") / "new.toml"
    f.write_text(text, encoding="utf-8")
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "fuzz", "--file", f)
    assert r.code in (1, 2) and "Traceback" not in r.err
    assert all(line.startswith(("charter: ", "new.toml: ")) for line in r.err.strip().splitlines()), r.err
