"""The recorder: the one place a session's events are written and its live status published.

Every event of a session goes through `Recorder.record(payload, ...)`, from the loop thread and
from the live channel's threads (notes, operator commands) alike. Under one lock it appends the
typed payload to the ledger, keeps the session's events for budget accounting, writes
`status.json` (the only writer of that file while the session runs), wakes subscribers
waiting in `wait_for_event` and tells its `listeners` (e.g. `charter run`'s narrator) of each
event in seq order. Nothing else in the session touches the ledger for writing.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.live.status import write_status
from ledger import Event, EventKind, Ledger
from ledger.record import Draft
from ledger.payloads import Payload

CONTROLLER = "controller"


class Recorder:
    def __init__(self, led: Ledger, state_dir: Path, snapshot: Callable[[], Any] | None = None,
                 listeners: list[Callable[[Event], None]] | None = None):
        self.led = led
        self.state_dir = state_dir
        self.snapshot = snapshot  # builds the status to publish; None until the session is set up
        self.session: str | None = None
        self.session_events: list[Event] = []  # this session's, for budgets and status
        # called under the lock (so in seq order) with each recorded event; a listener must not
        # block (put it on a queue) and its failure never reaches the session
        self.listeners: list[Callable[[Event], None]] = list(listeners or [])
        self._lock = threading.RLock()
        self._new_event = threading.Condition(self._lock)
        head = led.head()
        self._head_seq = head[0] if head else 0
        self._fault_count = 0

    def record(self, payload: Payload, *, actor: str = CONTROLLER, **typed: Any) -> Event:
        """Append one event for this session, publish status, wake watchers; returns the event."""
        with self._lock:
            ev = self.led.record(payload, actor=actor, session=self.session, **typed)
            self.session_events.append(ev)
            self._head_seq = ev.seq
            self._publish_locked()
            self._new_event.notify_all()
            self._tell_locked([ev])
        self._maybe_fault(ev.kind)
        return ev

    def record_many(self, items: list[tuple[Payload, str, dict[str, Any]]]) -> list[Event]:
        """Append (payload, actor, typed columns) items in one transaction, then publish once: a
        proposing step's agent calls cost one ledger write, not one per call."""
        if not items:
            return []
        with self._lock:
            events = self.led.append_many(
                Draft(p.KIND, actor, self.session, p.to_json(), **typed) for p, actor, typed in items)
            self.session_events.extend(events)
            self._head_seq = events[-1].seq
            self._publish_locked()
            self._new_event.notify_all()
            self._tell_locked(events)
        for ev in events:
            self._maybe_fault(ev.kind)
        return events

    def publish(self) -> None:
        """Publish the status now (e.g. when the step in flight changes without an event)."""
        with self._lock:
            self._publish_locked()

    def _publish_locked(self) -> None:
        if self.snapshot is not None:
            write_status(self.state_dir, self.snapshot())

    def _tell_locked(self, events: list[Event]) -> None:
        for listener in self.listeners:
            for ev in events:
                try:
                    listener(ev)
                except Exception:  # a listener (a printer) must never fail a recording
                    pass

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        """Block until the ledger's head is past `after_seq` (or `timeout` s); the head seq."""
        with self._new_event:
            self._new_event.wait_for(lambda: self._head_seq > after_seq, timeout=timeout)
            return self._head_seq

    def wake(self) -> None:
        """Wake every waiter (the session is ending)."""
        with self._new_event:
            self._new_event.notify_all()

    def _maybe_fault(self, kind: EventKind | str) -> None:
        """Fault injection for crash-safety tests: CHARTER_FAULT_AFTER=kind[:n] kills this
        process with SIGKILL right after the n-th event of that kind is committed."""
        spec = os.environ.get("CHARTER_FAULT_AFTER")
        if not spec:
            return
        want, _, nth = spec.partition(":")
        if want != str(kind):
            return
        self._fault_count += 1
        if self._fault_count >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
