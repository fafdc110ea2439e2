"""Where the console's data comes from: the live channel when a controller runs, the ledger file
read-only when none does, and the last published status when one holds the file but does not answer.

`LabFeed` runs in two of the app's thread workers and hands `FeedUpdate`s to a callback (the app
posts them to its UI thread). `watch_loop` keeps a live `watch` open (events as they are
recorded, a status after each batch); when no controller listens it polls the ledger instead,
opening the file read-only only for the moment of one read (a read-only holder would block a
`charter run` starting meanwhile; the controller's open retries for 15 s, a read takes
milliseconds), and it tries the socket again every `refresh_s`, so a session that starts is
picked up. `poll_loop` asks a live controller for its status once per `refresh_s` (budgets and
the countdown move between events; one status costs the controller a few dictionary reads) and
reads the tail of the training log of the run in flight. When the controller dies the watch ends
and the feed says so; the app keeps its last view. Every failure is one sentence in the update.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from controller.execution.log_tail import read_tail
from controller.live.client import ControllerUnreachable, LiveClient, LiveError
from controller.live.protocol import EventsFrame, WireEvent
from controller.live.status import StatusSnapshot, read_status
from controller.operators import status_from_ledger
from controller.workspace.lab import Lab
from ledger import Ledger, LedgerBusy, LedgerError

LEDGER_BATCH = 5000  # events read from the file per open
TAIL_BYTES = 2048
STATUS_EVERY_S = 5.0  # with no controller, the status is rebuilt this often (wall hours move) or on new events


class Source(StrEnum):
    LIVE = "live"  # a controller answers on the live channel
    LEDGER = "ledger"  # no controller: read from the file
    STALE = "stale"  # a controller holds the file but does not answer: its last published status
    GONE = "gone"  # the live channel just closed (the controller ended or died)


@dataclass(frozen=True)
class FeedUpdate:
    source: Source | None = None  # None: an update that says nothing about the source (a log tail)
    events: tuple[WireEvent, ...] = ()
    status: StatusSnapshot | None = None
    log_tail: str | None = None
    problem: str | None = None  # one sentence
    live_only: bool = False  # a status polled from the controller: stale once the watch has ended
    at: float = field(default_factory=time.time)


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LabFeed:
    def __init__(self, lab: Lab, deliver: Callable[[FeedUpdate], None], refresh_s: float = 1.0):
        self.lab = lab
        self.deliver = deliver
        self.refresh_s = refresh_s
        self.seq = 0  # the last event delivered
        self.run_dir: str | None = None  # the run in flight, set by the app from its model
        self.live = False
        # DuckDB lets one process hold a file once read-write or several times read-only, never
        # both: the feed's reads and the app's own writes with no controller (a pause, a note,
        # a query) take turns on this lock
        self.file_lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = None
        self._status_at = 0.0
        self._tail = ""

    def close(self) -> None:
        """End both loops (a watch blocked in a read wakes up)."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- events --------------------------------------------------------------------------------------
    def watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                watch = LiveClient(self.lab.state_dir, timeout=5).watch(after_seq=self.seq, with_status=True)
            except ControllerUnreachable:
                self.poll_ledger()
                self._stop.wait(self.refresh_s)
                continue
            except LiveError as e:
                self._stale(one_line(e))
                self._stop.wait(self.refresh_s)
                continue
            self._watch, self.live = watch, True
            problem = "the controller closed the live channel (it ended or died); the last view is kept"
            frames = 0
            try:
                for frame in watch:
                    frames += 1
                    if self._stop.is_set():
                        break
                    if isinstance(frame, EventsFrame):
                        if frame.events:
                            self.seq = frame.events[-1].seq
                            self.deliver(FeedUpdate(Source.LIVE, events=tuple(frame.events)))
                    else:
                        self.deliver(FeedUpdate(Source.LIVE, status=frame.status))
            except (LiveError, OSError, ValueError) as e:
                problem = f"the live channel failed ({one_line(e)}); the last view is kept"
            finally:
                watch.close()
                self._watch, self.live = None, False
                self._status_at = 0.0  # the next read of the file rebuilds the status: the live one is over
            if frames == 0:  # a controller still setting up its session answers nothing yet: try again
                self._stop.wait(self.refresh_s)
                continue
            if not self._stop.is_set():
                self.deliver(FeedUpdate(Source.GONE, problem=problem))
                self._stop.wait(0.2)  # let a dying controller release the file before it is read

    def poll_ledger(self) -> None:
        """One read of the file with no controller: new events, and the status when it may have moved."""
        try:
            with self.file_lock:
                with Ledger.open(self.lab.ledger_path, read_only=True) as led:
                    events = [WireEvent.from_event(e) for e in led.events(since_seq=self.seq, limit=LEDGER_BATCH)]
                status = None
                if events or time.time() - self._status_at >= STATUS_EVERY_S:
                    status = status_from_ledger(self.lab)
                    self._status_at = time.time()
        except LedgerBusy:
            self._stale("a controller holds the ledger but does not answer on the live channel (yet)")
            return
        except (LedgerError, OSError, ValueError) as e:
            self.deliver(FeedUpdate(Source.LEDGER, problem=f"the ledger could not be read: {one_line(e)}"))
            return
        if events:
            self.seq = events[-1].seq
        self.deliver(FeedUpdate(Source.LEDGER, events=tuple(events), status=status))

    def _stale(self, problem: str) -> None:
        status = read_status(self.lab.state_dir)
        self.deliver(FeedUpdate(Source.STALE, status=None if status is None else dataclasses.replace(status, stale=True),
                                problem=problem))

    # -- status and the log tail -------------------------------------------------------------------
    def poll_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if self.live:
                try:
                    status = LiveClient(self.lab.state_dir, timeout=2).status()
                    self.deliver(FeedUpdate(status=status, live_only=True))
                except LiveError:
                    pass  # the watch notices a controller that went away
            run_dir = self.run_dir
            tail = read_tail(Path(run_dir), TAIL_BYTES) if run_dir else ""
            if tail != self._tail:
                self._tail = tail
                self.deliver(FeedUpdate(log_tail=tail))
