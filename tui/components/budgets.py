"""Budget meters: one bar per session and day resource with the projected time of exhaustion.

The session's use and limits come from the status (the controller's own accounting); the day's
use is summed from today's events exactly as the controller sums it (`budgets.usage_from_events`)
against the day limits of the constitution in force. The projection assumes the rate so far goes
on: used / time elapsed, so `(limit - used) / rate` from now; wall hours run out at a fixed time.
`meter_lines` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from rich.text import Text
from textual.widgets import Static

BAR = 18
NAMES = {"experiments": "experiments", "device_seconds": "device s", "wall_hours": "wall h",
         "agent_tokens": "agent tokens", "agent_dollars": "agent $", "disk_mb": "disk MB"}


def projected(used: float, limit: float, since: datetime | None, now: datetime) -> str:
    """When the resource runs out at the rate so far, as text."""
    if limit <= 0:
        return "no allowance" if used <= 0 else "exhausted"
    if used >= limit:
        return "exhausted"
    if since is None or used <= 0:
        return ""
    elapsed = (now - since).total_seconds()
    if elapsed <= 0:
        return ""
    left_s = (limit - used) / (used / elapsed)
    if left_s > 14 * 86400:
        return "> 2 weeks"
    at = now + timedelta(seconds=left_s)
    return f"out ~{at:%H:%M}" if at.date() == now.date() else f"out ~{at:%b %d}"


def amount(value: float) -> str:
    """A budget figure a person reads at a glance: 2,000,000 not 2e+06, 0.42 not 0.4213."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def meter(name: str, used: float, limit: float, eta: str) -> Text:
    frac = 0.0 if limit <= 0 else min(1.0, used / limit)
    filled = round(frac * BAR)
    style = "red" if frac >= 0.9 else "yellow" if frac >= 0.7 else "green"
    t = Text(f"{NAMES.get(name, name):<13}")
    t.append("█" * filled, style=style)
    t.append("░" * (BAR - filled), style="dim")
    t.append(f" {amount(used):>9} / {amount(limit):<9} {eta}")
    return t


def meter_lines(session: Mapping[str, tuple[float, float]], session_start: datetime | None,
                day: Mapping[str, tuple[float, float]], midnight: datetime, now: datetime) -> Text:
    out = Text()
    out.append("session\n", style="bold")
    for name, (used, limit) in session.items():
        eta = projected(used, limit, session_start, now) if name != "wall_hours" else (
            f"ends {session_start + timedelta(hours=limit):%H:%M}" if session_start and used < limit else projected(used, limit, None, now))
        out.append_text(meter(name, used, limit, eta))
        out.append("\n")
    if day:
        out.append("today\n", style="bold")
        for name, (used, limit) in day.items():
            if name == "wall_hours":
                continue  # a day has no wall budget of its own beyond its sessions'
            out.append_text(meter(name, used, limit, projected(used, limit, midnight, now)))
            out.append("\n")
    return out


class BudgetMeters(Static):
    pass
