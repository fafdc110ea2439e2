"""The keep rule: does a candidate's val_bpb truly beat the current best?

Pure decision logic from the constitution's `decision` section (and THROTTLE's extra
confirmation runs). A candidate is kept only if the mean of its runs improves on the best by at
least `min_improvement`; with confirmation runs, the first run must already clear the bar before
more runs are spent on it. CPU noise (sd ~0.007 bpb at 60 s) is why the bar exists.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class KeepVerdict:
    keep: bool
    need_more_runs: int  # > 0: run the candidate this many more times, then ask again
    reason: str
    improvement: float  # best - mean(candidate runs); positive = better


def judge(best: float, runs: list[float], min_improvement: float, confirmation_runs: int, noise_sd: float = 0.0) -> KeepVerdict:
    """Decide on a candidate given its val_bpb runs so far (lower is better)."""
    if not runs or any(not math.isfinite(r) for r in runs):
        return KeepVerdict(False, 0, "no finite val_bpb", 0.0)
    mean = statistics.fmean(runs)
    improvement = best - mean
    bar = f"{improvement:+.4f} vs required {min_improvement:.4f}"
    noise = f", {improvement / noise_sd:.1f} sd" if noise_sd > 0 else ""
    if improvement < min_improvement or improvement <= 0:
        what = "first run" if len(runs) == 1 else f"mean of {len(runs)} runs"
        return KeepVerdict(False, 0, f"{what} {mean:.4f} does not beat best {best:.4f} by enough ({bar}{noise})", improvement)
    wanted = 1 + confirmation_runs
    if len(runs) < wanted:
        return KeepVerdict(False, wanted - len(runs), f"promising ({bar}); confirming with {wanted - len(runs)} more run(s)", improvement)
    what = "run" if len(runs) == 1 else f"mean of {len(runs)} runs"
    return KeepVerdict(True, 0, f"{what} {mean:.4f} beats best {best:.4f} ({bar}{noise})", improvement)
