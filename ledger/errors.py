"""The errors a ledger user can run into, each with a one-sentence message.

Everything the ledger API raises on purpose is a `LedgerError` subclass, so a caller (the CLI,
the controller) can catch one type and print `str(err)` to a person. Raw DuckDB exceptions never
cross the API: the store translates them here, naming the ledger file involved. `InvalidEvent` is
also a `ValueError`, because it means the caller passed data the ledger cannot record.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""


class LedgerMissing(LedgerError):
    """The ledger file does not exist (and was opened read-only, so it was not created)."""


class LedgerBusy(LedgerError):
    """Another process (or another open Ledger in this process) holds the file."""


class LedgerCorrupt(LedgerError):
    """The file is not a DuckDB database, or not a Charter ledger, or unreadable."""


class LedgerSchemaError(LedgerError):
    """The file's schema version is newer than this code, or needs a migration it can't run."""


class LedgerReadOnly(LedgerError):
    """A write was attempted on a ledger opened read-only (or already closed)."""


class InvalidEvent(LedgerError, ValueError):
    """An event's fields or payload cannot be recorded (wrong type, NaN, not JSON data...)."""
