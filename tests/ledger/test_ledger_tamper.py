"""verify() catches each kind of tampering, done through a raw DuckDB connection, at the right seq."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from ledger import Draft, EventKind, Ledger
from ledger.record import seal

from conftest import raw

COLUMNS = "seq, ts, session, actor, kind, experiment, decision, val_bpb, gate_state, rule, commit_sha, body, prev_hash, hash"


def verify(path, anchor=None):
    with Ledger.open(path, read_only=True) as led:
        return led.verify(anchor=anchor)


def test_untouched_file_verifies(filled):
    res = verify(filled)
    assert res.ok and res.count == 12 and res.head[0] == 12 and res.problem is None


def test_guard_triggers_stop_accidental_update_and_delete(filled):
    con = duckdb.connect(str(filled))
    with pytest.raises(duckdb.Error, match="append-only"):
        con.execute("UPDATE events SET actor = 'x' WHERE seq = 3")
    with pytest.raises(duckdb.Error, match="append-only"):
        con.execute("DELETE FROM events WHERE seq = 3")
    con.close()
    assert verify(filled).ok


def test_edited_body(filled):
    con = raw(filled)
    con.execute("UPDATE events SET body = replace(body, 'hello', 'HELLO') WHERE seq = 7")
    con.close()
    res = verify(filled)
    assert not res.ok and res.bad_seq == 7
    assert res.problem == "seq 7: body does not match hash (edited?)"


def test_edited_hash(filled):
    con = raw(filled)
    con.execute("UPDATE events SET hash = repeat('a', 64) WHERE seq = 7")
    con.close()
    res = verify(filled)
    assert res.bad_seq == 7 and "body does not match hash" in res.problem


@pytest.mark.parametrize("column, new_value", [
    ("ts", "ts + INTERVAL 1 SECOND"),
    ("session", "'s-other'"),
    ("actor", "'person:mallory'"),
    ("kind", "'decided'"),
    ("experiment", "experiment + 1"),
    ("decision", "'discard'"),
    ("val_bpb", "val_bpb - 0.5"),
    ("gate_state", "'STOP'"),
    ("rule", "NULL"),
    ("commit_sha", "'deadbeef'"),
])
def test_edited_typed_column(filled, column, new_value):
    con = raw(filled)
    con.execute(f"UPDATE events SET {column} = {new_value} WHERE seq = 7")
    con.close()
    res = verify(filled)
    assert not res.ok and res.bad_seq == 7
    assert res.problem == f"seq 7: column {column} differs from body"


def test_typed_column_set_where_body_has_null(filled):
    con = raw(filled)
    con.execute("UPDATE events SET experiment = 5 WHERE seq = 1")  # seq 1 has no experiment
    con.close()
    assert verify(filled).problem == "seq 1: column experiment differs from body"


def test_deleted_row(filled):
    con = raw(filled)
    con.execute("DELETE FROM events WHERE seq = 7")
    con.close()
    res = verify(filled)
    assert res.bad_seq == 8 and res.problem == "seq 8: expected seq 7 (row deleted?)"


def test_deleted_first_row(filled):
    con = raw(filled)
    con.execute("DELETE FROM events WHERE seq = 1")
    con.close()
    assert verify(filled).problem == "seq 2: expected seq 1 (row deleted?)"


def test_renumbered_after_delete_breaks_the_link(filled):
    con = raw(filled)
    con.execute("DELETE FROM events WHERE seq = 7")
    con.execute("UPDATE events SET seq = seq - 1 WHERE seq > 7")
    con.close()
    res = verify(filled)
    assert res.bad_seq == 7 and res.problem == "seq 7: prev_hash does not link to seq 6 (rows reordered or inserted?)"


def test_forged_row_appended_with_a_made_up_hash(filled):
    con = raw(filled)
    con.execute(f"""INSERT INTO events ({COLUMNS})
        SELECT 13, ts, session, actor, kind, experiment, decision, val_bpb, gate_state, rule, commit_sha,
               replace(body, '"seq":12', '"seq":13'), hash, repeat('b', 64)
        FROM events WHERE seq = 12""")
    con.close()
    res = verify(filled)
    assert res.bad_seq == 13 and res.problem == "seq 13: body does not match hash (edited?)"


def _forge(prev_seq: int, prev_hash: str, text: str):
    [ev] = seal([Draft(EventKind.NOTE, "person:mallory", payload={"text": text})], prev_seq + 1, prev_hash,
                datetime(2026, 1, 1, tzinfo=timezone.utc))
    return ev


def _insert(con, ev):
    con.execute(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, NULL, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, ?, ?, ?)",
                [ev.seq, ev.ts.replace(tzinfo=None), ev.actor, str(ev.kind), ev.body, ev.prev_hash, ev.hash])


def test_forged_row_inserted_in_the_middle(filled):
    """The attacker knows the scheme: the forged row links to seq 6 and the rest is renumbered."""
    con = raw(filled)
    [(hash6,)] = con.execute("SELECT hash FROM events WHERE seq = 6").fetchall()
    con.execute("UPDATE events SET seq = seq + 100 WHERE seq >= 7")
    con.execute("UPDATE events SET seq = seq - 99 WHERE seq >= 100")
    _insert(con, _forge(6, hash6, "I was always here"))
    con.close()
    res = verify(filled)
    assert res.count == 13
    assert res.bad_seq == 8 and res.problem == "seq 8: prev_hash does not link to seq 7 (rows reordered or inserted?)"


def test_forged_row_with_a_duplicate_seq(filled):
    con = raw(filled)
    [(hash6,)] = con.execute("SELECT hash FROM events WHERE seq = 6").fetchall()
    _insert(con, _forge(6, hash6, "twin"))
    con.close()
    res = verify(filled)
    assert not res.ok and res.bad_seq == 7
    assert "seq 7:" in res.problem and ("repeats" in res.problem or "does not link" in res.problem)


def test_swapped_rows(filled):
    con = raw(filled)
    rows = {r[0]: r for r in con.execute(f"SELECT {COLUMNS} FROM events WHERE seq IN (5, 6)").fetchall()}
    con.execute("DELETE FROM events WHERE seq IN (5, 6)")
    placeholders = ", ".join("?" * 14)
    con.execute(f"INSERT INTO events ({COLUMNS}) VALUES ({placeholders})", [5, *rows[6][1:]])
    con.execute(f"INSERT INTO events ({COLUMNS}) VALUES ({placeholders})", [6, *rows[5][1:]])
    con.close()
    res = verify(filled)
    assert res.bad_seq == 5 and res.problem == "seq 5: prev_hash does not link to seq 4 (rows reordered or inserted?)"


def test_body_that_is_not_json(filled):
    con = raw(filled)
    con.execute("UPDATE events SET body = 'not json {' WHERE seq = 4")
    con.close()
    assert verify(filled).problem == "seq 4: body does not match hash (edited?)"


def test_anchor_catches_truncation(filled):
    with Ledger.open(filled, read_only=True) as led:
        anchor = led.head()
        assert led.verify(anchor=anchor).ok
        assert led.verify(anchor=(5, led.events(since_seq=4)[0].hash)).ok
    con = raw(filled)
    con.execute("DELETE FROM events WHERE seq > 9")
    con.close()
    assert verify(filled).ok  # the chain itself is whole...
    res = verify(filled, anchor=anchor)  # ...but shorter than what was recorded outside
    assert not res.ok and res.bad_seq == 12
    assert res.problem == "seq 12: the ledger ends at seq 9 but the anchor records seq 12 (truncated?)"


def test_anchor_catches_a_rewritten_tail(filled):
    with Ledger.open(filled, read_only=True) as led:
        anchor = led.head()
    con = raw(filled)
    [(hash9,)] = con.execute("SELECT hash FROM events WHERE seq = 9").fetchall()
    con.execute("DELETE FROM events WHERE seq > 9")
    prev_seq, prev_hash = 9, hash9
    for text in ("a", "b", "c"):  # a perfectly chained, different history
        ev = _forge(prev_seq, prev_hash, text)
        _insert(con, ev)
        prev_seq, prev_hash = ev.seq, ev.hash
    con.close()
    assert verify(filled).ok
    res = verify(filled, anchor=anchor)
    assert res.bad_seq == 12 and res.problem == "seq 12: hash differs from the anchor (history rewritten?)"


def test_anchor_on_an_empty_ledger(ledger_path):
    with Ledger.open(ledger_path) as led:
        res = led.verify(anchor=(1, "0" * 64))
    assert not res.ok and "ends at seq 0" in res.problem
