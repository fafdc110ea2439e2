"""Budget usage from events and the burn / exhaustion figures the gates and the loop use."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import constitution
from controller.policy.budgets import Usage, burn, exhausted, usage_from_events

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)
LIMITS = constitution.load_default().budgets.session


def ev(kind, minutes, **payload):
    return SimpleNamespace(kind=kind, ts=T0 + timedelta(minutes=minutes), payload=payload)


def test_usage_sums_ran_experiments_device_time_and_agent_spend():
    events = [
        ev("decided", 1, decision="baseline"), ev("training_finished", 1, wall_seconds=70.0), ev("evaluated", 1, wall_seconds=3.0),
        ev("decided", 3, decision="refused"), ev("decided", 5, decision="crash"), ev("training_finished", 5, wall_seconds=10.0),
        ev("agent_call", 6, input_tokens=1000, output_tokens=200, dollars=0.01),
        ev("decided", 7, decision="baseline", repair=True),
    ]
    u = usage_from_events(events, None, T0 + timedelta(hours=2), started=T0)
    assert u == Usage(experiments=2, device_seconds=83.0, wall_hours=2.0, agent_tokens=1200, agent_dollars=0.01, disk_mb=0.0)
    later = usage_from_events(events, T0 + timedelta(minutes=4), T0 + timedelta(hours=2))
    assert later.experiments == 1 and later.device_seconds == 10.0


def test_burn_names_the_largest_share():
    frac, which = burn(Usage(experiments=20, device_seconds=7000), LIMITS)
    assert which == "device_seconds" and abs(frac - 7000 / LIMITS.device_seconds) < 1e-9


def test_zero_limit_means_none_allowed():
    limits = LIMITS.model_copy(update={"agent_tokens": 0})
    assert burn(Usage(agent_tokens=0), limits)[0] == 0.0
    assert burn(Usage(agent_tokens=5), limits)[0] == float("inf")


def test_exhausted_names_the_resource():
    assert exhausted(Usage(experiments=3), LIMITS) is None
    assert exhausted(Usage(experiments=LIMITS.experiments), LIMITS) == f"experiments {LIMITS.experiments}/{LIMITS.experiments}"
    assert exhausted(Usage(device_seconds=LIMITS.device_seconds + 1), LIMITS).startswith("device_seconds")
