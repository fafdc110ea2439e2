"""The detail screen of one experiment: what was proposed and why, the decision and its reason,
each run (exit code, time, memory, val_bpb), the refusal evidence and the diff. All of it was
written by an agent or a run: shown as plain text, made printable, never as markup."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from controller.execution.log_tail import printable
from tui.model import ExperimentRow

DIFF_LINES = 400


def detail_text(row: ExperimentRow) -> Text:
    t = Text()
    t.append(f"experiment #{row.number}", style="bold")
    t.append(f"   session {row.session}\n")
    t.append(f"description: {printable(row.description)}\n")
    if row.hypothesis:
        t.append(f"hypothesis:  {printable(row.hypothesis)}\n")
    t.append(f"source:      {row.source or '-'}   commit {(row.commit or '-')[:12]}\n")
    bpb = f"{row.val_bpb:.4f}" if row.val_bpb is not None else "-"
    t.append(f"\ndecision:    {row.decision or 'in flight'}   val_bpb {bpb}", style="bold")
    if row.best_before is not None:
        t.append(f"   best before {row.best_before:.4f}")
    if row.threshold is not None:
        t.append(f"   threshold {row.threshold:.4f}")
    t.append(f"\nreason:      {printable(row.reason) or '-'}\n")
    if row.runs:
        t.append("\nruns\n", style="bold")
        for r in row.runs:
            v = f"{r.val_bpb:.4f}" if r.val_bpb is not None else "-"
            gpu = (f", VRAM {r.peak_vram_mb:.0f} MB" if r.peak_vram_mb is not None else "") + \
                  (f", MFU {r.mfu:.1%}" if r.mfu is not None else "")
            which = f"run {r.run}" if r.run else "the incumbent's run for it"  # run 0: made for this decision
            t.append(f"  {which}: exit {r.returncode}, {r.wall_seconds:.1f} s, peak {r.peak_rss_mb:.0f} MB{gpu}, "
                     f"val_bpb {v}{', timed out' if r.timed_out else ''}{(', ' + r.status) if r.status else ''}\n")
    if row.refusals:
        t.append("\nrefused by the harm test\n", style="bold red")
        for line in row.refusals:
            t.append(f"  {printable(line)}\n")
    if row.diff:
        t.append("\ndiff\n", style="bold")
        lines = printable(row.diff).splitlines()
        for line in lines[:DIFF_LINES]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            t.append(line + "\n", style=style)
        if len(lines) > DIFF_LINES:
            t.append(f"… {len(lines) - DIFF_LINES} more lines (charter ledger query)\n", style="dim")
    last_log = next((r.log_tail for r in reversed(row.runs) if r.log_tail), "")
    if last_log:
        t.append("\nlast run's output (untrusted)\n", style="bold")
        t.append("\n".join(printable(last_log).splitlines()[-20:]) + "\n", style="dim")
    return t


class DetailScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("q", "app.pop_screen", "back")]

    def __init__(self, row: ExperimentRow):
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(detail_text(self.row), id="detail-text")
        yield Footer()
