"""The keep rule: does a candidate's val_bpb truly beat the incumbent's, given the noise?

Pure decision logic from the constitution's `decision` section. The incumbent's value is the mean
of all its runs; the candidate's is the mean of its runs. The improvement (incumbent - candidate,
lower val_bpb is better) must clear a one-sided t-test at `confidence`, with the measured noise
(`controller.policy.noise`) and the numbers of runs on both sides, and never less than
`min_improvement`. Screen, then confirm: a first run whose improvement, if it held, would clear
the bar after all the candidate's runs is promising and earns its confirmation runs; anything
less is discarded at once (after the first run or any later one), so runs are spent only where
they can pay. The same holds for the incumbent: the screen assumes it has `incumbent_runs` runs,
and a promising candidate first asks for the ones it lacks (at session start the baseline runs
once; its repeat is run only when a decision can depend on it). A keep is decided only on all the
runs of both sides, by that one test, so P(keep | no real gain) <= 1 - confidence (the earlier
looks only ever discard; while the incumbent's runs are still to come the screen's bar is lower
by what they may move its mean, `incumbent_slack`). THROTTLE asks for more runs.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist

from controller.policy.noise import NoiseEstimate


@dataclass(frozen=True)
class KeepRule:
    """The constitution's decision section, with the gate's demand folded in."""

    min_improvement: float
    confidence: float
    runs: int = 1  # 1 + confirmation runs: a candidate is kept only on all of them
    incumbent_runs: int = 1  # runs the incumbent has before a keep is decided against it


@dataclass(frozen=True)
class Evidence:
    incumbent_runs: tuple[float, ...]
    candidate_runs: tuple[float, ...]
    improvement: float  # mean(incumbent) - mean(candidate); positive = better
    threshold: float  # the improvement these runs had to show
    sd: float
    df: float
    confidence: float  # of the one-sided test


@dataclass(frozen=True)
class KeepVerdict:
    keep: bool
    need_more_runs: int  # > 0: run the candidate once more, then ask again
    reason: str
    evidence: Evidence
    need_incumbent_runs: int = 0  # > 0: run the incumbent once more first (it has fewer than rule.incumbent_runs)

    @property
    def improvement(self) -> float:
        return self.evidence.improvement


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (df = inf: the normal)."""
    if not 0.5 <= p < 1:
        raise ValueError("p must be in [0.5, 1)")
    if p == 0.5:
        return 0.0
    if math.isinf(df) or df > 1e6:
        return NormalDist().inv_cdf(p)
    if df <= 0:
        raise ValueError("df must be positive")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-10:  # bisection: the cdf is monotone
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _reg_inc_beta(df / 2, 0.5, x)
    return 1 - tail if t >= 0 else tail


def _reg_inc_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz), the usual way without scipy."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _reg_inc_beta(b, a, 1 - x)
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1 / d
        c = 1 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1 - c * d) < 1e-14:
            break
    return front * (f - 1) / a


def required_improvement(rule: KeepRule, noise: NoiseEstimate, incumbent_n: int, candidate_n: int) -> float:
    """The improvement a candidate with candidate_n runs must show over an incumbent with incumbent_n."""
    se = noise.sd * math.sqrt(1 / max(1, incumbent_n) + 1 / max(1, candidate_n))
    return max(rule.min_improvement, t_quantile(rule.confidence, noise.df) * se)


def incumbent_slack(noise: NoiseEstimate, n: int, short: int) -> float:
    """How far the screen's bar comes down while the incumbent has `n` of its runs and `short` to
    come: one sd of the shift those runs may bring its mean, (short / (n + short)) * sd *
    sqrt(1/short + 1/n). A candidate is discarded at once only if a repeat one sd in its favour
    would still leave it short of the bar; with it, screening against a once-run baseline keeps the
    power of a baseline run twice up front (simulated in tests/controller/test_keep_rule.py)."""
    if short <= 0:
        return 0.0
    return noise.sd * short / (n + short) * math.sqrt(1 / short + 1 / max(1, n))


def judge(incumbent_runs: list[float], candidate_runs: list[float], rule: KeepRule, noise: NoiseEstimate) -> KeepVerdict:
    """Decide on a candidate given both sides' val_bpb runs so far (lower is better)."""
    inc = tuple(r for r in incumbent_runs if math.isfinite(r))
    cand = tuple(candidate_runs)
    if not inc or not cand or any(not math.isfinite(r) for r in cand):
        ev = Evidence(inc, cand, 0.0, math.inf, noise.sd, noise.df, rule.confidence)
        return KeepVerdict(False, 0, "no finite val_bpb to compare", ev)
    inc_mean, cand_mean = statistics.fmean(inc), statistics.fmean(cand)
    improvement = inc_mean - cand_mean
    short = max(0, rule.incumbent_runs - len(inc))  # incumbent runs still to come
    final = len(cand) >= rule.runs and not short
    # the bar of the final test, with both sides' runs as they will be
    need = required_improvement(rule, noise, len(inc) + short, max(len(cand), rule.runs))
    screen = need - incumbent_slack(noise, len(inc), short)
    ev = Evidence(inc, cand, improvement, need, noise.sd, noise.df, rule.confidence)
    what = "its run" if len(cand) == 1 else f"the mean of its {len(cand)} runs"
    after = " and ".join(([f"{rule.runs} runs"] if len(cand) < rule.runs else [])
                         + ([f"{len(inc) + short} of the incumbent"] if short else []))
    now = f", {screen:.4f} before the incumbent's runs to come" if short else ""
    said = (f"{what} {cand_mean:.4f} vs the incumbent's {inc_mean:.4f} ({len(inc)} run{'s' * (len(inc) > 1)}): "
            f"improvement {improvement:+.4f}, required {need:.4f}{f' after {after}' if after else ''}{now} "
            f"({rule.confidence:.0%} one-sided, {noise.describe()}, min_improvement {rule.min_improvement:g})")
    if improvement < screen:
        return KeepVerdict(False, 0, f"discarded: {said}", ev)
    if short:
        return KeepVerdict(False, 0, f"promising: {said}; running the incumbent once more "
                                     f"(run {len(inc) + 1} of {len(inc) + short})", ev, need_incumbent_runs=1)
    if not final:
        return KeepVerdict(False, 1, f"promising: {said}; confirming (run {len(cand) + 1} of {rule.runs})", ev)
    return KeepVerdict(True, 0, f"kept: {said}", ev)
