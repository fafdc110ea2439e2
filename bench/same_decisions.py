"""The same proposals, the same decisions: a queue of six edits through two trees of Charter.

A change that makes experiments cheaper (issue 15) must not change what they decide. This builds a
lab from each tree (the code at --before, checked out as a git worktree, and this checkout: each
tree's own template, constitution and evaluator, one data cache), queues the same six edits of
train.py's constants in each (written from that lab's own train.py, so they are the same change
on either baseline), runs one session of each with `charter run --proposer queue` (the trees one
after the other, in --order), and prints the decisions and val_bpb side by side, with each
proposal's gain over its session's baseline, its own runs and their median optimizer steps, and
the decision's margin (improvement minus the bar it had to clear). Each session's lab is printed;
nothing is reused.

A change that trains more steps in the same budget changes what an edit is worth (the gains of a
larger learning rate shrink with longer training), so a decision may move for that reason alone.
`--after-seconds` gives the after tree its own budget: the one at which its steps match the before
tree's separates the two (the steps columns show how close they came).

    python bench/same_decisions.py --before REV [--order before,after] [--training-seconds 60]
                                   [--after-seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from hardening_cost import SETUP  # a lab from a tree's template with the budget set, prepared

REPO = Path(__file__).resolve().parents[1]

# (queue entry name, description, {constant: new value}): two clear gains, two clear losses, one
# small change and one the keep rule has to weigh (measured effects at 60 s in docs/benchmarks.md)
PROPOSALS = (
    ("001-lr-x2", "learning rate 3e-3 -> 6e-3", {"LEARNING_RATE": "6e-3"}),
    ("002-lr-third", "learning rate 3e-3 -> 1e-3", {"LEARNING_RATE": "1e-3"}),
    ("003-batch-half", "batch 32 x 256 -> 16 x 256 tokens", {"DEVICE_BATCH_SIZE": "16", "TOTAL_BATCH_SIZE": "4096"}),
    ("004-warmdown", "warm-down 0.1 -> 0.3 of the budget", {"WARMDOWN_RATIO": "0.3"}),
    ("005-wide", "model width 128 -> 256", {"MODEL_DIM": "256"}),
    ("006-depth-1", "depth 2 -> 1", {"DEPTH": "1"}),
)

READ = r"""
import json, sys
from ledger.query import open_readonly
from controller.workspace.lab import find_lab
con = open_readonly(find_lab(sys.argv[1]).ledger_path)
rows = con.execute('''
    SELECT x.experiment, x.source, x.decision, x.val_bpb, x.improvement, x.threshold, x.runs,
           (SELECT median(CAST(json_extract(e.body, '$.payload.stats.steps') AS DOUBLE)) FROM events e
            WHERE e.kind = 'training_finished' AND e.session = x.session AND e.experiment = x.experiment
              AND coalesce(CAST(json_extract(e.body, '$.payload.run') AS INTEGER), 1) > 0) AS steps
    FROM experiments x ORDER BY x.experiment''').fetchall()
keys = ("experiment", "source", "decision", "val_bpb", "improvement", "threshold", "runs", "steps")
print(json.dumps([dict(zip(keys, row)) for row in rows]))
"""


def in_tree(tree: Path, args: list[str], code: str | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "controller.cli", *args]
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or str(proc.returncode)).splitlines()[-1]
        raise SystemExit(f"{tree}: {tail}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def write_queue(lab: Path, queue: Path) -> None:
    """Each proposal as a folder entry holding the lab's train.py with its constants changed."""
    base = (lab / "train.py").read_text()
    for name, description, constants in PROPOSALS:
        text = base
        for key, value in constants.items():
            text, n = re.subn(rf"^{key} = [^#\n]+", f"{key} = {value} ", text, flags=re.M)
            assert n == 1, (name, key)
        entry = queue / name
        entry.mkdir(parents=True)
        (entry / "train.py").write_text(text)
        (entry / "description.txt").write_text(description + "\n")


def session(tree: Path, work: Path, training_seconds: str) -> list[dict]:
    lab, queue = work / "lab", work / "queue"
    in_tree(tree, [str(lab), training_seconds], SETUP)
    write_queue(lab, queue)
    print(f"{tree.name}: lab {lab}", flush=True)
    in_tree(tree, ["run", "--lab", str(lab), "--proposer", "queue", "--queue", str(queue), "--quiet", "--tag", "same"])
    return json.loads(in_tree(tree, [str(lab)], READ))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the code before the change")
    ap.add_argument("--order", default="before,after", help="which tree's session runs first")
    ap.add_argument("--training-seconds", default="60")
    ap.add_argument("--after-seconds", help="the after tree's budget (default: --training-seconds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="charter-same-"))
    before = work / "before-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                   capture_output=True)
    try:
        trees = {"before": before, "after": REPO}
        seconds = {"before": args.training_seconds, "after": args.after_seconds or args.training_seconds}
        found = {name: session(trees[name], work / name, seconds[name]) for name in args.order.split(",")}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    rows = []
    for side in ("before", "after"):
        base = next((r["val_bpb"] for r in found[side] if r["decision"] == "baseline"), None)
        for r in found[side]:
            r["gain"] = None if base is None or r["val_bpb"] is None else base - r["val_bpb"]

    def pick(side: str, name: str) -> dict:
        if name == "baseline":
            return next((r for r in found[side] if r["decision"] == "baseline"), {})
        return next((r for r in found[side] if r["source"] == f"queue:{name}"), {})

    for name, description, _ in (("baseline", "baseline", None),) + PROPOSALS:
        b, a = pick("before", name), pick("after", name)
        rows.append(dict(proposal=description, before=b, after=a, same=b.get("decision") == a.get("decision")))
    if args.json:
        print(json.dumps(rows, indent=1))
        return

    def f(v, spec=".4f"):
        return "–" if v is None else format(v, spec)

    def margin(r):  # how far the decision's improvement was past the bar it had to clear
        i, t = r.get("improvement"), r.get("threshold")
        return None if i is None or t is None else i - t
    print(f"budgets: before {seconds['before']} s, after {seconds['after']} s")
    print("| proposal | decision before | decision after | val_bpb before | val_bpb after | gain before | gain after "
          "| runs before | runs after | steps before | steps after | margin before | margin after |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"| {r['proposal']} | {b.get('decision')} | {a.get('decision')} | {f(b.get('val_bpb'))} | "
              f"{f(a.get('val_bpb'))} | {f(b.get('gain'))} | {f(a.get('gain'))} | {f(b.get('runs'), 'd')} | "
              f"{f(a.get('runs'), 'd')} | {f(b.get('steps'), '.0f')} | {f(a.get('steps'), '.0f')} | "
              f"{f(margin(b), '+.4f')} | {f(margin(a), '+.4f')} |")
    same = sum(r["same"] for r in rows)
    print(f"same decision: {same} of {len(rows)}")


if __name__ == "__main__":
    main()
