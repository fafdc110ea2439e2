"""`--set KEY=VALUE`: a proposal written as edits of the constitution in force.

A key is a dotted path as the diff prints it (`budgets.session.experiments`,
`evaluation.immutable."prepare.py"`, `gates.rules[2].threshold`); a value is a TOML value
(`60`, `0.5`, `true`, `["train.py"]`, `"text"`), and anything that is not one is taken as a plain
string (`proposer.model=claude-x`). The edits are made with tomlkit on the constitution's own
text, so every comment and the layout survive; a key may be set where its table exists, never
conjured with a whole new table. Every problem is a `PatchError` with one line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Array, Table

from constitution.diff import key_text
from amendments.errors import AmendmentRefused


class PatchError(AmendmentRefused):
    """A `--set` that can't be applied; the message names the key and what is wrong."""


@dataclass(frozen=True)
class Setting:
    path: tuple[str | int, ...]
    value: Any
    text: str  # as the person typed it, for messages


def parse_setting(text: str) -> Setting:
    """`KEY=VALUE` -> a Setting; PatchError naming the mistake."""
    path, rest = _parse_key(text)
    raw = rest.strip()
    if not raw:
        raise PatchError(f"--set {_show(text)}: no value after '=' (e.g. budgets.session.experiments=60)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, KeyError, RecursionError):
        if any(ch in raw for ch in "\n\r\0"):
            raise PatchError(f"--set {_show(text)}: a value must be one line") from None
        value = raw  # not TOML: a plain string
    return Setting(path, value, text)


def apply_settings(text: str, settings: list[Setting]) -> str:
    """Constitution text with each setting applied, comments and layout kept."""
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise PatchError(f"the constitution in force is not valid TOML ({e})") from None
    for s in settings:
        _set(doc, s)
    return tomlkit.dumps(doc)


def _show(text: str) -> str:
    return repr(text) if not text.isprintable() or len(text) > 80 else text


def _parse_key(text: str) -> tuple[tuple[str | int, ...], str]:
    """Split 'a.b."c.d"[2].e=VALUE' into (("a", "b", "c.d", 2, "e"), "VALUE")."""
    parts: list[str | int] = []
    i, n = 0, len(text)
    expect_name = True
    while i < n:
        ch = text[i]
        if expect_name:
            if ch == '"':
                end = text.find('"', i + 1)
                if end < 0:
                    raise PatchError(f"--set {_show(text)}: a quoted key part has no closing quote")
                parts.append(text[i + 1:end])
                i = end + 1
            else:
                j = i
                while j < n and (text[j].isalnum() or text[j] in "_-"):
                    j += 1
                if j == i:
                    raise PatchError(f"--set {_show(text)}: expected a key name at position {i + 1} (KEY=VALUE)")
                parts.append(text[i:j])
                i = j
            expect_name = False
            continue
        if ch == "=":
            return tuple(parts), text[i + 1:]
        if ch == ".":
            expect_name = True
            i += 1
            continue
        if ch == "[":
            end = text.find("]", i)
            if end < 0 or not text[i + 1:end].isdigit():
                raise PatchError(f"--set {_show(text)}: a list index is written [N], e.g. gates.rules[2].threshold")
            parts.append(int(text[i + 1:end]))
            i = end + 1
            continue
        raise PatchError(f"--set {_show(text)}: unexpected {ch!r} in the key at position {i + 1} (KEY=VALUE)")
    raise PatchError(f"--set {_show(text)}: no '=': write KEY=VALUE, e.g. budgets.session.experiments=60")


def _set(doc: Any, s: Setting) -> None:
    node: Any = doc
    for depth, part in enumerate(s.path[:-1]):
        where = key_text(s.path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, (list, AoT, Array)) or part >= len(node):
                raise PatchError(f"--set {_show(s.text)}: {where} is not an item of a list")
            node = node[part]
        else:
            if not isinstance(node, Mapping) or part not in node:
                raise PatchError(f"--set {_show(s.text)}: the constitution has no table {where}")
            node = node[part]
    last = s.path[-1]
    where = key_text(s.path)
    if isinstance(last, int):
        if not isinstance(node, (list, AoT, Array)) or last >= len(node):
            raise PatchError(f"--set {_show(s.text)}: {where} is not an item of a list")
        if isinstance(node[last], (Table, Mapping)):
            raise PatchError(f"--set {_show(s.text)}: {where} is a table; set its keys one by one")
        node[last] = s.value
        return
    if not isinstance(node, Mapping):
        raise PatchError(f"--set {_show(s.text)}: {key_text(s.path[:-1])} is not a table")
    current = node.get(last)
    if isinstance(current, (Table, AoT)) or (isinstance(current, Mapping) and not isinstance(s.value, Mapping)):
        raise PatchError(f"--set {_show(s.text)}: {where} is a table; set its keys one by one")
    try:
        node[last] = s.value
    except (TOMLKitError, ValueError, TypeError) as e:
        raise PatchError(f"--set {_show(s.text)}: can't write that value ({e})") from None
