"""Property-based fuzzing of the loader: whatever TOML (or garbage) comes in, never a traceback."""

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

import constitution
from constitution import ConstitutionError, parse_text

DEFAULT_DATA = tomllib.loads(constitution.default_text())

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True), st.booleans(),
    st.text(max_size=20), st.none(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def toml_value(v):
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else ("-inf" if v == float("-inf") else repr(v)))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"


def expect_clean(text: str) -> None:
    try:
        parse_text(text, "fuzz.toml")
    except ConstitutionError as e:
        assert e.problems and all(p.startswith("fuzz.toml: ") and "\n" not in p for p in e.problems)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_tracebacks(text):
    expect_clean(text)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(sorted(DEFAULT_DATA)), key=st.text(min_size=1, max_size=12), value=values)
def test_random_key_in_real_section_never_tracebacks(section, key, value):
    body = constitution.default_text().replace(f"[{section}]\n", f"[{section}]\n\"{key.encode('unicode_escape').decode('ascii').replace(chr(34), '')}\" = {toml_value(value)}\n", 1)
    expect_clean(body)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from([
    ("budgets", "experiment", "training_seconds"), ("decision", "min_improvement"), ("meta", "version"),
    ("scope", "editable"), ("gates", "probation_experiments"), ("sandbox", "level"), ("evaluation", "immutable"),
]), value=values)
def test_random_value_for_real_key_never_tracebacks(path, value):
    lines = constitution.default_text().splitlines()
    header = "[" + ".".join(path[:-1]) + "]"
    start = lines.index(header)
    for i in range(start + 1, len(lines)):
        if lines[i].split("=")[0].strip().strip('"') == path[-1]:
            lines[i] = f"{path[-1]} = {toml_value(value)}"
            break
    expect_clean("\n".join(lines))
