"""`Ledger`: one open ledger file, the only way Charter writes events.

`Ledger.open(path)` opens (creating and migrating if needed) the DuckDB file and keeps the
connection for the life of the object: a session holds it for hours. DuckDB locks the file, so
there is one writer process at a time, and while it writes no other process can even read;
this module also refuses a second open of the same file inside one process, which DuckDB would
otherwise allow and which would fork the chain. The writer keeps the chain head (seq, hash) in
memory; `append_many` seals a batch (see `ledger.record`), loads it as one Arrow table and
inserts it with a single INSERT ... SELECT, which is one transaction: all of the batch is
committed or none of it, and the head moves only after the commit. DuckDB errors a user can
cause are turned into `LedgerError` subclasses whose message names the file.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from .errors import LedgerBusy, LedgerCorrupt, LedgerError, LedgerMissing, LedgerReadOnly, LedgerSchemaError
from .events import Decision, EventKind
from .payloads import Payload
from .record import GENESIS_HASH, Draft, Event, from_body, seal_batch, utc_now
from .schema import LATEST_VERSION, check_supported, current_version, migrate
from .verify import VerifyResult, verify_chain

_OPEN_IN_THIS_PROCESS: dict[str, list[bool]] = {}  # resolved path -> read_only flag of each open Ledger
_OPEN_LOCK = threading.Lock()

_BATCH_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("session", pa.string()),
    ("actor", pa.string()),
    ("kind", pa.string()),
    ("experiment", pa.int64()),
    ("decision", pa.string()),
    ("val_bpb", pa.float64()),
    ("gate_state", pa.string()),
    ("rule", pa.string()),
    ("commit_sha", pa.string()),
    ("body", pa.string()),
    ("prev_hash", pa.string()),
    ("hash", pa.string()),
])

_INSERT_SQL = """
    INSERT INTO events (seq, ts, session, actor, kind, experiment, decision, val_bpb, gate_state,
                        rule, commit_sha, body, prev_hash, hash)
    SELECT seq, CAST(? AS TIMESTAMP), session, actor, kind, experiment, decision, val_bpb,
           gate_state, rule, commit_sha, body, prev_hash, hash
    FROM ledger_batch
