"""Run-to-run noise, measured: the pooled spread of repeated runs of the same commit.

Every commit the lab ran more than once under the same measurement setup (the evaluation, the
training budget and its clock) is a sample of the noise: its runs differ only by what the
machine did to them. Their variances pool across commits and sessions (the ledger keeps every
run), weighted by degrees of freedom. The constitution's `decision.noise_sd` is a prior worth
`noise_prior_df` degrees of freedom (a scaled-inverse-chi-square prior), so a lab with few
repeats leans on it and a lab with many repeats trusts its own measurements; and it is a floor:
measurements can raise the estimate, never lower it below `noise_sd`, because the repeats are
runs of agent-written code, and a train.py that ignores its seed offset makes its own repeats
identical (which would shrink the bar for every later decision). A lab whose noise is truly
lower (a GPU) lowers `noise_sd` by amendment. Pure: events or numbers in, an estimate out.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger import Decision, EventKind
from ledger.payloads import Decided

MEASURED = frozenset({Decision.BASELINE.value, Decision.KEEP.value, Decision.DISCARD.value})


@dataclass(frozen=True)
class NoiseEstimate:
    sd: float  # what the keep rule uses: the prior and the measurements pooled
    df: float  # its degrees of freedom (prior_df + measured_df)
    measured_sd: float | None  # the measurements alone (None: no commit was run twice yet)
    measured_df: int  # sum over commits of (runs - 1)
    commits: int  # commits with at least two runs

    def describe(self) -> str:
        measured = (f"measured {self.measured_sd:.4f} from {self.measured_df} df over {self.commits} commit(s)"
                    if self.measured_sd is not None else "no repeated runs measured yet")
        return f"noise sd {self.sd:.4f} ({self.df:g} df; {measured})"


def pooled(groups: Iterable[Sequence[float]]) -> tuple[float | None, int, int]:
    """(pooled sd, degrees of freedom, commits used) over groups of runs of one commit each."""
    ss, df, used = 0.0, 0, 0
    for runs in groups:
        runs = [r for r in runs if math.isfinite(r)]
        if len(runs) < 2:
            continue
        ss += statistics.variance(runs) * (len(runs) - 1)
        df += len(runs) - 1
        used += 1
    return (math.sqrt(ss / df) if df else None), df, used


def estimate(groups: Iterable[Sequence[float]], prior_sd: float, prior_df: float) -> NoiseEstimate:
    """The prior and the measured repeats pooled, s^2 = (v0 s0^2 + sum (n_i - 1) s_i^2) / (v0 + df),
    never below the prior's sd."""
    sd, df, used = pooled(groups)
    ss = prior_df * prior_sd ** 2 + (sd ** 2 * df if sd is not None else 0.0)
    total = prior_df + df
    combined = math.sqrt(ss / total) if total > 0 else prior_sd
    return NoiseEstimate(max(prior_sd, combined), total, sd, df, used)


def measurement_setup(rules: Any, workers: int = 1) -> str:
    """A short fingerprint of what makes two runs comparable: the evaluation section and the
    experiment's training budget and clock; with several workers, each run's devices too (a run
    on its worker's one CPU trains less than one on all of them). Gates, budgets per session, the
    proposer: not part of it."""
    dump = rules.model_dump(mode="json") if hasattr(rules, "model_dump") else dict(rules)
    b = dump.get("budgets", {}).get("experiment", {})
    key = {"evaluation": dump.get("evaluation"),
           "training": {k: b.get(k) for k in ("training_seconds", "clock", "cpu_threads")}}
    if workers > 1:  # a single worker's fingerprint stays what it always was
        key["training"]["devices_per_worker"] = dump.get("scale", {}).get("devices_per_worker", 1)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def runs_by_commit(events: Iterable[Any], setup: str) -> dict[str, list[float]]:
    """Every scored run of each commit under `setup`, from the decided events (oldest first).
    A decided event carries all its experiment's runs, and any runs of its incumbent made for it;
    events of another setup are left out."""
    out: dict[str, list[float]] = {}
    for e in events:
        if e.kind != EventKind.DECIDED or not e.commit_sha:
            continue
        p = Decided.from_json(e.payload)
        if p.setup != setup:
            continue
        if p.incumbent_commit:  # measured whatever became of the candidate
            out.setdefault(p.incumbent_commit, []).extend(float(r) for r in p.incumbent_added if isinstance(r, (int, float)))
        if str(e.decision) in MEASURED:
            out.setdefault(e.commit_sha, []).extend(float(r) for r in p.runs if isinstance(r, (int, float)))
    return out


def merge(into: Mapping[str, Sequence[float]], commit: str, runs: Sequence[float]) -> dict[str, list[float]]:
    """A copy of `into` with `runs` added to `commit`'s."""
    out = {k: list(v) for k, v in into.items()}
    out.setdefault(commit, []).extend(runs)
    return out
