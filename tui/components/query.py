"""A read-only SQL query's result as a table (the `/` key). The query ran through
`controller.audit.query`: on the controller's own connection while one runs, else on a read-only
connection to the file; cells are shown as plain, printable text."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from controller.session.narrator import short

CELL_CHARS = 80


class QueryScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("q", "app.pop_screen", "back")]

    def __init__(self, sql: str, result: dict[str, Any]):
        super().__init__()
        self.sql = sql
        self.result = result

    def compose(self) -> ComposeResult:
        rows = self.result.get("rows") or []
        more = " (truncated)" if self.result.get("truncated") else ""
        yield Static(f"{short(self.sql, 200)}   {len(rows)} row{'s' if len(rows) != 1 else ''}{more}", id="query-sql")
        yield DataTable(id="query-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*[short(str(c), 40) for c in self.result.get("columns") or []])
        for row in self.result.get("rows") or []:
            table.add_row(*["" if v is None else short(str(v), CELL_CHARS) for v in row])
        table.focus()
