"""The auditor's commands, one path whether or not a session is running.

DuckDB lets no other process open the ledger while the controller writes it, so each auditor
request first asks the lab's running controller over the live channel (it answers on a cursor of
its own connection: a reader never blocks a write); with none running it opens the file itself,
read-only with file and network access off. Both paths run the same functions of `ledger`, and a
refusal on either is a `LedgerError` with one line for a person.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from controller.live.client import ControllerUnreachable, LiveClient, RequestRefused
from controller.workspace.lab import Lab
from ledger import Ledger, LedgerError, VerifyResult
from ledger.query import QueryRefused, open_readonly, run_readonly_query

T = TypeVar("T")


def _live(lab: Lab, call: Callable[[LiveClient], T]) -> T | None:
    """`call` answered by the lab's running controller; None when no controller runs."""
    try:
        return call(LiveClient(lab.state_dir, timeout=120))
    except ControllerUnreachable:
        return None
    except RequestRefused as e:
        raise LedgerError(str(e)) from None


def query(lab: Lab, sql: str, limit: int = 10000) -> dict[str, Any]:
    if limit < 0:  # checked before either path, so both refuse it the same way
        raise QueryRefused(f"query refused: the row limit must be 0 or more, got {limit}.")
    reply = _live(lab, lambda c: c.query(sql, limit=limit))
    if reply is not None:
        return reply
    con = open_readonly(lab.ledger_path)
    try:
        return run_readonly_query(con, sql, limit=limit)
    finally:
        con.close()


def verify(lab: Lab, anchor: tuple[int, str] | None) -> VerifyResult:
    """The chain check; during a session on a cursor of the controller's connection."""
    reply = _live(lab, lambda c: c.verify(anchor))
    if reply is not None:
        return reply
    with Ledger.open(lab.ledger_path, read_only=True, wait_s=5) as led:
        return led.verify(anchor=anchor)


def report(lab: Lab, out: Path, session: str | None = None) -> tuple[Path, Path]:
    reply = _live(lab, lambda c: c.report(out, session=session))
    if reply is not None:
        return reply
    from ledger.report import write_report  # pulls in matplotlib: import on use
    con = open_readonly(lab.ledger_path)
    try:
        return write_report(con, out, session=session)
    finally:
        con.close()


def export(lab: Lab, out: Path, fmt: str, session: str | None = None) -> list[Path]:
    reply = _live(lab, lambda c: c.export(out, fmt, session=session))
    if reply is not None:
        return reply
    from ledger.export import export_views
    con = open_readonly(lab.ledger_path)
    try:
        return export_views(con, out, fmt, session=session)
    finally:
        con.close()


def format_table(result: dict[str, Any], max_width: int = 60) -> str:
    cols = result["columns"]
    rows = [["" if v is None else str(v).replace("\n", " ")[:max_width] for v in row] for row in result["rows"]]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
