"""Opening files: migrations, newer schemas, missing/corrupt/locked files, and crash safety."""

from __future__ import annotations

import signal
import subprocess
import time

import duckdb
import pytest

from ledger import (
    LATEST_VERSION,
    EventKind,
    Ledger,
    LedgerBusy,
    LedgerCorrupt,
    LedgerError,
    LedgerMissing,
    LedgerSchemaError,
)
from ledger.schema import MIGRATIONS, migrate

from conftest import PYTHON, sample_drafts, subprocess_env


def schema_version(path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    [(version,)] = con.execute("SELECT max(version) FROM schema_version").fetchall()
    con.close()
    return version


def trigger_names(path) -> set[str]:
    con = duckdb.connect(str(path), read_only=True)
    names = {r[0] for r in con.execute("SELECT trigger_name FROM duckdb_triggers()").fetchall()}
    con.close()
    return names


def test_new_file_gets_the_latest_schema(ledger_path):
    Ledger.open(ledger_path).close()
    assert schema_version(ledger_path) == LATEST_VERSION == MIGRATIONS[-1].version
    assert {"events_no_update", "events_no_delete"} <= trigger_names(ledger_path)


def test_version_1_file_is_migrated(ledger_path):
    ledger_path.parent.mkdir(parents=True)
    con = duckdb.connect(str(ledger_path))
    assert migrate(con, str(ledger_path), target=1) == 1
    con.close()
    assert schema_version(ledger_path) == 1 and not trigger_names(ledger_path)
    with Ledger.open(ledger_path) as led:
        led.append(EventKind.NOTE, actor="controller")
        assert led.verify().ok
    assert schema_version(ledger_path) == LATEST_VERSION
    assert {"events_no_update", "events_no_delete"} <= trigger_names(ledger_path)


def test_older_file_with_events_keeps_them_through_migration(filled):
    con = duckdb.connect(str(filled))  # turn it back into a version-1 file
    con.execute("DROP TRIGGER events_no_update ON events")
    con.execute("DROP TRIGGER events_no_delete ON events")
    con.execute("DROP TABLE events_guard")
    con.execute("DELETE FROM schema_version WHERE version > 1")
    con.close()
    with pytest.raises(LedgerSchemaError, match="open it read-write once"):
        Ledger.open(filled, read_only=True)
    with Ledger.open(filled) as led:
        assert led.head()[0] == 12
        assert led.append(EventKind.NOTE, actor="controller").seq == 13
        assert led.verify().ok
    assert schema_version(filled) == LATEST_VERSION


def test_newer_schema_is_refused(filled):
    con = duckdb.connect(str(filled))
    con.execute("INSERT INTO schema_version (version, description) VALUES (99, 'from the future')")
    con.close()
    for read_only in (False, True):
        with pytest.raises(LedgerSchemaError, match="schema version 99, newer than this Charter"):
            Ledger.open(filled, read_only=read_only)


def test_missing_file_read_only(tmp_path):
    with pytest.raises(LedgerMissing, match="does not exist"):
        Ledger.open(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_corrupt_file(tmp_path):
    path = tmp_path / "ledger.duckdb"
    path.write_bytes(b"this is not a database" * 500)
    for read_only in (False, True):
        with pytest.raises(LedgerCorrupt, match="not a DuckDB database file") as err:
            Ledger.open(path, read_only=read_only)
        assert str(path) in str(err.value)


def test_duckdb_file_that_is_not_a_ledger(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE something (x INTEGER)")
    con.close()
    with pytest.raises(LedgerCorrupt, match="not a Charter ledger"):
        Ledger.open(path)


def test_second_open_in_the_same_process_is_busy(ledger_path):
    with Ledger.open(ledger_path):
        with pytest.raises(LedgerBusy, match="already open in this process"):
            Ledger.open(ledger_path)
        with pytest.raises(LedgerBusy):
            Ledger.open(ledger_path, read_only=True)
    with Ledger.open(ledger_path, read_only=True) as a, Ledger.open(ledger_path, read_only=True) as b:
        assert a.head() == b.head()
    Ledger.open(ledger_path).close()  # free again once closed


HOLDER = """
import sys, time
from ledger import Ledger
led = Ledger.open(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_second_writer_process_gets_a_clear_busy_error(ledger_path):
    Ledger.open(ledger_path).close()
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(ledger_path)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        for read_only in (False, True):
            with pytest.raises(LedgerBusy) as err:
                Ledger.open(ledger_path, read_only=read_only)
            message = str(err.value)
            assert str(ledger_path) in message and "in use by another process" in message
            assert f"process {holder.pid}" in message
            assert isinstance(err.value, LedgerError) and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    with Ledger.open(ledger_path) as led:  # the lock goes with the process
        assert led.verify().ok


WRITER = """
import sys
from ledger import Draft, EventKind, Ledger
with Ledger.open(sys.argv[1]) as led:
    while True:
        events = led.append_many([Draft(EventKind.NOTE, "controller", payload={"i": i}) for i in range(200)])
        print(events[-1].seq, flush=True)
"""


def test_sigkill_mid_batch_loses_no_committed_event(ledger_path):
    writer = subprocess.Popen([PYTHON, "-c", WRITER, str(ledger_path)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    committed = []
    try:
        deadline = time.monotonic() + 30
        while len(committed) < 25 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            committed.append(int(line))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        # whatever was printed before the kill was committed before it was printed
        committed += [int(line) for line in writer.stdout.read().split()]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert len(committed) >= 25, "the writer did not get going"
    with Ledger.open(ledger_path) as led:
        res = led.verify()
        assert res.ok, res.problem
        assert res.head[0] >= committed[-1]
        assert res.head[0] % 200 == 0  # whole batches only: none half-written
        seqs = {e.seq for e in led.events()}
        assert set(committed) <= seqs
        assert led.append(EventKind.NOTE, actor="controller").seq == res.head[0] + 1
