"""The header: the gate state large and coloured, and what an operator checks first.

Lab, session id and tag, the gate (and "paused by NAME" while an operator holds it), the rule and
evidence of the transition that put it there and since when, the constitution's version and short
hash, the ledger's head seq, and whether the view is live or how stale it is. `header_texts` is
pure (a fixed clock gives a fixed header); `GateHeader` only shows its two texts.
"""

from __future__ import annotations

from datetime import datetime, timezone

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from controller.live.status import StatusSnapshot
from controller.session.narrator import short
from tui.feed import Source
from tui.model import LabView

GATE_STATES = ("RUN", "THROTTLE", "FREEZE", "STOP")
QUIET_S = 10.0  # a live controller answers a status every refresh; this long without one is worth saying


def ago(seconds: float) -> str:
    if seconds < 1.5:
        return "now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def freshness(source: Source | None, status_at: float | None, now: float, problem: str | None) -> str:
    """Live, or how stale the view is and why."""
    age = "" if status_at is None else ago(now - status_at)
    if source == Source.LIVE:
        if status_at is not None and now - status_at > QUIET_S:  # the watch is open but nothing answers
            return f"live channel open, but no status for {age.removesuffix(' ago')}: the controller may be hung"
        return f"live (updated {age})" if age and age != "now" else "live"
    if source == Source.LEDGER:
        return f"no controller running: read from the ledger ({age or 'reading'})"
    if source == Source.STALE:
        return f"stale: {problem or 'the controller does not answer'} (status {age or 'unknown'})"
    if source == Source.GONE:
        return f"controller gone: {problem or 'the live channel closed'}"
    return "connecting…"


def gate_label(status: StatusSnapshot | None, view: LabView) -> tuple[str, str]:
    """(state, label): the label adds who holds a pause."""
    state = status.gate.state if status else (view.gate_history[-1].to_state if view.gate_history else "RUN")
    label = state
    held = status.gate.held_by_operator if status else bool(view.gate_history and view.gate_history[-1].held)
    if held:
        holder = next((g.by for g in reversed(view.gate_history) if g.held and g.by), "")
        label = f"{state} · paused by {holder.removeprefix('person:') or 'an operator'}"
    return state, label


def header_texts(lab_name: str, view: LabView, status: StatusSnapshot | None, source: Source | None,
                 status_at: float | None, problem: str | None, now: datetime) -> tuple[Text, Text]:
    state, label = gate_label(status, view)
    badge = Text(f" {label} ", style="bold")
    info = Text()
    sess = status.session if status else None
    sid = (sess.id if sess and sess.id else view.session) or "none yet (charter run)"
    tag = (sess.tag if sess and sess.tag else view.tag) or ""
    running = "running" if status and status.running else (f"ended: {short(view.session_ended, 60)}" if view.session_ended else
                                                            (f"not running: {short(status.session.ended, 60)}" if status and status.session.ended else ""))
    info.append(f"lab {lab_name}", style="bold")
    info.append(f"   session {sid}" + (f" ({tag})" if tag else "") + (f" {running}" if running else ""))
    info.append("\n")
    last = view.last_gate()
    rule = (status.gate.rule if status and status.gate.rule else (last.rule if last else None))
    evidence = (status.gate.evidence if status and status.gate.evidence else (last.evidence if last else None))
    since = f" since {last.ts.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({ago((now - last.ts).total_seconds())})" if last else " since the lab began"
    info.append(f"gate {state}" + (f" by rule {rule}" if rule else "") + (f": {short(evidence, 90)}" if evidence else "") + since)
    info.append("\n")
    version = f"v{view.constitution_version}" if view.constitution_version is not None else "v?"
    info.append(f"constitution {version} {view.constitution_hash[:12] or '?'}   ledger head seq {view.head_seq}   ")
    fresh = freshness(source, status_at, now.timestamp(), problem)
    info.append(fresh, style="green" if source == Source.LIVE else "yellow")
    return badge, info


class GateHeader(Horizontal):
    def compose(self) -> ComposeResult:
        yield Static(" RUN ", id="gate-badge", classes="gate-RUN")
        yield Static("", id="gate-info")

    _shown: tuple[str, str, str] | None = None

    def show(self, badge: Text, state: str, info: Text) -> None:
        key = (badge.plain, state, info.markup)
        if key == self._shown:  # redrawn twice a second: repaint only what changed (idle CPU)
            return
        self._shown = key
        b = self.query_one("#gate-badge", Static)
        b.update(badge)
        for s in GATE_STATES:
            b.set_class(s == state, f"gate-{s}")
        self.query_one("#gate-info", Static).update(info)
