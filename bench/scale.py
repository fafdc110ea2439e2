"""Experiments in flight at once (issue 17): experiments an hour by workers, and the controller's
own cost per experiment as workers grow.

`--part real`: sessions of the offline proposer on one prepared lab with a tiny training budget,
1 worker (the controller runs each run itself) and 2 (Ray tasks, one CPU each), alternated;
experiments an hour from each session's ledger (decided experiments over the session's wall time).

`--part sim`: the controller against many workers: a real local Ray cluster whose tasks sleep
instead of training and return a made-up score, and a proposer that costs nothing, so that
nothing but the controller's own steps (the harm test, worktrees, commits, the ledger, the keep
rule, gates) costs time. For 1, 8 and 32
workers: the controller's busy time per experiment (the session's wall time minus the time its
loop waited on Ray, over the experiments decided) and its share of the wall time.

    python bench/scale.py --part sim [--workers 1 8 32] [--sleep 2]
    python bench/scale.py --part real [--experiments 8] [--training-seconds 20] [--pairs 1] [--grace 15]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution import ray_pool  # noqa: E402
from controller.execution.runner import Job, RunOutcome  # noqa: E402
from controller.execution.sandbox import SandboxResult  # noqa: E402
from controller.proposers import Proposal, ProposerOptions, make_proposer  # noqa: E402
from controller.session import loop as loop_module  # noqa: E402
from controller.session.loop import Session  # noqa: E402
from controller.workspace.lab import init_lab  # noqa: E402
from controller.workspace.preparation import prepare_lab  # noqa: E402
from ledger import EventKind, Ledger  # noqa: E402


# the simulation measures the controller, not the gates: no cooldown between experiments (THROTTLE's
# wait would count as the controller's), no stagnation rule, room for every experiment asked for
SIM_RULES = {r"^cooldown_seconds = \S+": "cooldown_seconds = 0", r"^threshold = 15\b": "threshold = 100000",
             r"^experiments = 40 ": "experiments = 100000 ", r"^experiments = 400 ": "experiments = 100000 "}


def new_lab(root: Path, training_seconds: float, source: str | None, sim: bool = False, grace: float | None = None):
    lab = init_lab(root)
    text = lab.constitution_path.read_text()
    text = re.sub(r"^training_seconds = \S+", f"training_seconds = {training_seconds:g}", text, flags=re.M)
    if grace is not None:
        text = re.sub(r"^grace_seconds = \S+", f"grace_seconds = {grace:g}", text, count=1, flags=re.M)
    for pattern, value in (SIM_RULES.items() if sim else ()):
        text, n = re.subn(pattern, value, text, count=1, flags=re.M)
        assert n == 1, pattern
    lab.constitution_path.write_text(text)
    lab.git.commit_all("bench: training budget")
    prepare_lab(lab, quiet=True, source=source)
    return lab


def session_figures(lab, sid: str) -> dict:
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        evs = [e for e in led.events() if e.session == sid]
    start = [e for e in evs if e.kind == EventKind.SESSION_STARTED][0].ts
    end = [e for e in evs if e.kind == EventKind.SESSION_ENDED][0].ts
    wall = (end - start).total_seconds()
    decided = [e for e in evs if e.kind == EventKind.DECIDED and e.experiment > 0]
    return {"wall_s": wall, "experiments": len(decided), "per_hour": 3600 * len(decided) / wall,
            "keeps": sum(1 for e in decided if str(e.decision) == "keep")}


# -- the simulation: Ray tasks that sleep --------------------------------------------------------

def _sleep_job(job: Job, seconds: float) -> RunOutcome:
    """A stand-in for a run: sleeps, then a score drawn from the commit and run (no training)."""
    time.sleep(seconds)
    rng = random.Random(hashlib.sha256(f"{job.commit}:{job.run_index}".encode()).digest())
    t = SandboxResult(returncode=0, timed_out=False, memory_killed=False, wall_seconds=seconds, peak_rss_mb=1.0,
                      level="none", log_tail="", exit_seconds=seconds, started_monotonic=time.monotonic() - seconds)
    return RunOutcome("ok", "simulated", 2.0 + rng.gauss(0.0, 0.02), t, None, {"status": "ok"})


class SleepPool(ray_pool.RayPool):
    """A RayPool whose tasks sleep, on a local cluster with one logical CPU per worker, and that
    counts how long the controller waited on it."""

    def __init__(self, *args, sleep: float, **kw):
        super().__init__(*args, **kw)
        self.sleep, self.waited = sleep, 0.0
        self._sleep_task = self.ray.remote(max_retries=0)(_sleep_job)

    def submit(self, slot, job, data):
        ref = self._sleep_task.options(num_cpus=1).remote(job, self.sleep)
        sub = ray_pool.Submitted(ref, slot, job)
        self.pending[ref] = sub
        return sub

    def finished(self, timeout):
        t0 = time.monotonic()
        try:
            return super().finished(timeout)
        finally:
            self.waited += time.monotonic() - t0


class CountingProposer:
    """Proposes WEIGHT_DECAY = k * 1e-6 for k = 1, 2, ...: a new edit every time, and at no cost
    (the simulation measures the controller's steps, not a search, which runs out of ideas on
    made-up scores)."""

    name = "counting"

    def __init__(self):
        self.k = 0

    def propose(self, ctx):
        self.k += 1
        src = re.sub(r"^WEIGHT_DECAY = [^#\n]+", f"WEIGHT_DECAY = {self.k}e-6 ", ctx.files["train.py"], count=1,
                     flags=re.M)
        return Proposal(f"weight decay {self.k}e-6", files={"train.py": src.encode()}, source=f"sim:{self.k}")


class SimSession(Session):
    def __init__(self, *args, sleep: float, **kw):
        super().__init__(*args, **kw)
        self.sleep = sleep

    def check_integrity(self) -> dict:
        data = super().check_integrity()
        if self.pool is None:  # the parallel loop even for one worker, on sleeping tasks
            self.pool = SleepPool(self.lab.state_dir, self.rules, self.level, self.workers, sleep=self.sleep)
        return data


def simulate(lab, workers: int, experiments: int, sleep: float) -> dict:
    # sleeping tasks need no CPUs or memory of their own: the refusal of more workers than CPUs
    # is for real runs
    loop_module.ray_refusal = lambda scale, profile="cpu", memory_mb=0: None
    session = SimSession(lab, CountingProposer(), tag=f"sim{workers}-{int(time.time())}", max_experiments=experiments,
                         workers=workers, sleep=sleep)
    t0 = time.monotonic()
    summary = session.run()
    wall = time.monotonic() - t0
    pool = session.pool
    decided = summary["experiments"] + 1  # the baseline is decided too
    busy = wall - pool.waited
    return {"workers": workers, "experiments": decided, "wall_s": round(wall, 1), "waited_s": round(pool.waited, 1),
            "busy_per_experiment_s": round(busy / decided, 3), "busy_share": round(busy / wall, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["sim", "real"], required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds each simulated run sleeps")
    ap.add_argument("--experiments", type=int, default=None, help="per session (sim: 4 per worker, at least 16)")
    ap.add_argument("--training-seconds", type=float, default=20.0)
    ap.add_argument("--pairs", type=int, default=1, help="real: 1-worker / 2-worker sessions, alternated")
    # a run on one CPU of two finishes its last step and saves in 4-5 s: the default 5 s grace is
    # too tight for it (docs/scale.md)
    ap.add_argument("--grace", type=float, default=15.0, help="real: budgets.experiment.grace_seconds")
    ap.add_argument("--source", help="corpus for the lab's prepare (default: debian)")
    args = ap.parse_args(argv)
    lab = new_lab(Path(tempfile.mkdtemp(prefix="charter-scale-")) / "lab", args.training_seconds, args.source,
                  sim=args.part == "sim", grace=args.grace if args.part == "real" else None)
    print(f"lab: {lab.root}", flush=True)
    if args.part == "sim":
        rows = []
        for w in args.workers:
            n = args.experiments or max(16, 4 * w)
            rows.append(simulate(lab, w, n, args.sleep))
            print(rows[-1], flush=True)
        base = rows[0]["busy_per_experiment_s"]
        print("\n| workers | experiments | wall s | waited on Ray s | controller busy per experiment s | vs 1 worker | busy share |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['workers']} | {r['experiments']} | {r['wall_s']} | {r['waited_s']} | "
                  f"{r['busy_per_experiment_s']:.3f} | {r['busy_per_experiment_s'] / base:.2f}x | {r['busy_share']:.0%} |")
        return 0
    n = args.experiments or 8
    results: dict[int, list[dict]] = {1: [], 2: []}
    for pair in range(args.pairs):
        for w in (1, 2):
            rules = lab.load_constitution()
            proposer = make_proposer("offline", ProposerOptions(rules=rules, seed=100 * pair + w))
            s = Session(lab, proposer, tag=f"real{w}-{pair}-{int(time.time())}", max_experiments=n, workers=w)
            summary = s.run()
            fig = session_figures(lab, summary["session"])
            results[w].append(fig)
            print(f"workers {w}, pair {pair + 1}: {fig}", flush=True)
    print("\n| workers | sessions | experiments an hour, median [min, max] |")
    print("|---:|---:|---|")
    for w, figs in results.items():
        rates = [f["per_hour"] for f in figs]
        print(f"| {w} | {len(figs)} | {statistics.median(rates):.1f} [{min(rates):.1f}, {max(rates):.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
