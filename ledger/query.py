"""Read-only SQL over a ledger for auditors: `charter ledger query`, and the controller's `query`
request answered on a cursor of its live connection.

`run_readonly_query(con, sql)` runs ONE SELECT and returns JSON-safe columns, types and rows.
Everything else is refused with `QueryRefused` before it reaches the database, in three layers:

1. Statement type: `duckdb.extract_statements` must find exactly one statement and it must be a
   SELECT (this catches INSERT/UPDATE/DELETE/DROP/CREATE/ATTACH/DETACH/COPY/EXPORT/PRAGMA/SET/
   CALL/INSTALL/LOAD, `SELECT 1; DROP ...` and statements hidden behind comments).
2. The parsed tree (`json_serialize_sql`): every table reference must be a ledger table, one of
   the auditor views or a CTE, spelled as a plain identifier (so no `FROM '/etc/passwd'` or
   `'https://...'` replacement scans); table functions must be on a short allowlist (`range`,
   `unnest`, `json_each`...; never `read_csv`, `read_parquet`, `glob`, `read_text`, `query`...);
   every function and type must already be loaded (so a query cannot make DuckDB auto-install an
   extension from the network) and a few (`getenv`, `current_setting`, `nextval`...) are denied.
   This layer is what protects a cursor of the controller's live read-write connection, where
   DuckDB's `enable_external_access` can only be changed for the whole database.
3. The connection: `open_readonly(path)` opens the file `read_only=True` with
   `enable_external_access=false`, extension auto-install/auto-load off, Python replacement scans
   off and the configuration locked, so DuckDB itself refuses file and network access even if a
   query slipped past layer 2. On any connection the query runs with Python replacement scans
   disabled for that connection (a per-connection setting) and under a time limit
   (`con.interrupt()`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
import math
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb

from .errors import LedgerCorrupt, LedgerError
from .store import connect
from .schema import LATEST_VERSION, check_supported, current_version
from .views import ensure_views

DEFAULT_LIMIT = 10_000
DEFAULT_TIMEOUT_S = 30.0

# Table functions a query may call: generators and catalog listings, nothing that reads a file,
# a URL, a secret or another database.
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "json_each", "json_tree",
    "duckdb_tables", "duckdb_views", "duckdb_columns", "duckdb_types", "duckdb_functions",
    "duckdb_schemas", "duckdb_constraints", "duckdb_indexes",
})
# Loaded scalar/aggregate functions a query may still not call: environment, settings (which can
# hold credentials), sequences (state changes) and the SQL-in-a-string escape hatches.
DENIED_FUNCTIONS = frozenset({
    "getenv", "current_setting", "nextval", "currval", "setseed", "query", "query_table",
    "read_text", "read_blob", "make_secret", "which_secret",
})
# Type names the parser uses that are not rows of duckdb_types().
_BUILTIN_TYPES = frozenset({"list", "struct", "map", "union", "array", "decimal", "numeric", "enum", "varchar", "char"})
# Functions the parser produces that duckdb_functions() lists as table functions only.
_SPECIAL_FUNCTIONS = frozenset({"unnest", "unlist"})
# SHOW TABLES / SHOW ALL TABLES / SHOW DATABASES: fixed listings, not table names.
_SHOW_SPECIAL = frozenset({'"tables"', "__show_tables_expanded", '"databases"'})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")

class QueryError(LedgerError):
    """A query could not be answered; the message is one line for a person."""


class QueryRefused(QueryError):
    """The query is not a single read-only SELECT over the ledger, or would touch files, network or settings."""


class QueryFailed(QueryError):
    """The query was allowed but DuckDB could not run it (bad column, type error, time limit...)."""


# -- opening ------------------------------------------------------------------------------------


def open_readonly(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A query-only connection to the ledger at `path`: read-only, no file or network access,
    configuration locked, auditor views installed. Close it when done.

    With a controller running, the file is locked by its process and this raises `LedgerBusy`:
    send the query to the controller instead (it answers on a cursor of its own connection).
    """
    path = Path(path).expanduser().absolute()
    con = connect(path, True, extra_config={"python_enable_replacements": False}, busy_hint="ask the running controller instead")
    try:
        version = current_version(con, str(path))
        check_supported(version, str(path))
        if version < LATEST_VERSION:
            raise LedgerCorrupt(f"ledger {path} has schema version {version}; open it read-write once to migrate it to {LATEST_VERSION}.")
        ensure_views(con)
        con.execute("SET lock_configuration = true")
        _finish(con)
    except LedgerError:
        con.close()
        raise
    except duckdb.Error as err:
        con.close()
        raise LedgerCorrupt(f"ledger {path} could not be read: {_first_line(err)}") from None
    return con


# -- checking -----------------------------------------------------------------------------------


