"""Recompute the hash chain and say, in words, where the first thing is wrong.

One SQL pass over `events` ordered by seq checks every row: seq continues the previous row's by
one (starting at 1); `hash` = sha256(prev_hash || body); `prev_hash` is the previous row's hash
(64 zeros for the first); and every typed column (seq, ts, session, actor, kind, experiment,
decision, val_bpb, gate_state, rule, commit_sha) equals what the body says. The first failing
row is reported as "seq N: <what is wrong>". Nothing here trusts the guard triggers or any other
property of the file: the chain alone is the evidence. A chain that is whole can still have been
cut short, or rewritten from some point on with fresh hashes; an anchor, a (seq, hash) pair
recorded outside the database, catches both.
"""

from __future__ import annotations

from typing import NamedTuple

import duckdb

from .record import GENESIS_HASH, TS_FORMAT


class VerifyResult(NamedTuple):
    ok: bool
    count: int  # rows in the events table
    head: tuple[int, str] | None  # (seq, hash) of the last row, None when empty
    bad_seq: int | None  # the first seq that is wrong, None when ok
    problem: str | None  # one sentence for a person, None when ok

    def __str__(self) -> str:
        if self.ok:
            where = f"head seq {self.head[0]} {self.head[1]}" if self.head else "empty"
            return f"ok: {self.count} events, {where}"
        return f"FAILED: {self.problem}"


# Body fields compared with typed columns, in the order they are checked.
_FIELDS = ("seq", "ts", "session", "actor", "kind", "experiment", "decision", "val_bpb",
           "gate_state", "rule", "commit_sha")
_COLUMN_AS_TEXT = {"ts": f"strftime(ts, '{TS_FORMAT}')"}  # compare ts as the body spells it
_BODY_AS_TYPE = {"seq": "BIGINT", "experiment": "BIGINT", "val_bpb": "DOUBLE"}


def _column_check(position: int, field: str) -> str:
    body_value = f"f[{position}]"
    if field in _BODY_AS_TYPE:
        body_value = f"TRY_CAST({body_value} AS {_BODY_AS_TYPE[field]})"
    column = _COLUMN_AS_TEXT.get(field, field)
    return f"WHEN {column} IS DISTINCT FROM {body_value} THEN 'column {field} differs from body'"


_COLUMN_CHECKS = "\n            ".join(_column_check(i + 1, field) for i, field in enumerate(_FIELDS))
_BODY_PATHS = [f"$.{field}" for field in _FIELDS]

# Per row work (hash, JSON parse, column comparisons) happens in the scan, which DuckDB runs in
# parallel; the window then only sorts narrow rows and compares neighbours. The body is parsed
# once for all fields (TRY: a body that is not JSON gives NULLs and so fails a check). The final
# CASE orders the checks to give the most telling message for each kind of tampering: a gap or
# duplicate first, then a body that no longer matches its hash, then a broken link (rows swapped,
# inserted, or rewritten with fresh hashes), then typed columns edited on their own.
_VERIFY_SQL = f"""
WITH scanned AS (
    SELECT seq, prev_hash, hash,
        hash IS DISTINCT FROM sha256(prev_hash || body) AS hash_mismatch,
        CASE
            {_COLUMN_CHECKS}
        END AS column_problem
    FROM (
        SELECT *, TRY(json_extract_string(body, {_BODY_PATHS})) AS f
        FROM events
    )
),
ordered AS (
    SELECT *,
        row_number() OVER w AS pos,
        coalesce(lag(seq) OVER w, 0) + 1 AS expected_seq,
        lag(seq) OVER w AS before_seq,
        lag(hash) OVER w AS before_hash
    FROM scanned
    WINDOW w AS (ORDER BY seq NULLS LAST, hash)
),
checked AS (
    SELECT pos, seq, hash, CASE
        WHEN seq IS NULL THEN 'row has no seq'
        WHEN seq > expected_seq THEN 'expected seq ' || expected_seq || ' (row deleted?)'
        WHEN seq < expected_seq
            THEN 'seq repeats or goes backwards, expected seq ' || expected_seq || ' (row inserted?)'
        WHEN hash_mismatch THEN 'body does not match hash (edited?)'
        WHEN before_hash IS NULL AND prev_hash IS DISTINCT FROM '{GENESIS_HASH}'
            THEN 'prev_hash is not the genesis value (rows removed from the start?)'
        WHEN before_hash IS NOT NULL AND prev_hash IS DISTINCT FROM before_hash
            THEN 'prev_hash does not link to seq ' || before_seq || ' (rows reordered or inserted?)'
        ELSE column_problem
    END AS problem
    FROM ordered
)
SELECT
    count(*),
    arg_max(seq, pos),
    arg_max(hash, pos),
    min(pos) FILTER (WHERE problem IS NOT NULL),
    arg_min(seq, pos) FILTER (WHERE problem IS NOT NULL),
    arg_min(problem, pos) FILTER (WHERE problem IS NOT NULL)
FROM checked
"""


def verify_chain(con: duckdb.DuckDBPyConnection, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Check the whole chain, then (if given) that the row at the anchor's seq has its hash."""
    [(count, head_seq, head_hash, first_bad, bad_seq, problem)] = con.execute(_VERIFY_SQL).fetchall()
    head = (int(head_seq), head_hash) if count and head_seq is not None else None
    if first_bad is not None:
        if bad_seq is None:
            where = f"the row after seq {head_seq}" if head_seq is not None else "a row"
            return VerifyResult(False, count, head, None, f"{where}: {problem}")
        return VerifyResult(False, count, head, int(bad_seq), f"seq {bad_seq}: {problem}")
    if anchor is not None:
        anchor_seq, anchor_hash = int(anchor[0]), anchor[1]
        last = head[0] if head else 0
        if anchor_seq > last:
            return VerifyResult(
                False, count, head, anchor_seq,
                f"seq {anchor_seq}: the ledger ends at seq {last} but the anchor records seq "
                f"{anchor_seq} (truncated?)",
            )
        rows = con.execute("SELECT hash FROM events WHERE seq = ?", [anchor_seq]).fetchall()
        if not rows or rows[0][0] != anchor_hash:
            return VerifyResult(
                False, count, head, anchor_seq,
                f"seq {anchor_seq}: hash differs from the anchor (history rewritten?)",
            )
    return VerifyResult(True, count, head, None, None)
