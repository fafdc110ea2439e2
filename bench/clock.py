"""What other work on the machine does to an experiment under each training clock.

The wall clock stops a run `training_seconds` after its sandbox starts, so a competing process
takes training away from it; the cpu clock stops it after `training_seconds` CPU seconds of its
tree per CPU it may use, so it should not. This runs the lab's baseline commit through the real
`Runner` (bubblewrap where it works, the trusted evaluator for val_bpb) in four conditions,
interleaved round by round: wall-quiet, cpu-quiet, wall-load, cpu-load, where "load" is one
process outside the sandbox burning a core for the whole run (training and evaluation). Per
condition it prints the median [min, max] of the steps trained, val_bpb, the training run's wall
seconds and the CPU seconds its tree got, as a markdown table for docs/benchmarks.md.

    python bench/clock.py [--rounds 3] [--seconds 60] [--lab DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution import sandbox  # noqa: E402
from controller.execution.runner import Job, Runner, verify_data  # noqa: E402
from labs import bench_lab  # noqa: E402

CONDITIONS = (("wall", False), ("cpu", False), ("wall", True), ("cpu", True))
KEYS = ("steps", "val_bpb", "wall_s", "cpu_s")


def with_clock(rules, clock: str, seconds: float):
    """The lab's rules with this clock and training budget (in memory: the lab's file is untouched)."""
    b = rules.budgets.experiment.model_copy(update={"clock": clock, "training_seconds": seconds})
    return rules.model_copy(update={"budgets": rules.budgets.model_copy(update={"experiment": b})})


def run_once(lab, rules, level: str, data: dict, run_dir: Path, load: bool) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) if load else None
    try:
        out = Runner(lab.state_dir, rules, level).run(Job(0, 1, lab.git.head(), lab.root, run_dir), data)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    t = out.train
    return {"status": out.status, "steps": out.stats.get("steps"), "val_bpb": out.val_bpb,
            "wall_s": t.wall_seconds, "cpu_s": t.cpu_seconds, "threads": t.cpu_threads, "stopped_by": t.stopped_by}


def cell(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return "-"
    fmt = ".4f" if key == "val_bpb" else ".0f" if key == "steps" else ".1f"
    return f"{statistics.median(vals):{fmt}} [{min(vals):{fmt}}, {max(vals):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="the training budget (training_seconds)")
    ap.add_argument("--lab", help="an existing prepared lab (default: a new one in a temp dir)")
    args = ap.parse_args()
    lab = bench_lab(args.lab, "charter-clock-")
    base = lab.load_constitution()
    level = sandbox.detect_level()[0]
    data = verify_data(lab.root, base)
    rows: dict[tuple[str, bool], list[dict]] = {c: [] for c in CONDITIONS}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(args.rounds):
        for clock, load in CONDITIONS:
            run_dir = lab.runs_dir / "bench-clock" / f"{stamp}-{i + 1}-{clock}-{'load' if load else 'quiet'}"
            r = run_once(lab, with_clock(base, clock, args.seconds), level, data, run_dir, load)
            rows[(clock, load)].append(r)
            print(f"  round {i + 1} {clock}-{'load' if load else 'quiet'}: {r}", flush=True)

    threads = {r["threads"] for rs in rows.values() for r in rs}
    print(f"\ntraining_seconds = {args.seconds:g}, {args.rounds} interleaved rounds, sandbox {level}, "
          f"{'/'.join(map(str, sorted(threads)))} CPU(s) per run of {os.cpu_count()}; "
          "load = one process outside the sandbox burning a core; median [min, max]")
    print("| clock | machine | steps | val_bpb | train wall s | train CPU s |")
    print("|---|---|---:|---:|---:|---:|")
    for (clock, load), rs in rows.items():
        bad = [r["status"] for r in rs if r["status"] != "ok"]
        note = f" ({len(bad)} not ok: {', '.join(bad)})" if bad else ""
        print(f"| {clock} | {'load' if load else 'quiet'}{note} | " + " | ".join(cell(rs, k) for k in KEYS) + " |")


if __name__ == "__main__":
    main()
