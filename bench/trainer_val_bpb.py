"""
val_bpb of trainer/train.py's default config at the profile's time budget, over several seeds,
and the evaluation time as a share of the training budget. Uses the prepared cache
($CHARTER_CACHE_DIR or ~/.cache/charter; runs `prepare.py` first, idempotent).

    python bench/trainer_val_bpb.py [--seeds 3] [--budget 60]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "trainer"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: the profile's)")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.budget:
        env["CHARTER_TIME_BUDGET"] = str(args.budget)
    rows = []
    with tempfile.TemporaryDirectory(prefix="charter-bench-") as tmp:
        lab = Path(tmp)
        for name in ("prepare.py", "train.py"):
            shutil.copy(TRAINER / name, lab / name)
        subprocess.run([sys.executable, "prepare.py"], cwd=lab, env=env, check=True, capture_output=True)
        src = (lab / "train.py").read_text()
        print("| seed | steps | tokens/s | training s | val_bpb | eval s | eval / budget |\n|---|---|---|---|---|---|---|")
        for seed in range(1, args.seeds + 1):
            (lab / "train.py").write_text(re.sub(r"^SEED = \d+", f"SEED = {seed}", src, flags=re.M))
            run_dir = lab / f"run{seed}"
            subprocess.run([sys.executable, "train.py"], cwd=lab, env=dict(env, RUN_DIR=str(run_dir)),
                           check=True, capture_output=True)
            t0 = time.time()
            subprocess.run([sys.executable, "prepare.py", "evaluate", str(run_dir)], cwd=lab, env=env,
                           check=True, capture_output=True)
            wall = time.time() - t0
            stats = json.loads((run_dir / "stats.json").read_text())
            ev = json.loads((run_dir / "evaluation.json").read_text())
            budget = float(env.get("CHARTER_TIME_BUDGET", 60))
            rows.append((ev["val_bpb"], wall, budget))
            print(f"| {seed} | {stats['steps']} | {stats['tokens_per_second']:,.0f} | {stats['training_seconds']:.1f} "
                  f"| {ev['val_bpb']:.4f} | {wall:.1f} | {wall / budget:.1%} |", flush=True)
    bpbs = [r[0] for r in rows]
    sd = statistics.stdev(bpbs) if len(bpbs) > 1 else 0.0
    share = statistics.mean(r[1] / r[2] for r in rows)
    print(f"\nval_bpb mean {statistics.mean(bpbs):.4f}, sd {sd:.4f} over {len(bpbs)} seeds; "
          f"evaluation wall time {share:.1%} of the budget (command incl. process start-up)")


if __name__ == "__main__":
    main()
