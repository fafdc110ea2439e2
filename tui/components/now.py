"""The Now panel: the experiment in flight, its step, a bar of time left against its deadline, and
the tail of its training output (untrusted: shown as plain text, made printable, bounded).

The controller's status says how many seconds were left when it was built; between statuses the
panel counts down from that figure on its own clock (`seconds_left_now`), so the bar moves every
tick without asking the controller.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from controller.live.status import InflightStatus
from controller.session.narrator import short

TAIL_LINES = 8


def seconds_left_now(flight: InflightStatus, received_at: float, now: float) -> float | None:
    if flight.seconds_left is None:
        return None
    return max(0.0, flight.seconds_left - (now - received_at))


def now_text(flight: InflightStatus | None, received_at: float, now: float) -> Text:
    if flight is None:
        return Text("nothing in flight", style="dim")
    left = seconds_left_now(flight, received_at, now)
    elapsed = flight.elapsed_seconds + (now - received_at)
    t = Text()
    t.append(f"#{flight.experiment} ", style="bold")
    t.append(short(flight.description, 80))
    t.append(f"\nstep: {flight.step}", style="bold cyan")
    t.append(f"   {elapsed:.0f} s in" + (f", {left:.0f} s left before the kill" if left is not None else ""))
    return t


def tail_text(tail: str) -> Text:
    lines = [short(line, 160) for line in tail.splitlines() if line.strip()][-TAIL_LINES:]
    return Text("\n".join(lines) if lines else "(no training output yet)", style="dim" if not lines else "")


class NowPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("nothing in flight", id="now-what")
        yield ProgressBar(total=100, show_eta=False, show_percentage=False, id="now-bar")
        yield Static("", id="now-tail")

    _shown: tuple | None = None

    def show(self, flight: InflightStatus | None, received_at: float, now: float, tail: str) -> None:
        what = now_text(flight, received_at, now)
        key = (what.plain, tail, flight is None)
        if key == self._shown:  # redrawn twice a second: repaint only what changed (idle CPU)
            return
        self._shown = key
        self.query_one("#now-what", Static).update(what)
        bar = self.query_one("#now-bar", ProgressBar)
        left = seconds_left_now(flight, received_at, now) if flight else None
        bar.display = left is not None
        if flight is not None and left is not None:
            total = max(1.0, flight.elapsed_seconds + flight.seconds_left)
            bar.update(total=total, progress=min(total, total - left))
        else:
            bar.update(total=100, progress=0)
        tail_widget = self.query_one("#now-tail", Static)
        tail_widget.display = flight is not None and flight.step == "training"
        tail_widget.update(tail_text(tail))
