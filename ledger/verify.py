"""Recompute the hash chain and say, in words, where the first thing is wrong.

One SQL pass over `events` ordered by seq checks every row: seq continues the previous row's by
one (starting at 1); `hash` = sha256(prev_hash || body); `prev_hash` is the previous row's hash
(64 zeros for the first); and every typed column (seq, ts, session, actor, kind, experiment,
decision, val_bpb, gate_state, rule, commit_sha) equals what the body says. The first failing
row is reported as "seq N: <what is wrong>". Nothing here trusts the guard triggers or any other
property of the file: the chain alone is the evidence. A chain that is whole can still have been
cut short, or rewritten from some point on with fresh hashes; an anchor, a (seq, hash) pair
recorded outside the database, catches both. A whole chain is then checked for what a hash cannot
show: every proposed amendment's id is the sha256 of its recorded text, every signed ratification
is re-verified with `ssh-keygen -Y verify` against the key it names (which must be the key the
proposal listed for that ratifier), applied versions only ever rise, an amendment is applied only
with its ratifications, and a session after an applied amendment runs under the version it made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from constitution.schema import ssh_fingerprint

from .record import GENESIS_HASH, TS_FORMAT

SIGNATURE_NAMESPACE = "charter-amendment"  # as amendments.signatures signs
_ID = re.compile(r"[0-9a-f]{64}")


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
    found = amendment_problem(con)
    if found is not None:
        return VerifyResult(False, count, head, found[0], f"seq {found[0]}: {found[1]}")
    return VerifyResult(True, count, head, None, None)


# -- amendments: what the chain alone can't show ---------------------------------------------------

_AMENDMENT_EVENTS = """
SELECT seq, kind, body FROM events
WHERE kind IN ('amendment_proposed', 'amendment_ratified', 'amendment_applied', 'session_started', 'session_resumed')
ORDER BY seq
"""


def _signature_verifies(amendment_id: str, signature: str, by: str, key: str) -> str | None:
    """None if `signature` is `by`'s over `amendment_id` with `key`; else ssh-keygen's reason."""
    exe = shutil.which("ssh-keygen")
    if exe is None:
        return "ssh-keygen is not installed, so the signature can't be re-verified"
    with tempfile.TemporaryDirectory(prefix="charter-ledger-verify-") as tmp:
        allowed, sig = Path(tmp) / "allowed_signers", Path(tmp) / "sig"
        allowed.write_text(f'{by} namespaces="{SIGNATURE_NAMESPACE}" {key}\n')
        sig.write_text(signature)
        try:
            proc = subprocess.run([exe, "-Y", "verify", "-f", str(allowed), "-I", by, "-n", SIGNATURE_NAMESPACE, "-s", str(sig)],
                                  input=amendment_id.encode(), capture_output=True, timeout=30, start_new_session=True)
        except subprocess.TimeoutExpired:
            return "ssh-keygen did not answer"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"ssh-keygen exit {proc.returncode}"
    return None


def amendment_problem(con: Any) -> tuple[int, str] | None:
    """(seq, what is wrong) for the first amendment event the chain can't vouch for, else None."""
    proposals: dict[str, dict[str, Any]] = {}
    counted: dict[str, set[str]] = {}
    highest = 0
    last_applied: tuple[int, str] | None = None  # (version, hash) of the last applied amendment
    sessions_seen = False
    for seq, kind, body in con.execute(_AMENDMENT_EVENTS).fetchall():
        try:
            p = json.loads(body).get("payload") or {}
        except (ValueError, AttributeError):
            return seq, "body is not JSON"
        aid = p.get("amendment_id") if isinstance(p, dict) else None
        if kind.startswith("amendment_") and not (isinstance(aid, str) and _ID.fullmatch(aid)):
            continue  # names no amendment: nothing (in force, the amendment history) reads it as one
        if not isinstance(p, dict):
            continue
        if kind in ("session_started", "session_resumed"):
            digest = p.get("constitution_hash") or ""
            if last_applied is not None and isinstance(digest, str) and digest and digest != last_applied[1]:
                return seq, (f"the session runs under constitution {digest[:12]}, not version {last_applied[0]} "
                             f"({last_applied[1][:12]}) that the last applied amendment put in force")
            sessions_seen = True
        elif kind == "amendment_proposed":
            text = p.get("text") or ""
            if text and hashlib.sha256(text.encode("utf-8")).hexdigest() != aid:
                return seq, f"amendment {aid[:12]}: its recorded text does not hash to its id"
            files = p.get("files") or {}
            if files:  # carried immutable files are bound to the id by their pins in the text
                try:
                    pins = tomllib.loads(text)["evaluation"]["immutable"]
                except (tomllib.TOMLDecodeError, KeyError, TypeError):
                    pins = {}
                for path, body in files.items() if isinstance(files, dict) else ():
                    if not isinstance(body, str) or pins.get(path) != hashlib.sha256(body.encode("utf-8")).hexdigest():
                        return seq, f"amendment {aid[:12]}: the {path} it carries does not match its pin in the proposed text"
            proposals.setdefault(aid, p)
        elif kind == "amendment_ratified" and not p.get("refused"):
            by = str(p.get("by", ""))
            if aid not in proposals:
                return seq, f"ratification of amendment {aid[:12]}, which was never proposed"
            if p.get("signed"):
                key = str(p.get("key", ""))
                try:
                    fingerprint = ssh_fingerprint(key)
                except ValueError as e:
                    return seq, f"ratification of {aid[:12]} by {by}: the recorded key is not a public key ({e})"
                if fingerprint != p.get("fingerprint"):
                    return seq, f"ratification of {aid[:12]} by {by}: the recorded fingerprint is not the key's ({fingerprint})"
                listed = (proposals[aid].get("ratifiers") or {}).get(by) if isinstance(proposals[aid].get("ratifiers"), dict) else None
                if listed != fingerprint:
                    return seq, f"ratification of {aid[:12]} by {by}: key {fingerprint} is not the one the proposal listed for {by}"
                why = _signature_verifies(aid, str(p.get("signature", "")), by, key)
                if why:
                    return seq, f"ratification of {aid[:12]} by {by}: the signature does not verify ({why})"
            elif proposals[aid].get("require_signatures", True):
                return seq, f"ratification of {aid[:12]} by {by} is unsigned, but the lab required signatures"
            counted.setdefault(aid, set()).add(by)
        elif kind == "amendment_applied":
            version = p.get("version") if isinstance(p.get("version"), int) else 0
            if version <= highest:
                return seq, f"amendment {aid[:12]} applied version {version}, at or below version {highest} applied before (a rollback)"
            prop = proposals.get(aid)
            if prop is None:
                return seq, f"amendment {aid[:12]} was applied but never proposed"
            needed = prop.get("needed") if isinstance(prop.get("needed"), int) else 0
            have = len(counted.get(aid, ()))
            if have < needed:
                return seq, f"amendment {aid[:12]} was applied with {have} of the {needed} ratifications its tier needs"
            highest = version
            # before a lab's first session its owner may still edit the rules by hand
            last_applied = (version, str(p.get("hash", ""))) if sessions_seen else None
    return None
