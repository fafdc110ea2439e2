"""Governance overhead of the loop, measured from a real session's ledger.

Creates a lab (or uses --lab), runs a session with the offline proposer, then reads the ledger:
per experiment, the wall time from `proposed` to `decided` minus the time inside the training
and evaluation sandboxes is governance overhead (harm test, git, post-checks, ledger writes;
the proposer runs before `proposed` and is excluded). Also the share of the session's wall time
spent inside train + evaluate, and experiments per hour against the constitution's limit.

    python bench/governance_overhead.py --experiments 10                      # 60 s budget, compile on
    python bench/governance_overhead.py --experiments 5 --training-seconds 10 --source DIR
    python bench/governance_overhead.py --experiments 10 --clock wall        # the budget on the wall clock
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.workspace.lab import find_lab, init_lab  # noqa: E402
from controller.workspace.preparation import prepare_lab  # noqa: E402
from controller.proposers import ProposerOptions, make_proposer  # noqa: E402
from controller.session.loop import Session  # noqa: E402
from ledger import EventKind, Ledger, payloads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", help="existing prepared lab (default: a new one in a temp dir)")
    ap.add_argument("--experiments", type=int, default=10)
    ap.add_argument("--training-seconds", type=float, default=None, help="override budgets.experiment.training_seconds")
    ap.add_argument("--source", help="corpus for a new lab's prepare (default: debian)")
    ap.add_argument("--clock", choices=("cpu", "wall"), help="override budgets.experiment.clock of a new lab")
    ap.add_argument("--analyze", action="store_true", help="only analyze the latest session of --lab; run nothing")
    args = ap.parse_args()

    if args.analyze:
        lab = find_lab(args.lab)
        with Ledger.open(lab.ledger_path, read_only=True) as led:
            evs = led.events()
        started = [e for e in evs if e.kind == EventKind.SESSION_STARTED][-1]
        ended = [e for e in evs if e.kind == EventKind.SESSION_ENDED and e.session == started.session]
        summary = dict(ended[-1].payload, session=started.session)
        report(lab, summary, (ended[-1].ts - started.ts).total_seconds())
        return
    if args.lab:
        lab = find_lab(args.lab)
    else:
        lab = init_lab(Path(tempfile.mkdtemp(prefix="charter-bench-")) / "lab")
        text = lab.constitution_path.read_text()
        if args.training_seconds:
            text = re.sub(r"^training_seconds = \S+", f"training_seconds = {args.training_seconds:g}", text, flags=re.M)
        if args.clock:
            text, n = re.subn(r'^clock = "\w+"', f'clock = "{args.clock}"', text, flags=re.M)
            assert n == 1, "the shipped constitution sets budgets.experiment.clock once"
        if text != lab.constitution_path.read_text():
            lab.constitution_path.write_text(text)
            lab.git.commit_all("bench: training budget")
        prepare_lab(lab, quiet=True, source=args.source)
    rules = lab.load_constitution()
    t0 = time.time()
    summary = Session(lab, make_proposer("offline", ProposerOptions(rules, seed=rules.proposer.seed)), tag=f"bench{int(t0)}", max_experiments=args.experiments).run()
    report(lab, summary, time.time() - t0)


def report(lab, summary: dict, wall: float) -> None:
    rules = lab.load_constitution()
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        evs = [e for e in led.events() if e.session == summary["session"]]
    by_exp: dict[int, dict] = {}
    for e in evs:
        if e.experiment is None:
            continue
        d = by_exp.setdefault(e.experiment, {"sandbox": 0.0})
        if e.kind == EventKind.PROPOSED:
            d["proposed"] = e.ts
        elif e.kind == EventKind.TRAINING_FINISHED:
            d["sandbox"] += float(payloads.read(e).wall_seconds)
        elif e.kind == EventKind.EVALUATED:
            p = payloads.read(e)
            # an evaluator started early overlaps the run's saving: only its time from the release is its own
            released = p.evaluator_released_at is not None and p.scored_at is not None
            d["sandbox"] += (p.scored_at - p.evaluator_released_at) if released else float(p.wall_seconds)
        elif e.kind == EventKind.DECIDED:
            d["decided"], d["decision"] = e.ts, str(e.decision)
    overheads, sandbox_total = [], 0.0
    train_total = sum(float(payloads.read(e).wall_seconds) for e in evs if e.kind == EventKind.TRAINING_FINISHED)
    for n, d in sorted(by_exp.items()):
        sandbox_total += d["sandbox"]
        if "proposed" in d and "decided" in d and d["sandbox"] > 0:
            overheads.append((d["decided"] - d["proposed"]).total_seconds() - d["sandbox"])
    per_hour = 3600 * len(by_exp) / wall
    print(f"lab: {lab.root}  session: {summary['session']}  training_seconds: {rules.budgets.experiment.training_seconds:g}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| experiments run (incl. baseline) | {len(by_exp)} |")
    print(f"| governance overhead per experiment, median (max) | {statistics.median(overheads):.2f} s ({max(overheads):.2f} s) |")
    print(f"| session wall time | {wall:.0f} s |")
    print(f"| share of wall time inside train + evaluate | {100 * sandbox_total / wall:.1f}% |")
    print(f"| share of wall time inside the training sandbox alone | {100 * train_total / wall:.1f}% |")
    print(f"| experiments per hour (limit: {rules.budgets.session.experiments} per session, {rules.budgets.day.experiments} per day) | {per_hour:.1f} |")
    print(f"| keeps | {summary['keeps']} (val_bpb {summary['baseline_bpb']:.4f} -> {summary['best_bpb']:.4f}) |")
    compiled = {payloads.read(e).stats.get("compile") for e in evs if e.kind == EventKind.TRAINING_FINISHED}
    print(f"train.py compile (from its stats): {sorted(map(str, compiled))}")


if __name__ == "__main__":
    main()
