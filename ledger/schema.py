"""The ledger's table layout, as an ordered list of migrations.

`MIGRATIONS[i]` turns a version-`i` file into a version-`i+1` file; a new file is version 0 and
gets every step. `schema_version` holds one row per applied step. `migrate` applies all pending
steps in ONE transaction, so a file is never left half-migrated; a file whose version is newer
than this code is refused rather than guessed at. To change the layout, append a step: never
edit a released one, since files in the wild were built by it.

Version 1: `events`, the append-only hash chain. `seq` 1, 2, 3... with no gaps; `ts` a UTC
timestamp (TIMESTAMP, no zone: always UTC); `body` the canonical JSON of the whole event; `hash`
= sha256(prev_hash || body). The typed columns (experiment ... commit_sha) copy body fields so
auditors can filter without parsing JSON; the 64-hex hash columns are stored uncompressed
(compressing them gains little and slowed appends). Version 2: statement triggers that make UPDATE and
DELETE on `events` fail. They stop accidents only: anyone with the file can drop them, which is
why `verify` never relies on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from .errors import LedgerCorrupt, LedgerSchemaError


@dataclass(frozen=True)
class Migration:
    version: int  # the version the file has after this step
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events: the hash-chained event table",
        (
            """
            CREATE TABLE events (
                seq         BIGINT    NOT NULL,
                ts          TIMESTAMP NOT NULL,
                session     VARCHAR,
                actor       VARCHAR   NOT NULL,
                kind        VARCHAR   NOT NULL,
                experiment  BIGINT,
                decision    VARCHAR,
                val_bpb     DOUBLE,
                gate_state  VARCHAR,
                rule        VARCHAR,
                commit_sha  VARCHAR,
                body        VARCHAR   NOT NULL,
                prev_hash   VARCHAR   NOT NULL USING COMPRESSION uncompressed,
                hash        VARCHAR   NOT NULL USING COMPRESSION uncompressed
            )
            """,
            "COMMENT ON COLUMN events.ts IS 'UTC'",
            "COMMENT ON COLUMN events.body IS 'canonical JSON of the whole event'",
            "COMMENT ON COLUMN events.hash IS 'sha256(prev_hash || body), hex'",
        ),
    ),
    Migration(
        2,
        "append-only guards: UPDATE and DELETE on events fail",
        (
            "CREATE TABLE events_guard (never INTEGER)",
            """
            CREATE TRIGGER events_no_update AFTER UPDATE ON events
            REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
            INSERT INTO events_guard SELECT error('the events table is append-only') FROM changed
            """,
            """
            CREATE TRIGGER events_no_delete AFTER DELETE ON events
            REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
            INSERT INTO events_guard SELECT error('the events table is append-only') FROM removed
            """,
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """
    CREATE TABLE schema_version (
        version     INTEGER   NOT NULL,
        applied_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
        description VARCHAR   NOT NULL
    )
"""


def current_version(con: duckdb.DuckDBPyConnection, path: str) -> int:
    """The file's schema version: 0 for an empty database. Raises LedgerCorrupt for a non-ledger."""
    tables = {row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
    ).fetchall()}
    if "schema_version" not in tables:
        if tables:
            raise LedgerCorrupt(f"{path} is a DuckDB database but not a Charter ledger (no schema_version table).")
        return 0
    [(version,)] = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    return int(version)


def migrate(con: duckdb.DuckDBPyConnection, path: str, target: int = LATEST_VERSION) -> int:
    """Bring the file to `target` (default: latest) in one transaction; returns the new version."""
    version = current_version(con, path)
    check_supported(version, path)
    if version >= target:
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        if version == 0:
            con.execute(_CREATE_VERSION_TABLE)
        for step in MIGRATIONS:
            if version < step.version <= target:
                for statement in step.statements:
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                    [step.version, step.description],
                )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return target


def check_supported(version: int, path: str) -> None:
    if version > LATEST_VERSION:
        raise LedgerSchemaError(
            f"{path} has ledger schema version {version}, newer than this Charter understands "
            f"(up to {LATEST_VERSION}); upgrade Charter to open it."
        )
