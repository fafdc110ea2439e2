"""The Now panel: the experiment in flight, its step, a bar of time left against its deadline, and
the tail of its training output (untrusted: shown as plain text, made printable, bounded).

With several workers (`StatusSnapshot.in_flight` not empty) it shows one line per experiment in
flight instead, oldest first, each with its own time left (no bar: one would not say whose), then
what the loop itself is doing if that is none of them (proposing the next one), and the tail of
the latest run still training, labelled with its number.

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
NOW_ROWS = 14  # the panel's rows inside its border (app.tcss: #top is 16 high), until it is laid out


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


def flight_line(flight: InflightStatus, received_at: float, now: float) -> Text:
    """One experiment among several in flight, on one line: number, description, step, time."""
    left = seconds_left_now(flight, received_at, now)
    elapsed = flight.elapsed_seconds + (now - received_at)
    t = Text()
    t.append(f"#{flight.experiment} ", style="bold")
    t.append(short(flight.description, 40))  # one line in a half-width panel: a wrapped line would push the tail out
    t.append(f"  {flight.step}", style="bold cyan")
    t.append(f"  {elapsed:.0f} s in" + (f", {left:.0f} s left" if left is not None else ""))
    return t


def flights_text(flights: tuple[InflightStatus, ...], loop: InflightStatus | None, received_at: float, now: float) -> Text:
    """Every experiment in flight, a line each, then the loop's own step when it is none of them."""
    t = Text()
    t.append(f"{len(flights)} in flight\n", style="bold")  # a span, not the base style: that would bold every line
    t.append_text(Text("\n").join(flight_line(f, received_at, now) for f in flights))
    if loop is not None and loop.experiment not in {f.experiment for f in flights}:
        t.append("\nloop: ", style="dim")
        t.append_text(flight_line(loop, received_at, now))
    return t


def tail_text(tail: str, lines: int = TAIL_LINES) -> Text:
    kept = [short(line, 160) for line in tail.splitlines() if line.strip()][-lines:]
    return Text("\n".join(kept) if kept else "(no training output yet)", style="dim" if not kept else "")


def tail_room(rows: int, what: Text) -> int:
    """How many tail lines fit under the flights' lines and the tail's label: the panel does not
    scroll, so a tail that overflowed would lose its newest lines, the ones that matter (the label
    counts against the tail's own height too, app.tcss's max-height of TAIL_LINES)."""
    return max(1, min(TAIL_LINES - 1, rows - len(what.plain.splitlines()) - 1))


class NowPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("nothing in flight", id="now-what")
        yield ProgressBar(total=100, show_eta=False, show_percentage=False, id="now-bar")
        yield Static("", id="now-tail")

    _shown: tuple | None = None

    def show(self, flight: InflightStatus | None, received_at: float, now: float, tail: str,
             flights: tuple[InflightStatus, ...] = (), tail_of: int | None = None) -> None:
        """Draw `flight` (the loop's step), or with several workers every one of `flights`;
        `tail_of` is the experiment whose run `tail` was read from (with several, it says whose)."""
        if flights:
            self._show_several(flights, flight, received_at, now, tail, tail_of)
            return
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

    def _show_several(self, flights: tuple[InflightStatus, ...], loop: InflightStatus | None, received_at: float,
                      now: float, tail: str, tail_of: int | None) -> None:
        what = flights_text(flights, loop, received_at, now)
        # the tail only while its own run trains: another experiment's step says nothing about it
        training = any(f.experiment == tail_of and f.step == "training" for f in flights)
        room = tail_room(self.content_size.height or NOW_ROWS, what)
        key = (what.plain, tail, "several", training and tail_of, room)
        if key == self._shown:  # redrawn twice a second: repaint only what changed (idle CPU)
            return
        self._shown = key
        self.query_one("#now-what", Static).update(what)
        self.query_one("#now-bar", ProgressBar).display = False
        tail_widget = self.query_one("#now-tail", Static)
        tail_widget.display = training
        if training:
            label = Text()
            label.append(f"output of #{tail_of}:\n", style="bold")
            tail_widget.update(label.append_text(tail_text(tail, room)))
