"""A stand-in for a running controller on the live channel: it answers `status` as a running
session would, from a real ledger it holds open (as a session holds it)."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import constitution
from controller.live.status import Progress, SessionView, StatusSnapshot, build_status
from controller.policy import budgets
from controller.policy.gates import GateMachine
from ledger import Ledger


class RunningSource:
    def __init__(self, led: Ledger):
        self.led = led
        self.gate = GateMachine()

    def status(self) -> StatusSnapshot:
        view = SessionView("s-live", "live", "charter/live", datetime(2026, 1, 2, tzinfo=timezone.utc))
        return build_status(rules=constitution.load_default(), gate=self.gate, gate_rule=None, gate_evidence=None,
                            session=view, progress=Progress(), usage=budgets.Usage(), inflight=None, running=True,
                            pid=os.getpid(), now=datetime.now(timezone.utc))

    def events_after(self, seq: int, limit: int):
        return self.led.events(seq)[:limit]

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        head = self.led.head()
        return head[0] if head else 0

    def cursor(self):
        return self.led.cursor()

    def note(self, by: str, text: str) -> int:
        raise NotImplementedError

    def command(self, op: str, by: str, reason: str) -> dict:
        raise NotImplementedError
