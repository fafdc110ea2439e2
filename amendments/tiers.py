"""Which tier an amendment needs, derived from what its diff touches and which way it moves.

Three tiers, each needing more ratifications (`[amendment.tiers]`): **minor** tightens a limit or
a threshold (a smaller budget, a stricter keep rule, a gate rule that fires sooner, a narrower
scope); **major** loosens a budget, the scope or a gate rule, or changes something whose direction
is not known (unknown is never minor); **constitutional** touches the evaluation (and with it any
immutable file's pin), an entrenched section, the amendment rules and ratifier list, or the
sandbox level. The amendment's tier is the highest of its changes'; each change carries the reason
in words. Pure: changes and the parent constitution in, a `Classification` out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from constitution import Constitution
from constitution.schema import GATE_SEVERITY, GateState

from constitution.diff import ABSENT, Change


class Tier(IntEnum):
    MINOR = 1
    MAJOR = 2
    CONSTITUTIONAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TierReason:
    change: Change
    tier: Tier
    why: str

    @property
    def words(self) -> str:
        return f"{self.change.words} ({self.why}: {self.tier.label})"


@dataclass(frozen=True)
class Classification:
    tier: Tier
    reasons: tuple[TierReason, ...]

    def needed(self, rules: Constitution) -> int:
        """Ratifications this tier needs under `rules` (the constitution in force)."""
        return getattr(rules.amendment.tiers, self.tier.label)


# bookkeeping of the succession itself: set by the amendment process, never a rule change
SUCCESSION_KEYS = {"version", "parent_hash", "ratified_at", "amendment_id"}

# numbers whose larger value gives the agent more room (more budget, bigger diffs, more processes)
LOOSER_IF_HIGHER = (
    ("budgets",), ("scope", "max_diff_lines"), ("sandbox", "max_processes"), ("sandbox", "max_file_mb"),
    ("proposer", "deadline_seconds"), ("proposer", "max_tokens_per_call"), ("proposer", "max_turns"),
    ("proposer", "retries"), ("scale", "workers"), ("scale", "devices_per_worker"),
)
# numbers whose larger value makes keeping or spending harder (a stricter keep rule, higher prices)
TIGHTER_IF_HIGHER = (
    ("decision", "min_improvement"), ("decision", "confidence"), ("decision", "confirmation_runs"),
    ("decision", "noise_sd"), ("decision", "baseline_runs"), ("gates", "probation_experiments"),
    ("gates", "throttle"), ("proposer", "prices"),
)
# gate metrics that count events inside their window: a longer window sees more, so fires sooner
COUNTING_METRICS = {"crashes", "refusals", "integrity_failures", "hard_constraint_violations",
                    "memory_soft_exceeded", "proposer_failures"}
# lists where dropping items narrows what the agent may do (or what its sandbox shows it)
NARROWER_IF_SUBSET = {("scope", "editable"), ("proposer", "readable"), ("proposer", "env"), ("proposer", "program_paths")}


def classify(changes: list[Change], parent: Constitution, child: Constitution) -> Classification:
    """The tier `changes` (parent -> child) need; a change of no rule at all is not an amendment."""
    entrenched = set(parent.amendment.entrenched) | set(child.amendment.entrenched)
    reasons = []
    for c in changes:
        judged = _judge(c, entrenched, parent.model_dump(mode="json"))
        if judged is not None:
            reasons.append(TierReason(c, *judged))
    tier = max((r.tier for r in reasons), default=Tier.MINOR)
    return Classification(tier, tuple(reasons))


def _starts(path: tuple, prefixes: tuple[tuple[str, ...], ...]) -> bool:
    return any(path[: len(p)] == p for p in prefixes)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _judge(c: Change, entrenched: set[str], parent: dict[str, Any]) -> tuple[Tier, str] | None:
    p, old, new = c.path, c.old, c.new
    section = p[0]
    if section == "meta":
        if len(p) == 2 and p[1] in SUCCESSION_KEYS:
            return None
        return Tier.MINOR, "a label for people"
    if section == "evaluation":
        if len(p) >= 2 and p[1] == "immutable":
            return Tier.CONSTITUTIONAL, "an immutable file's pin"
        return Tier.CONSTITUTIONAL, "the evaluation"
    if section == "amendment":
        if len(p) >= 2 and p[1] == "ratifiers":
            return Tier.CONSTITUTIONAL, "the ratifier list"
        return Tier.CONSTITUTIONAL, "the amendment rules"
    if section in entrenched:
        return Tier.CONSTITUTIONAL, f"entrenched section {section}"
    if p[:2] in (("sandbox", "level"), ("sandbox", "allow_weaker")):
        return Tier.CONSTITUTIONAL, "the sandbox level"
    if p[:2] == ("gates", "rules"):
        return _gate_rule(c, parent)
    if p[:2] == ("scope", "hard_constraints"):
        if len(p) == 3 and old is ABSENT:
            return Tier.MINOR, "adds a hard constraint"
        return Tier.MAJOR, "removes or changes a hard constraint"
    if p[:2] == ("scope", "forbidden"):
        if isinstance(old, list) and isinstance(new, list) and set(new) >= set(old):
            return Tier.MINOR, "forbids more"
        return Tier.MAJOR, "forbids less"
    if p[:2] in NARROWER_IF_SUBSET:
        if isinstance(old, list) and isinstance(new, list) and set(new) <= set(old):
            return Tier.MINOR, f"narrows {p[1]}"
        return Tier.MAJOR, f"widens {p[1]}"
    if p == ("proposer", "network"):
        return (Tier.MINOR, "takes the agent's network away") if new is False else (Tier.MAJOR, "gives the agent the network")
    if p == ("proposer", "seed"):
        return Tier.MINOR, "the offline search's seed"
    if _number(old) and _number(new):
        if _starts(p, LOOSER_IF_HIGHER) and p[:3] not in (("budgets", "experiment", "cpu_threads"),):
            return (Tier.MAJOR, "loosens a limit") if new > old else (Tier.MINOR, "tightens a limit")
        if _starts(p, TIGHTER_IF_HIGHER):
            return (Tier.MINOR, "tightens a threshold") if new > old else (Tier.MAJOR, "loosens a threshold")
    return Tier.MAJOR, "a change with no known direction counts as loosening"


def _gate_rule(c: Change, parent: dict[str, Any]) -> tuple[Tier, str]:
    p, old, new = c.path, c.old, c.new
    if len(p) == 3:  # a whole rule added or removed
        return (Tier.MINOR, "adds a gate rule") if old is ABSENT else (Tier.MAJOR, "removes a gate rule")
    index, field = p[2], p[3]
    rules = parent.get("gates", {}).get("rules", [])
    rule = rules[index] if isinstance(index, int) and index < len(rules) else {}
    if field == "threshold" and _number(old) and _number(new):
        op = rule.get("op")
        if op in (">=", ">"):  # fires when the metric reaches the threshold: lower fires sooner
            return (Tier.MINOR, "a gate rule fires sooner") if new < old else (Tier.MAJOR, "a gate rule fires later")
        if op in ("<=", "<"):
            return (Tier.MINOR, "a gate rule fires sooner") if new > old else (Tier.MAJOR, "a gate rule fires later")
    if field == "window" and _number(old) and _number(new) and rule.get("metric") in COUNTING_METRICS:
        return (Tier.MINOR, "a gate rule counts over more experiments") if new > old else (Tier.MAJOR, "a gate rule counts over fewer experiments")
    if field == "target":
        try:
            up = GATE_SEVERITY[GateState(new)] > GATE_SEVERITY[GateState(old)]
        except (ValueError, TypeError):
            up = False
        return (Tier.MINOR, "a gate rule escalates further") if up else (Tier.MAJOR, "a gate rule escalates less")
    return Tier.MAJOR, "changes a gate rule"
