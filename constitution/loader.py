"""Loading a constitution file: TOML in, a validated `Constitution` or one line per problem out.

Everything a person can get wrong in a constitution (bad TOML, unknown keys, out-of-range
numbers, overlapping paths, a broken version chain) becomes a `ConstitutionError` holding
`file: key.path: message` lines, never a traceback. The canonical hash is the sha256 of the
canonical JSON of the validated model, so comments, key order and formatting never change it.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from constitution.canonical import canonical_hash
from constitution.schema import Constitution


class ConstitutionError(Exception):
    """A constitution that cannot be used; `problems` holds one readable line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def default_text() -> str:
    """The shipped default constitution (constitution/default.toml), comments included."""
    return resources.files("constitution").joinpath("default.toml").read_text(encoding="utf-8")


def _phrase(msg: str) -> str:
    """Turn pydantic's wording into the project's ('must be ...', 'unknown key')."""
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    replacements = [
        ("Extra inputs are not permitted", "unknown key"),
        ("Field required", "missing"),
        ("Input should be a valid ", "must be a "),
        ("Input should be ", "must be "),
        ("List should have at least ", "must have at least "),
        ("Dictionary should have at least ", "must have at least "),
        ("String should have at least ", "must have at least "),
        ("String should have at most ", "must have at most "),
    ]
    for old, new in replacements:
        if msg.startswith(old):
            msg = new + msg[len(old):]
            break
    return msg[:1].lower() + msg[1:] if msg else msg


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic appends validator names like "function-after[...]" for model validators; drop them
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    # a key is the user's text: one that a plain name can't show (a newline, a quote) is shown quoted
    return ".".join(p if p.isprintable() and p.strip() == p and p else repr(p) for p in parts)


def problems_from_validation(err: ValidationError, label: str) -> list[str]:
    lines = []
    for e in err.errors():
        where = _loc(e["loc"])
        prefix = f"{label}: {where}: " if where else f"{label}: "
        lines.append(prefix + _phrase(e["msg"]))
    return lines


def parse_text(text: str, label: str = "constitution") -> Constitution:
    """Validate TOML text; raise ConstitutionError with one line per problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.match(r"(.*) \(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = m.group(1)
            msg = f"line {m.group(2)}, column {m.group(3)}: {reason[:1].lower() + reason[1:]}"
        else:
            msg = msg[:1].lower() + msg[1:]
        raise ConstitutionError([f"{label}: not valid TOML: {msg}"]) from None
    return validate_data(data, label)


def validate_data(data: dict[str, Any], label: str = "constitution") -> Constitution:
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise ConstitutionError(problems_from_validation(e, label)) from None
    except (ValueError, TypeError, RecursionError) as e:  # anything pydantic did not wrap
        raise ConstitutionError([f"{label}: {e}"]) from None


def load(path: str | Path) -> Constitution:
    """Read and validate a constitution file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConstitutionError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConstitutionError([f"{path}: is a directory, not a constitution file"]) from None
    except OSError as e:
        raise ConstitutionError([f"{path}: cannot read ({e.strerror})"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConstitutionError([f"{path.name}: not UTF-8 text"]) from None
    return parse_text(text, path.name)


def load_default() -> Constitution:
    return parse_text(default_text(), "default.toml")


def constitution_hash(c: Constitution) -> str:
    """Canonical hash: sha256 of the canonical JSON of the validated model."""
    return canonical_hash(c.model_dump(mode="json"))


def check_succession(parent: Constitution, child: Constitution) -> list[str]:
    """Problems with `child` as the next version after `parent` (empty list = fine)."""
    problems = []
    if child.meta.version != parent.meta.version + 1:
        problems.append(
            f"meta.version: must be {parent.meta.version + 1} (parent is version {parent.meta.version})"
        )
    expected = constitution_hash(parent)
    if child.meta.parent_hash != expected:
        problems.append(f"meta.parent_hash: must be {expected}, the parent's canonical hash")
    return problems


def json_schema() -> dict[str, Any]:
    return Constitution.model_json_schema()
