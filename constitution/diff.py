"""The semantic diff of two constitutions: which rule changed, from what to what.

Both sides are validated constitutions dumped to JSON data (`model_dump(mode="json")`), so
comments, key order and formatting never show up as changes and defaults are filled in. Tables
are walked key by key and lists of tables item by item (`gates.rules[2].threshold`), so a change
is named where it happened; lists of plain values (`scope.editable`) are one change, compared
whole. Pure: data in, `Change` values out; `Change.words` is the line a person reads. Used by
amendments (what a proposal changes) and by the session-start check (what a hand edit changed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class _Absent:
    """Stands in for a key or list item one side lacks (no real value can be it)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
MAX_VALUE_CHARS = 60  # a long value (a key, a pattern) is shortened in words, never in the data


@dataclass(frozen=True)
class Change:
    """One leaf that differs: `path` like ("gates", "rules", 2, "threshold"); a side that lacks
    it is `ABSENT` (an added or removed key, or list item)."""

    path: tuple[str | int, ...]
    old: Any
    new: Any

    @property
    def key(self) -> str:
        return key_text(self.path)

    @property
    def words(self) -> str:
        return f"{self.key}: {value_text(self.old)} -> {value_text(self.new)}"


def semantic_diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every differing leaf between two constitutions' data, sorted by key path."""
    found: list[Change] = []
    _walk((), old, new, found)
    return sorted(found, key=lambda c: tuple((isinstance(p, int), p) for p in c.path))


def key_text(path: tuple[str | int, ...]) -> str:
    """A key path as a person (and `--set`) writes it: budgets.session.experiments,
    evaluation.immutable."prepare.py", gates.rules[2].threshold."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


def value_text(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _walk(path: tuple, old: Any, new: Any, found: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            _walk(path + (key,), old.get(key, ABSENT), new.get(key, ABSENT), found)
    elif (_is_table_list(old) or old == []) and (_is_table_list(new) or new == []) and (old or new):
        for i in range(max(len(old), len(new))):
            _walk(path + (i,), old[i] if i < len(old) else ABSENT, new[i] if i < len(new) else ABSENT, found)
    elif old != new or type(old) is not type(new):
        found.append(Change(path, old, new))
