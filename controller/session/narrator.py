"""What `charter run` prints while its session works: one line per decision, the gate as it moves,
and a live progress line for the step in flight.

The session does not print; its recorder tells listeners of every event it records
(`Recorder.listeners`), and `Narrator.on_event` only puts the event on a queue, so a terminal
that is slow, or stdout piped into a pager that stops reading, can never hold up the controller.
A printer thread takes events off the queue and writes them in one of three modes: `lines` (a
person reading: one line per decided experiment with its val_bpb, the change against the best
before it, the decision and the reason in short; gate transitions, operator commands, notes and
budget stops as they happen; and, only when stdout is a terminal, a progress line redrawn twice a
second with the step, the time left before the run's kill and the last training loss), `jsonl`
(one JSON object per event, the live channel's wire form, for scripts) and `quiet` (nothing).
The formatting functions are pure, so the lines are tested without a session.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from controller.execution.log_tail import last_loss, printable, read_tail
from controller.live.protocol import WireEvent
from controller.live.status import Inflight
from ledger import Event, EventKind
from ledger import payloads as P

Mode = Literal["lines", "jsonl", "quiet"]
TICK_S = 0.5  # how often the progress line is redrawn
DESCRIPTION_CHARS = 34
REASON_CHARS = 72
CLEAR_LINE = "\r\x1b[2K"


# -- pure formatting --------------------------------------------------------------------------------


def short(text: str, limit: int) -> str:
    """One printable line of at most `limit` characters (an ellipsis marks a cut)."""
    line = " ".join(printable(text or "").split())
    return line if len(line) <= limit else line[: max(0, limit - 1)] + "…"


def short_reason(reason: str, limit: int = REASON_CHARS) -> str:
    """The reason's first clause: the keep rule's reasons put the verdict before the evidence."""
    return short(re.split(r";\s", reason or "", maxsplit=1)[0], limit)


def header_line() -> str:
    return f"{'exp':>4}  {'description':<{DESCRIPTION_CHARS}}  {'val_bpb':>7}  {'vs best':>8}  {'decision':<11}  reason"


def decided_line(n: int | None, payload: P.Decided, val_bpb: float | None, best_before: float | None) -> str:
    """One decided experiment: number, description, val_bpb, delta against the best before it
    (negative is better), decision, the reason in short."""
    bpb = f"{val_bpb:.4f}" if val_bpb is not None else "-"
    delta = f"{val_bpb - best_before:+.4f}" if val_bpb is not None and best_before is not None and payload.decision != "baseline" else ""
    return (f"{n if n is not None else '-':>4}  {short(payload.description, DESCRIPTION_CHARS):<{DESCRIPTION_CHARS}}  "
            f"{bpb:>7}  {delta:>8}  {payload.decision:<11}  {short_reason(payload.reason)}")


def gate_line(payload: P.GateTransition) -> str:
    who = payload.by if payload.by and payload.by != "controller" else ""
    why = f"by {who}" if who.startswith("person:") else f"rule {payload.rule}" if payload.rule else ""
    evidence = f": {short(payload.evidence, REASON_CHARS)}" if payload.evidence else ""
    held = " (held by the operator)" if payload.held else ""
    return f"gate {payload.from_state} -> {payload.to_state}{held}  {why}{evidence}".rstrip()


def progress_line(flight: Inflight, now: float, loss: float | None, width: int) -> str:
    """The step in flight as one line no wider than `width`."""
    parts = [f"> #{flight.experiment} {flight.step}"]
    if flight.deadline:
        parts.append(f"{max(0.0, flight.deadline - now):.0f} s left")
    else:
        parts.append(f"{max(0.0, now - flight.started):.0f} s")
    if loss is not None and flight.step == "training":
        parts.append(f"loss {loss:.4f}")
    parts.append(short(flight.description, 60))
    return "  " + short(" · ".join(parts), max(10, width - 3))


def event_line(ev: Any) -> str | None:
    """The line a person reads for an event other than a decision, or None for one not worth a line."""
    kind = ev.kind
    if kind == EventKind.GATE_TRANSITION:
        return gate_line(P.read(ev))
    if kind == EventKind.SESSION_STARTED:
        p = P.read(ev)
        return (f"session {ev.session} started on branch {p.branch} (constitution v{p.constitution_version} "
                f"{p.constitution_hash[:12]}, isolation {p.isolation})")
    if kind == EventKind.SESSION_RESUMED:
        p = P.read(ev)
        lost = f", experiments {', '.join(map(str, p.interrupted))} interrupted" if p.interrupted else ""
        return f"session {ev.session} resumed at {p.reset_to[:10]}{lost}"
    if kind == EventKind.OPERATOR_COMMAND:
        p = P.read(ev)
        reason = f": {short(p.reason, REASON_CHARS)}" if p.reason else ""
        return f"operator {ev.actor.removeprefix('person:')}: {p.command}{reason}"
    if kind == EventKind.NOTE:
        return f"note by {ev.actor.removeprefix('person:')}: {short(P.read(ev).text, 100)}"
    if kind == EventKind.BUDGET_EXHAUSTED:
        p = P.read(ev)
        return f"budget: the {p.period} budget for {p.resource} is used up"
    if kind == EventKind.INTEGRITY_FAILURE:
        return f"integrity failure: {short('; '.join(P.read(ev).problems), 120)}"
    if kind == EventKind.PROPOSER_FAILED:
        p = P.read(ev)
        return f"proposer {p.proposer} failed: {short(p.error, 100)}"
    return None


@dataclass
class RunningBest:
    """The best val_bpb so far, as the decisions say (the delta of a line is against it)."""

    best: float | None = None

    def see(self, payload: P.Decided, val_bpb: float | None) -> float | None:
        """Account for one decision; returns the best before it."""
        before = self.best
        if payload.decision == "baseline" and not payload.repair and val_bpb is not None:
            self.best = val_bpb
        elif payload.decision == "keep" and val_bpb is not None:
            self.best = val_bpb
        return before


# -- the printer ------------------------------------------------------------------------------------


class Narrator:
    """Prints a session's events to `out` in `mode`; `on_event` is the recorder listener.

    `inflight` and `stopping` are read by the printer thread for the progress line and the
    "stopping" line (the session's `inflight` attribute and its stop event)."""

    def __init__(self, out: TextIO, mode: Mode, *, tty: bool | None = None,
                 inflight: Callable[[], Inflight | None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.out = out
        self.mode = mode
        self.tty = out.isatty() if tty is None else tty
        self.inflight = inflight
        self.stopping = stopping
        self.best = RunningBest()
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._progress_shown = False
        self._said_stopping = False
        self._header_done = False
        self._run_dir: Path | None = None  # of the last training_started: where the loss is read

    # -- the listener (called on the recording thread, under the recorder's lock) -------------
    def on_event(self, ev: Event) -> None:
        if self.mode != "quiet":
            self._queue.put(ev)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Narrator:
        if self.mode != "quiet":
            self._thread = threading.Thread(target=self._print_loop, name="charter-narrator", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Print what is queued, clear the progress line, stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Narrator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the printer thread -------------------------------------------------------------------
    def _print_loop(self) -> None:
        while True:
            try:
                ev = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                self._tick()
                continue
            if ev is None:
                self._clear_progress()
                self._flush()
                return
            try:
                self._print_event(ev)
            except Exception as e:  # an event this printer cannot show must not end the narration
                self._write(f"(an event could not be shown: {type(e).__name__}: {e})")
            if self._queue.empty():
                self._tick()

    def _print_event(self, ev: Event) -> None:
        if self.mode == "jsonl":
            self._write(json.dumps(WireEvent.from_event(ev).to_json(), default=str))
            return
        if ev.kind == EventKind.TRAINING_STARTED:
            self._run_dir = Path(P.read(ev).run_dir)
            return
        if ev.kind == EventKind.DECIDED:
            payload = P.read(ev)
            before = self.best.see(payload, ev.val_bpb)
            if not self._header_done:
                self._write(header_line())
                self._header_done = True
            self._write(decided_line(ev.experiment, payload, ev.val_bpb, before))
            return
        line = event_line(ev)
        if line is not None:
            self._write(line)

    def _tick(self) -> None:
        if self.mode != "lines":
            return
        if self.stopping() and not self._said_stopping:
            self._said_stopping = True
            self._write("stopping: nothing new starts; the run in flight is killed and recorded as interrupted "
                        "(Ctrl-C again to quit at once)")
        if not self.tty:
            return
        flight = self.inflight()
        if flight is None:
            self._clear_progress()
            return
        loss = last_loss(read_tail(self._run_dir)) if self._run_dir is not None and flight.step == "training" else None
        width = shutil.get_terminal_size((100, 24)).columns
        self._raw(CLEAR_LINE + progress_line(flight, time.time(), loss, width))
        self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self._raw(CLEAR_LINE)
            self._progress_shown = False

    def _write(self, line: str) -> None:
        self._clear_progress()
        self._raw(line + "\n")

    def _raw(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):  # output closed (piped into `head`): go quiet
            self.mode = "quiet"

    def _flush(self) -> None:
        try:
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
