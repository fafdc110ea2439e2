"""What the integrity hardening costs per experiment, side by side with the previous code.

The hardening (issue 10) adds a fresh probe worker to every evaluation, an allow-list sandbox with
an unprivileged uid and a cgroup, and a per-run compile cache. This builds a lab from each of two
trees (this checkout, and the code at --before, checked out as a git worktree), and runs the same
experiment (the lab's baseline commit, the same data cache) through each tree's own `Runner`,
interleaved, `--repeats` times. Per run it takes the wall seconds of training and of evaluation,
and the seconds of timed training steps the trainer reports; the overhead of a run is everything
else (start-up, compile, saving, evaluation). It prints the medians, the spread, and the added
seconds per experiment (median of after - before).

    python bench/hardening_cost.py [--before REV] [--repeats 3] [--training-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside one tree (sys.path[0] = that tree): one Runner job on the lab's head, as JSON.
DRIVER = r"""
import json, sys, time
from pathlib import Path
from controller.workspace.lab import find_lab
from controller.execution import sandbox
from controller.execution.runner import Job, Runner, verify_data
lab = find_lab(sys.argv[1]); rules = lab.load_constitution(); level = sandbox.detect_level()[0]
data = verify_data(lab.root, rules)
run_dir = lab.runs_dir / "bench" / f"{time.time_ns()}"
out = Runner(lab.state_dir, rules, level).run(Job(0, 1, lab.git.head(), lab.root, run_dir), data)
print(json.dumps({"status": out.status, "reason": out.reason, "train": out.train.wall_seconds,
                  "eval": out.evaluation.wall_seconds if out.evaluation else None,
                  "trained": out.stats.get("training_seconds"), "steps": out.stats.get("steps"),
                  "val_bpb": out.val_bpb, "level": level}))
"""

SETUP = r"""
import re, sys
from pathlib import Path
from controller.workspace.lab import init_lab
from controller.workspace.preparation import prepare_lab
lab = init_lab(Path(sys.argv[1]))
text = lab.constitution_path.read_text()
text = re.sub(r"^training_seconds = \S+", f"training_seconds = {sys.argv[2]}", text, flags=re.M)
lab.constitution_path.write_text(text)
lab.git.commit_all("bench: training budget")
prepare_lab(lab, quiet=True)
"""


def in_tree(tree: Path, code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="645581c", help="the code before the hardening (a git revision)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--training-seconds", type=float, default=20.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="charter-hardening-"))
    before = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                   capture_output=True)
    trees = {"before": before, "after": REPO}
    try:
        labs = {}
        for name, tree in trees.items():
            labs[name] = work / f"lab-{name}"
            in_tree(tree, SETUP, str(labs[name]), f"{args.training_seconds:g}")
        for name, tree in trees.items():  # one uncounted run each: the old code's steady state has a warm cache
            in_tree(tree, DRIVER, str(labs[name]))
        rows: dict[str, list[dict]] = {name: [] for name in trees}
        for i in range(args.repeats):
            for name in (list(trees) if i % 2 == 0 else list(reversed(trees))):  # interleaved, alternating
                r = json.loads(in_tree(trees[name], DRIVER, str(labs[name])))
                r["overhead"] = r["train"] + (r["eval"] or 0) - (r["trained"] or 0)
                rows[name].append(r)
                print(f"  {name} run {i + 1}: {r}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)

    def cell(name: str, key: str) -> str:
        vals = [r[key] for r in rows[name] if r[key] is not None]
        return f"{statistics.median(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]" if vals else "-"

    print(f"\n{args.repeats} interleaved runs per tree, training_seconds = {args.training_seconds:g} (median [min, max])")
    print("| code | train wall s | eval wall s | timed training s | steps | overhead s | val_bpb |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in trees:
        print(f"| {name} | " + " | ".join(cell(name, k) for k in ("train", "eval", "trained", "steps", "overhead", "val_bpb")) + " |")
    added = [a["overhead"] - b["overhead"] for a, b in zip(rows["after"], rows["before"])]
    print(f"\nadded per experiment: median {statistics.median(added):+.2f} s [{min(added):+.2f}, {max(added):+.2f}]")


if __name__ == "__main__":
    main()
