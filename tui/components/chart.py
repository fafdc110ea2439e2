"""The progress chart: val_bpb per experiment of the session, kept ones marked, the running best as
a step line and the baseline as a line, drawn in text cells (no plotting dependency).

Columns are experiments in order; rows are val_bpb bins between the lowest and highest value shown
(lower is better, so better is further down). Cells: `●` kept, `○` discarded, `─` the running
best, `┈` the baseline; experiments without a val_bpb (crash, timeout, refused, interrupted) are
a `×` on the bottom axis. `chart_text` is pure, so a snapshot of it is fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static


@dataclass(frozen=True)
class Point:
    number: int
    val_bpb: float | None
    decision: str


def chart_text(points: Sequence[Point], baseline: float | None, width: int, height: int) -> Text:
    measured = [p.val_bpb for p in points if p.val_bpb is not None]
    if not points or not measured:
        return Text("no measured experiment yet", style="dim")
    values = measured + ([baseline] if baseline is not None else [])
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    rows = max(3, height - 2)
    label_w = 7
    cols = max(1, min(len(points), (width - label_w - 1) // 2))
    shown = list(points)[-cols:]

    def row_of(v: float) -> int:  # row 0 at the top (the worst)
        return min(rows - 1, max(0, round((hi - v) / (hi - lo) * (rows - 1))))

    grid = [[(" ", "")] * (cols * 2) for _ in range(rows)]
    best = baseline
    for i, p in enumerate(points):  # the running best over every point, shown or not
        if p.decision == "keep" and p.val_bpb is not None:
            best = p.val_bpb
        if p.decision == "baseline" and p.val_bpb is not None and best is None:
            best = p.val_bpb
        j = i - (len(points) - len(shown))
        if j < 0:
            continue
        x = j * 2
        if baseline is not None:
            grid[row_of(baseline)][x] = ("┈", "blue")
            grid[row_of(baseline)][x + 1] = ("┈", "blue")
        if best is not None:
            grid[row_of(best)][x] = ("─", "yellow")
            grid[row_of(best)][x + 1] = ("─", "yellow")
        if p.val_bpb is None:
            continue
        mark = ("●", "bold green") if p.decision in ("keep", "baseline") else ("○", "white")
        grid[row_of(p.val_bpb)][x] = mark
    out = Text()
    for r in range(rows):
        label = f"{hi - (hi - lo) * r / (rows - 1):.4f}" if r in (0, rows - 1) or r == rows // 2 else ""
        out.append(f"{label:>{label_w}} ", style="dim")
        for ch, style in grid[r]:
            out.append(ch, style=style)
        out.append("\n")
    axis = Text(" " * (label_w + 1))
    for p in shown:
        axis.append("×" if p.val_bpb is None and p.decision not in ("baseline",) else "┴", style="red" if p.val_bpb is None else "dim")
        axis.append(" ")
    out.append_text(axis)
    out.append(f"\n{' ' * (label_w + 1)}#{shown[0].number}…#{shown[-1].number}   ● kept  ○ discarded  × no val_bpb  ─ best  ┈ baseline",
               style="dim")
    return out


class BpbChart(Static):
    pass
