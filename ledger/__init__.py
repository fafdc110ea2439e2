"""Charter's tamper-evident ledger: one hash-chained DuckDB file per lab.

Every action Charter takes is appended here as an event (`EventKind`), by the controller only.
`Ledger.open(path)` gives a long-lived handle with `append`, `append_many`, `head`, `events` and
`verify`; `verify` recomputes the chain and names the first bad seq. Errors a user can cause are
`LedgerError` subclasses with a one-sentence message. Module map: `record` (Draft, Event, body
and hash), `schema` (migrations), `store` (Ledger), `verify` (chain check), `errors`, `events`.
"""

from .errors import (
    InvalidEvent,
    LedgerBusy,
    LedgerCorrupt,
    LedgerError,
    LedgerMissing,
    LedgerReadOnly,
    LedgerSchemaError,
)
from .events import Decision, EventKind
from .record import GENESIS_HASH, Draft, Event
from .schema import LATEST_VERSION
from .store import Ledger
from .verify import VerifyResult

__all__ = [
    "Decision",
    "Draft",
    "Event",
    "EventKind",
    "GENESIS_HASH",
    "InvalidEvent",
    "LATEST_VERSION",
    "Ledger",
    "LedgerBusy",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerMissing",
    "LedgerReadOnly",
    "LedgerSchemaError",
    "VerifyResult",
]
