"""How OpenMP's waiting threads change a cpu-clock budget: its wall time and the tokens it trains.

On the cpu clock a budget counts CPU seconds per CPU, so the wall time it lasts depends on how busy
the run keeps its cores. torch's OpenMP threads that wait between operators either sleep at once
(OMP_WAIT_POLICY=PASSIVE, what the runner sets), spin a bounded number of times first
(GOMP_SPINCOUNT=N), or spin without end (ACTIVE): spinning is charged, sleeping costs a wake-up.
This runs the lab's train.py by hand on the cpu clock, the way the controller starts it
(CHARTER_CPU_BUDGET, CHARTER_CPU_THREADS, the kept heap; no sandbox, so only the shipped
train.py, with a minimal environment, pinned to --threads CPUs), for each setting in
interleaved rounds, and prints per setting the median and spread of the budget's wall time, the
tokens trained, and the tokens per wall second and per counted second.

    python bench/omp_wait.py --lab DIR [--budget 20] [--rounds 3] [--settings PASSIVE,spin:10000,ACTIVE] [--load 1]

`--load N` keeps N busy-looping processes beside every run: the contention the cpu clock is for,
under which a spinning thread is charged for time its partner spent descheduled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution.runner import HEAP_REUSE  # noqa: E402
from controller.workspace.lab import template_files  # noqa: E402

KEPT = ("PATH", "LANG", "LC_ALL", "HOME", "XDG_CACHE_HOME", "CHARTER_CACHE_DIR")  # where prepare.py finds the data


def setting_env(setting: str) -> dict[str, str]:
    """PASSIVE / ACTIVE: OMP_WAIT_POLICY; spin:N: GOMP_SPINCOUNT=N with no policy."""
    if setting in ("PASSIVE", "ACTIVE"):
        return {"OMP_WAIT_POLICY": setting}
    if setting.startswith("spin:") and setting[5:].isdigit():
        return {"GOMP_SPINCOUNT": setting[5:]}
    raise SystemExit(f"omp_wait: unknown setting {setting!r} (PASSIVE, ACTIVE or spin:N)")


def run_once(lab: Path, budget: float, threads: int, setting: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="charter-omp-"))
    env = {k: v for k, v in os.environ.items() if k in KEPT}
    env.update(HEAP_REUSE)
    env.update(RUN_DIR=str(run_dir), CHARTER_PROFILE="cpu", HF_HUB_OFFLINE="1", TORCHINDUCTOR_CACHE_DIR=str(run_dir / "cache"),
               CHARTER_CPU_BUDGET=f"{budget:g}", CHARTER_CPU_THREADS=str(threads),
               CHARTER_DEADLINE=f"{time.time() + 3 * budget + 30:.3f}")
    env.update(setting_env(setting))
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, check=True, capture_output=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        return json.loads((run_dir / "stats.json").read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True)
    ap.add_argument("--budget", type=float, default=20.0, help="counted CPU seconds per CPU per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--settings", default="PASSIVE,spin:10000,spin:100000,ACTIVE")
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes beside every run")
    args = ap.parse_args()
    settings = args.settings.split(",")
    for s in settings:
        setting_env(s)
    lab = Path(args.lab).resolve()
    if (lab / "train.py").read_bytes() != template_files()["train.py"]:
        raise SystemExit(f"omp_wait: {lab / 'train.py'} is not the shipped one; this runs it unsandboxed, so only that")
    found: dict[str, list[dict]] = {s: [] for s in settings}
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        for i in range(args.rounds):
            # each round in another order, so no setting always runs first or after the same one
            order = settings[i % len(settings):] + settings[:i % len(settings)]
            for s in (order if i % 2 == 0 else order[::-1]):
                found[s].append(run_once(lab, args.budget, args.threads, s))
    finally:
        for p in load:
            p.kill()
            p.wait()
    print(f"{args.rounds} rounds of a {args.budget:g} s budget on the cpu clock ({args.threads} CPUs), by hand, "
          f"{args.load} busy process(es) beside")
    print("| setting | budget's wall s | tokens | tokens / wall s | tokens / counted s | CPU busy |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in settings:
        runs = found[s]
        wall = [r["total_seconds"] for r in runs]
        tokens = [r["tokens"] for r in runs]
        per_wall = [r["tokens"] / r["total_seconds"] for r in runs]
        per_counted = [r["tokens"] / (r["cpu_seconds"] / args.threads) for r in runs]
        busy = [r["cpu_seconds"] / args.threads / r["total_seconds"] for r in runs]
        print(f"| {s} | {spread(wall, '.1f')} | {spread(tokens, ',.0f')} | {spread(per_wall, ',.0f')} "
              f"| {spread(per_counted, ',.0f')} | {spread(busy, '.0%')} |")


if __name__ == "__main__":
    main()
