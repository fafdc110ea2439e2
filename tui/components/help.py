"""The help screen (`?`): every key of the console and what it does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("p", "pause the session at once (gate FREEZE, held until resumed); pausing is always safe"),
    ("r", "resume: clear a pause or a STOP; asks for the reason (recorded with your name)"),
    ("s", "stop the session now (gate STOP; asks to confirm; only a resume with a reason clears it)"),
    ("n", "add a note to the ledger"),
    ("/", "run one read-only SQL query over the ledger's events and views, shown as a table"),
    ("enter", "on the experiments table: open the experiment's detail (diff, reason, runs, refusals)"),
    ("tab", "move between panels; click a column header to sort the experiments"),
    ("?", "this help"),
    ("q", "quit the console (the session goes on)"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "close"), Binding("question_mark", "app.pop_screen", "close"),
                Binding("q", "app.pop_screen", "close")]

    def __init__(self, by: str):
        super().__init__()
        self.by = by

    def compose(self) -> ComposeResult:
        lines = [f"{k:>6}  {what}" for k, what in KEYS]
        lines.append("")
        lines.append(f"You act as person:{self.by} (charter tui --by NAME); every action lands in the ledger with that name.")
        lines.append("Escape closes this help.")
        with Vertical(classes="modal"):
            yield Static("\n".join(lines), id="help-text")
