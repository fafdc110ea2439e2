"""What a per-run compile cache costs the trainer, now that start-up comes out of the budget.

No state may cross experiments (issue 10), so a run no longer warm-starts torch.compile from a
cache an earlier run wrote. This runs the shipped trainer under the controller's clock (a fixed
wall budget from process start, CHARTER_DEADLINE, as the runner sets it) in three ways,
interleaved: eager (no compile), compile with a cold per-run cache (what Charter does now), and
compile with a warm shared cache (what it did before, for reference). For each it reports the
overhead seconds (all but timed training steps), the steps and tokens trained in the budget and, unless --no-eval, val_bpb from
the trusted evaluator: medians and the spread over the repeats.

    python bench/compile_cache.py [--budget 60] [--repeats 2] [--no-eval] [--lab DIR]
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

from labs import bench_lab  # noqa: E402

MODES = ("eager", "compile-cold", "compile-warm")


def run_once(lab_root: Path, mode: str, budget: float, warm_cache: Path, evaluate: bool) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"charter-bench-{mode}-"))
    cache = warm_cache if mode == "compile-warm" else run_dir / ".compile-cache"
    env = dict(os.environ, RUN_DIR=str(run_dir), TORCHINDUCTOR_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
               CHARTER_TIME_BUDGET=f"{budget:g}")
    env.pop("CHARTER_NO_COMPILE", None)
    env["CHARTER_COMPILE"] = "0" if mode == "eager" else "1"
    if mode == "eager":
        env["CHARTER_NO_COMPILE"] = "1"
    t0 = time.time()
    env["CHARTER_DEADLINE"] = f"{t0 + budget:.3f}"  # the clock starts with the process, as in the sandbox
    subprocess.run([sys.executable, "train.py"], cwd=lab_root, env=env, check=True, capture_output=True)
    stats = json.loads((run_dir / "stats.json").read_text())
    wall = time.time() - t0
    # overhead: everything that is not a timed training step (imports, set-up, compile, saving)
    out = {"overhead": wall - stats["training_seconds"], "steps": stats["steps"], "tokens": stats["tokens"], "wall": wall}
    if evaluate:
        res = run_dir / "eval.json"
        subprocess.run([sys.executable, "prepare.py", "evaluate", str(run_dir), "--out", str(res)], cwd=lab_root,
                       env=env, check=True, capture_output=True)
        out["val_bpb"] = json.loads(res.read_text())["val_bpb"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60.0, help="wall seconds from process start (start-up included)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--lab", help="an existing prepared lab (default: a new one in a temp dir)")
    args = ap.parse_args()
    lab = bench_lab(args.lab, "charter-bench-")
    warm = Path(tempfile.mkdtemp(prefix="charter-bench-warm-"))
    run_once(lab.root, "compile-warm", min(args.budget, 40), warm, False)  # fill the shared cache once
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(args.repeats):
        for mode in MODES if i % 2 == 0 else reversed(MODES):  # interleaved, order alternating
            results[mode].append(run_once(lab.root, mode, args.budget, warm, not args.no_eval))
            print(f"  {mode} run {i + 1}: {results[mode][-1]}", flush=True)
    keys = ["overhead", "steps", "tokens"] + ([] if args.no_eval else ["val_bpb"])
    print(f"\nbudget {args.budget:g} s from process start, {args.repeats} interleaved runs each (median [min, max])")
    print("| mode | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for mode, rs in results.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in rs]
            cells.append(f"{statistics.median(vals):.4g} [{min(vals):.4g}, {max(vals):.4g}]")
        print(f"| {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
