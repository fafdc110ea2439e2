"""Canonical JSON and hashing shared by the constitution and the ledger.

One spelling of "the same data": keys sorted, no whitespace, UTF-8, no NaN or infinity. Two
values that are equal as data give byte-identical canonical JSON and therefore the same sha256,
whatever key order, comments or formatting the source file had.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Serialize `value` to canonical JSON (sorted keys, compact, NaN refused)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value`."""
    return sha256_hex(canonical_json(value))
