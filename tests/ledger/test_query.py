"""Read-only auditor queries (ledger.query): one SELECT only, no files, no network."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ledger import EventKind, Ledger, LedgerBusy, LedgerMissing
from ledger.query import QueryFailed, QueryRefused, open_readonly, run_readonly_query

from audit_fixtures import S1, build_ledger, live_cursor

WRITES = [
    ("INSERT INTO events SELECT * FROM events", "INSERT"),
    ("UPDATE events SET kind = 'note'", "UPDATE"),
    ("update events set seq = 1 returning *", "UPDATE"),
    ("DELETE FROM events", "DELETE"),
    ("DROP TABLE events", "DROP"),
    ("drop view experiments", "DROP"),
    ("CREATE TABLE t (a INT)", "CREATE"),
    ("create temp view v as select 1", "CREATE"),
    ("CREATE MACRO m(x) AS x", "CREATE"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH"),
    ("DETACH other", "DETACH"),
    ("COPY events TO '/tmp/stolen.csv'", "COPY"),
    ("copy (select * from events) to '/tmp/stolen.parquet' (format parquet)", "COPY"),
    ("EXPORT DATABASE '/tmp/stolen'", "EXPORT"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "RESET"),
    ("CALL pragma_version()", "CALL"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("VACUUM", "VACUUM"),
    ("BEGIN TRANSACTION", "BEGIN"),
    ("EXPLAIN SELECT 1", "EXPLAIN"),
    ("USE memory", "USE"),
    ("with x as (select 1) insert into events select * from events", "INSERT"),
    ("pivot experiments on decision using count(*)", "PIVOT"),
    ("/* looks harmless */ DeLeTe\n\tFROM events", "DELETE"),
    ("  \n dRoP   tAbLe   events  ", "DROP"),
]
MULTI = [
    "SELECT 1; DROP TABLE events",
    "select 1 ;\n\tdelete from events",
    "SELECT 1; -- just a comment\n DROP TABLE events",
    "select 1 /* c */; /* c */ insert into events select * from events",
    "SELECT 1; SELECT 2",
]
FILE_AND_NETWORK = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "select * from READ_CSV_AUTO('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "select * from \"/etc/hostname\"",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM read_json('/etc/x.json')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
    "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
    "SELECT getenv('HOME')",
    "SELECT current_setting('s3_secret_access_key')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM query('SELECT 1')",
    "SELECT (SELECT count(*) FROM read_csv('/etc/passwd'))",
    "SELECT * FROM events WHERE seq IN (SELECT 1 FROM glob('/*'))",
    "WITH a AS (SELECT 1) SELECT * FROM a, read_csv('/etc/passwd')",
    "SELECT * FROM events, LATERAL read_csv(body)",
    "SUMMARIZE '/etc/passwd'",
    "DESCRIBE '/etc/passwd'",
    "SELECT st_point(1, 2)",  # would auto-install the spatial extension from the network
    "SELECT 1::not_a_loaded_type",
    "SELECT * FROM elsewhere.events",
]


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory) -> Path:
    return build_ledger(tmp_path_factory.mktemp("query") / "ledger.duckdb")


@pytest.fixture
def con(ledger_path):
    c = open_readonly(ledger_path)
    yield c
    c.close()


def snapshot(con):
    return con.execute("SELECT count(*), max(seq), string_agg(hash, '' ORDER BY seq) FROM events").fetchone()


@pytest.mark.parametrize("sql,keyword", WRITES)
def test_every_kind_of_write_or_setting_statement_is_refused(con, sql, keyword):
    before = snapshot(con)
    with pytest.raises(QueryRefused) as err:
        run_readonly_query(con, sql)
    message = str(err.value)
    assert message.startswith("query refused:") and "\n" not in message
    assert keyword in message
    assert snapshot(con) == before


@pytest.mark.parametrize("sql", MULTI)
def test_more_than_one_statement_is_refused(con, sql):
    with pytest.raises(QueryRefused, match="statements"):
        run_readonly_query(con, sql)


@pytest.mark.parametrize("sql", ["", "   ", ";;", "-- only a comment", "/* nothing */"])
def test_empty_queries_are_refused(con, sql):
    with pytest.raises(QueryRefused):
        run_readonly_query(con, sql)


@pytest.mark.parametrize("sql", FILE_AND_NETWORK)
def test_selects_that_reach_files_network_or_settings_are_refused(con, sql):
    with pytest.raises(QueryRefused) as err:
        run_readonly_query(con, sql)
    assert "\n" not in str(err.value)


def test_a_comment_does_not_hide_a_second_statement(con):
    result = run_readonly_query(con, "SELECT 1 AS one /* ; DROP TABLE events */ -- ; DELETE FROM events")
    assert result["rows"] == [[1]]


def test_the_readonly_connection_itself_has_no_file_access(con):
    # layer 3: even a query that skipped the checks cannot read a file or change settings
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error):
        con.execute("INSERT INTO events SELECT * FROM events")


def test_a_select_works_and_is_json_safe(con):
    result = run_readonly_query(con, "SELECT experiment, decision, val_bpb, ts, [1, 2] AS l, {'a': 1.5} AS s, "
                                     "1.25::DECIMAL(5, 2) AS d, 'nan'::DOUBLE AS n FROM experiments "
                                     "WHERE session = 's20250101000000-ab12' ORDER BY seq")
    assert result["columns"] == ["experiment", "decision", "val_bpb", "ts", "l", "s", "d", "n"]
    assert result["types"][:3] == ["BIGINT", "VARCHAR", "DOUBLE"]
    assert [r[:3] for r in result["rows"]] == [[0, "baseline", 1.5], [1, "keep", 1.45], [2, "discard", 1.47],
                                               [3, "crash", None], [4, "refused", None]]
    assert result["truncated"] is False
    first = result["rows"][0]
    assert isinstance(first[3], str) and first[4] == [1, 2] and first[5] == {"a": 1.5} and first[6] == 1.25 and first[7] == "NaN"
    json.dumps(result, allow_nan=False)


def test_common_audit_selects_are_allowed(con):
    for sql in [
        "WITH k AS (SELECT * FROM experiments WHERE decision = 'keep') SELECT session, count(*) FROM k GROUP BY ALL",
        "SELECT rule, count(*) AS n, bool_or(hard) FROM refusals GROUP BY rule ORDER BY n DESC",
        "SELECT seq, body->>'$.payload.command' FROM events WHERE kind = 'operator_command'",
        "SELECT session, resource, used / nullif(\"limit\", 0) FROM budgets",
        "SELECT unnest([1, 2]), list_transform([1], lambda x: x + 1)",
        "SELECT * FROM range(3)", "VALUES (1), (2)", "DESCRIBE experiments", "SUMMARIZE sessions", "SHOW TABLES",
        "FROM gate_transitions SELECT who", "SELECT * FROM main.events LIMIT 1",
        "SELECT row_number() OVER (PARTITION BY decision ORDER BY seq) FROM experiments QUALIFY row_number() OVER (PARTITION BY decision ORDER BY seq) = 1",
    ]:
        run_readonly_query(con, sql)


def test_limit_truncates(con):
    result = run_readonly_query(con, "SELECT seq FROM events ORDER BY seq", limit=5)
    assert [r[0] for r in result["rows"]] == [1, 2, 3, 4, 5] and result["truncated"] is True
    total = con.execute("SELECT count(*) FROM events").fetchone()[0]
    result = run_readonly_query(con, "SELECT seq FROM events", limit=total)
    assert len(result["rows"]) == total and result["truncated"] is False


def test_errors_and_timeouts_are_query_failed(con):
    with pytest.raises(QueryFailed, match="no_such_column"):
        run_readonly_query(con, "SELECT no_such_column FROM events")
    with pytest.raises(QueryRefused, match="unknown table"):
        run_readonly_query(con, "SELECT * FROM no_such_table")
    with pytest.raises(QueryFailed, match="longer than"):
        run_readonly_query(con, "SELECT count(*) FROM range(1000000000000) a", timeout_s=0.3)
    assert run_readonly_query(con, "SELECT 42")["rows"] == [[42]]  # the connection is still usable


def test_python_variables_are_not_readable(con):
    secret_table = pa.table({"secret": ["hunter2"]})  # noqa: F841 (DuckDB would find it by name)
    with pytest.raises(QueryRefused):
        run_readonly_query(con, "SELECT * FROM secret_table")
    with pytest.raises(QueryRefused):
        run_readonly_query(con, "WITH secret_table AS (SELECT 1) SELECT * FROM (SELECT * FROM secret_table), \"secret_table.csv\"")


def test_open_readonly_errors(tmp_path, ledger_path):
    with pytest.raises(LedgerMissing):
        open_readonly(tmp_path / "nope.duckdb")
    with Ledger.open(build_ledger(tmp_path / "held.duckdb")):
        with pytest.raises(LedgerBusy):
            open_readonly(tmp_path / "held.duckdb")


def test_on_a_cursor_of_the_live_writer(tmp_path):
    path = build_ledger(tmp_path / "live.duckdb")
    with Ledger.open(path) as led:
        settings = "SELECT current_setting('enable_external_access'), current_setting('autoload_known_extensions')"
        before = led._con.execute(settings).fetchall()
        cur = live_cursor(led)
        result = run_readonly_query(cur, f"SELECT count(*) FROM experiments WHERE session = '{S1}'")
        assert result["rows"] == [[5]]
        for sql in ["DELETE FROM events", "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM '/etc/passwd'",
                    "SELECT getenv('HOME')", "SET enable_external_access = false", "SELECT 1; DROP TABLE events"]:
            with pytest.raises(QueryRefused):
                run_readonly_query(cur, sql)
        cur.close()
        # nothing global was changed for the writer, and it still appends and verifies
        assert led._con.execute(settings).fetchall() == before == [(False, False)]
        led.append(EventKind.NOTE, actor="person:alice", payload={"text": "after the audit"})
        assert led.verify().ok