def check_statement(sql: str) -> str:
    """Layer 1: the text must hold exactly one SELECT. Returns that statement's text."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused("query refused: it is empty; send one SELECT statement.")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryRefused(f"query refused: it does not parse: {_first_line(err)}") from None
    if not statements:
        raise QueryRefused("query refused: it holds no statement (only comments or semicolons); send one SELECT.")
    if len(statements) > 1:
        kinds = ", ".join(_describe(s) for s in statements)
        raise QueryRefused(f"query refused: it holds {len(statements)} statements ({kinds}); send exactly one SELECT.")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        raise QueryRefused(f"query refused: {_describe(statement)} is not allowed; only one read-only SELECT is.")
    return statement.query


def _describe(statement: Any) -> str:
    keyword = (statement.query.strip().split(None, 1) or ["?"])[0].upper()
    kind = statement.type.name
    return kind if keyword == kind else f"{keyword} ({kind} statement)"


class _Catalog:
    """What a query on `con` may name: relations, schemas, functions and types already there."""

    def __init__(self, con: Any):
        def names(sql: str) -> set[str]:
            return {str(r[0]).lower() for r in con.execute(sql).fetchall() if r[0] is not None}

        self.relations = names("SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()")
        self.scopes = names("SELECT database_name FROM duckdb_databases() UNION SELECT schema_name FROM duckdb_schemas()")
        self.functions = names(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
        )
        self.types = names("SELECT DISTINCT type_name FROM duckdb_types()") | _BUILTIN_TYPES


def check_tree(con: Any, sql: str) -> None:
    """Layer 2: walk the parsed SELECT and refuse anything that reaches outside the ledger."""
    try:
        ((text,),) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    except duckdb.Error as err:
        raise QueryRefused(f"query refused: it could not be analysed: {_first_line(err)}") from None
    tree = json.loads(text)
    if tree.get("error"):
        raise QueryRefused(f"query refused: {tree.get('error_message') or 'it is not a plain SELECT'}")
    if len(tree.get("statements", [])) != 1:
        raise QueryRefused("query refused: send exactly one SELECT.")
    _walk(tree["statements"][0], frozenset(), _Catalog(con))


def _walk(node: Any, ctes: frozenset[str], cat: _Catalog) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, ctes, cat)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        ctes = ctes | {str(entry.get("key", "")).lower() for entry in cte_map["map"]}
    kind, cls = node.get("type"), node.get("class")
    if kind == "BASE_TABLE" or (kind == "SHOW_REF" and node.get("table_name")):
        if not (kind == "SHOW_REF" and node.get("show_type") == "SHOW_SPECIAL" and node.get("table_name") in _SHOW_SPECIAL):
            _check_relation(node, ctes, cat)
    elif kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS:
            raise QueryRefused(
                f"query refused: table function {name}() is not allowed: audit queries may not read files, "
                "URLs or other databases."
            )
        _walk(function.get("arguments"), ctes, cat)
        return
    elif cls == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name in DENIED_FUNCTIONS:
            raise QueryRefused(f"query refused: function {name}() is not allowed in an audit query.")
        if name not in cat.functions and name not in _SPECIAL_FUNCTIONS:
            raise QueryRefused(f"query refused: unknown function {name}() (only functions already loaded may be used).")
    elif cls == "TYPE":
        name = str(node.get("type_name", "")).lower()
        if name and name not in cat.types:
            raise QueryRefused(f"query refused: unknown type {name} (only types already loaded may be used).")
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk(value, ctes, cat)


def _check_relation(node: dict[str, Any], ctes: frozenset[str], cat: _Catalog) -> None:
    name = str(node.get("table_name", ""))
    if not _IDENTIFIER.match(name):
        raise QueryRefused(
            f"query refused: {name!r} is not a ledger table or view (queries may not read files or URLs)."
        )
    for scope in (node.get("catalog_name"), node.get("schema_name")):
        if scope and str(scope).lower() not in cat.scopes:
            raise QueryRefused(f"query refused: {scope!r} is not a database or schema of this ledger.")
    if name.lower() not in cat.relations and name.lower() not in ctes:
        raise QueryRefused(
            f"query refused: unknown table {name!r}; query events or the views "
            "sessions, experiments, refusals, gate_transitions, budgets, constitutions."
        )


# -- running ------------------------------------------------------------------------------------


def run_readonly_query(con: Any, sql: str, limit: int = DEFAULT_LIMIT, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run one read-only SELECT on `con` (a connection or cursor on a ledger) and return
    `{"columns": [...], "types": [...], "rows": [[...]], "truncated": bool}` with JSON-safe values.

    At most `limit` rows come back (`truncated` says whether there were more). The auditor views
    are installed on `con` first if missing. Raises `QueryRefused` for anything but a single
    SELECT over the ledger, `QueryFailed` if DuckDB cannot run it or it runs past `timeout_s`.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    statement = check_statement(sql)
    try:
        ensure_views(con)
        con.execute("SET python_enable_replacements = false")
    except duckdb.Error as err:
        if "lock" not in str(err).lower():  # a locked configuration already has it off
            raise QueryFailed(f"query failed: the views could not be installed: {_first_line(err)}") from None
    check_tree(con, statement)
    timer = None
    if timeout_s is not None and timeout_s > 0:
        timer = threading.Timer(timeout_s, _interrupt, [con])
        timer.daemon = True
        timer.start()
    try:
        con.execute(statement)
        description = con.description or []
        rows = con.fetchmany(limit + 1)
    except duckdb.InterruptException:
        raise QueryFailed(f"query failed: it ran longer than {timeout_s:g} s and was stopped.") from None
    except duckdb.Error as err:
        raise QueryFailed(f"query failed: {_first_line(err)}") from None
    finally:
        if timer is not None:
            timer.cancel()
        _finish(con)
    truncated = len(rows) > limit
    rows = rows[:limit]
    return {
        "columns": [d[0] for d in description],
        "types": [str(d[1]) for d in description],
        "rows": [[json_safe(v) for v in row] for row in rows],
        "truncated": truncated,
    }


def _interrupt(con: Any) -> None:
    try:
        con.interrupt()
    except Exception:  # the query may just have finished
        pass


def _finish(con: Any) -> None:
    """Drop any unfetched rows so the connection is free for its next statement."""
    abort = getattr(con, "abort", None)
    if abort is not None:
        try:
            abort()
        except Exception:
            pass


def json_safe(value: Any) -> Any:
    """A DuckDB value as JSON data: times as ISO text, decimals as float, bytes as base64,
    non-finite floats as the strings "NaN" / "Infinity" / "-Infinity", nested values recursively."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return json_safe(float(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    return str(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