"""


class Ledger:
    """An open ledger file. Use `Ledger.open`; close it (or use `with`) when done."""

    def __init__(self, path: Path, key: str, con: duckdb.DuckDBPyConnection, read_only: bool):
        self._path = path
        self._key = key
        self._con: duckdb.DuckDBPyConnection | None = con
        self._read_only = read_only
        self._lock = threading.Lock()
        self._head = self._read_head()

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, wait_s: float = 0.0) -> Ledger:
        """Open the ledger at `path`; read-write creates the file (and its folder) and migrates it.

        DuckDB refuses the file while another process holds it, even a reader for a moment;
        `wait_s` keeps retrying that long before giving up with LedgerBusy.
        """
        path = Path(path).expanduser().absolute()
        key = str(path.resolve())
        deadline = time.monotonic() + wait_s
        with _OPEN_LOCK:
            others = _OPEN_IN_THIS_PROCESS.get(key, [])
            if others and not (read_only and all(others)):
                raise LedgerBusy(f"ledger {path} is already open in this process; close it first.")
            while True:
                try:
                    con = connect(path, read_only)
                    break
                except LedgerBusy:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
            try:
                version = current_version(con, str(path))
                check_supported(version, str(path))
                if version < LATEST_VERSION:
                    if read_only:
                        raise LedgerSchemaError(
                            f"ledger {path} has schema version {version} and needs migrating to "
                            f"{LATEST_VERSION}; open it read-write once."
                        )
                    migrate(con, str(path))
                ledger = cls(path, key, con, read_only)
            except LedgerError:
                con.close()
                raise
            except duckdb.Error as err:
                con.close()
                raise LedgerCorrupt(f"ledger {path} could not be read: {_first_line(err)}") from None
            _OPEN_IN_THIS_PROCESS.setdefault(key, []).append(read_only)
            return ledger

    def close(self) -> None:
        with self._lock:
            if self._con is None:
                return
            self._con.close()
            self._con = None
            with _OPEN_LOCK:
                flags = _OPEN_IN_THIS_PROCESS.get(self._key, [])
                if self._read_only in flags:
                    flags.remove(self._read_only)
                if not flags:
                    _OPEN_IN_THIS_PROCESS.pop(self._key, None)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        kind: EventKind | str,
        *,
        actor: str,
        session: str | None = None,
        payload: Mapping[str, Any] | None = None,
        experiment: int | None = None,
        decision: Decision | str | None = None,
        val_bpb: float | None = None,
        gate_state: str | None = None,
        rule: str | None = None,
        commit_sha: str | None = None,
    ) -> Event:
        """Append one event and commit it; returns it with its seq, ts and hash."""
        draft = Draft(kind, actor, session, payload, experiment, decision, val_bpb, gate_state, rule, commit_sha)
        return self.append_many([draft])[0]

    def record(self, payload: Payload, *, actor: str, session: str | None = None, **typed: Any) -> Event:
        """Append one event whose payload is a typed `ledger.payloads` class (its kind is the class's)."""
        return self.append(payload.KIND, actor=actor, session=session, payload=payload.to_json(), **typed)

    def append_many(self, drafts: Iterable[Draft]) -> list[Event]:
        """Append drafts in one transaction (all or nothing); they share one timestamp."""
        with self._lock:
            con = self._writable()
            seq, prev_hash = self._head if self._head else (0, GENESIS_HASH)
            ts = utc_now()
            sealed = seal_batch(drafts, seq + 1, prev_hash, ts)
            if not sealed.body:
                return []
            events = sealed.events()
            batch = pa.Table.from_arrays(
                [
                    np.arange(sealed.seq.start, sealed.seq.stop, dtype=np.int64),  # 20x faster than a range
                    sealed.session,
                    sealed.actor,
                    sealed.kind,
                    sealed.experiment,
                    sealed.decision,
                    sealed.val_bpb,
                    sealed.gate_state,
                    sealed.rule,
                    sealed.commit_sha,
                    sealed.body,
                    sealed.prev_hash,
                    sealed.hash,
                ],
                schema=_BATCH_SCHEMA,
            )
            try:
                con.register("ledger_batch", batch)
                try:
                    con.execute(_INSERT_SQL, [ts.replace(tzinfo=None)])
                finally:
                    con.unregister("ledger_batch")
            except duckdb.Error as err:
                raise LedgerError(f"could not append to ledger {self._path}: {_first_line(err)}") from None
            self._head = (sealed.seq[-1], sealed.hash[-1])
            return events

    # -- reading ---------------------------------------------------------------------------

    def cursor(self):
        """A separate DuckDB cursor on this ledger's connection, for read-only queries from
        another thread (the live path for auditors while a session runs). Close it when done.
        DuckDB's MVCC means such a reader never blocks an append."""
        with self._lock:
            return self._open_con().cursor()

    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the last event, or None for an empty ledger."""
        with self._lock:
            self._open_con()
            return self._head

    def events(self, since_seq: int = 0, kinds: Iterable[EventKind | str] | None = None, limit: int | None = None) -> list[Event]:
        """Events with seq > since_seq in seq order, optionally only of the given kinds, at most `limit`."""
        sql = "SELECT body, prev_hash, hash FROM events WHERE seq > ?"
        params: list[Any] = [since_seq]
        if kinds is not None:
            sql += " AND list_contains(?, kind)"
            params.append([EventKind(k).value for k in kinds])
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        with self._lock:
            rows = self._query(sql, params)
        out = []
        for body, prev_hash, digest in rows:
            try:
                out.append(from_body(body, prev_hash, digest))
            except (ValueError, KeyError, TypeError):
                raise LedgerCorrupt(
                    f"ledger {self._path}: an event body after seq {since_seq} is not a valid event; "
                    "run verify to find it."
                ) from None
        return out

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute the whole chain; with `anchor` (seq, hash) also check it is still there."""
        with self._lock:
            con = self._open_con()
            try:
                return verify_chain(con, anchor)
            except duckdb.Error as err:
                raise LedgerCorrupt(f"ledger {self._path} could not be verified: {_first_line(err)}") from None

    # -- internals -------------------------------------------------------------------------

    def _read_head(self) -> tuple[int, str] | None:
        rows = self._open_con().execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchall()
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def _open_con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise LedgerError(f"ledger {self._path} is closed.")
        return self._con

    def _writable(self) -> duckdb.DuckDBPyConnection:
        con = self._open_con()
        if self._read_only:
            raise LedgerReadOnly(f"ledger {self._path} is open read-only; it cannot be appended to.")
        return con

    def _query(self, sql: str, params: list[Any]) -> list[tuple]:
        try:
            return self._open_con().execute(sql, params).fetchall()
        except duckdb.Error as err:
            raise LedgerCorrupt(f"ledger {self._path} could not be read: {_first_line(err)}") from None

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "read-write"
        state = "closed" if self._con is None else mode
        return f"<Ledger {self._path} {state}>"


# No file, network or extension access through a ledger connection: auditors' queries run on
# cursors of the writer's connection while a session holds the file, and SQL must not reach
# beyond the ledger.
SAFE_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connect(path: Path, read_only: bool, extra_config: dict | None = None, busy_hint: str = "only one may open it at a time") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to the ledger file, with open failures turned into LedgerErrors."""
    if read_only and not path.exists():
        raise LedgerMissing(f"ledger {path} does not exist.")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LedgerError(f"cannot create the folder for ledger {path}: {err.strerror}.") from None
    try:
        con = duckdb.connect(str(path), read_only=read_only, config={**SAFE_CONFIG, **(extra_config or {})})
        con.execute("SET enable_progress_bar = false")
        if not read_only:
            # Checkpoint (fold the WAL into the file) every 256 MB instead of DuckDB's 16 MB:
            # frequent checkpoints rewrite the growing row group again and again, which halved
            # batched append rates. A session's WAL rarely gets this big; closing checkpoints.
            con.execute("SET checkpoint_threshold = '256MB'")
        return con
    except duckdb.Error as err:
        text = str(err)
        if "lock" in text.lower():
            holder = re.search(r"PID (\d+)", text)
            by = f" (held by process {holder.group(1)})" if holder else ""
            raise LedgerBusy(f"ledger {path} is in use by another process{by}; {busy_hint}.") from None
        if "different configuration" in text:
            raise LedgerBusy(f"ledger {path} is already open in this process in another mode.") from None
        if "not a valid DuckDB database" in text:
            raise LedgerCorrupt(f"{path} is not a DuckDB database file.") from None
        raise LedgerCorrupt(f"ledger {path} could not be opened: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
