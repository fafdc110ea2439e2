"""Does the keep rule keep what truly helps, and only that? Measured on this machine, end to end.

Every part runs real governed sessions (or the real `Runner`) on a fresh lab prepared with the
shipped defaults, so the figures include everything the controller does: the sandbox, the
trusted evaluator, the baseline repeats, the noise pooling, the confirmation runs.

- `premeasure`: each candidate change in CANDIDATES and the baseline, run `--repeats` times in
  interleaved rounds through the `Runner`; prints each change's mean effect and its standard error.
  Changes that helped (mean effect below 0, more than one standard error) go into `keeps`.
- `keeps`: one session whose proposer hands out, in a fixed order, NULLS (changes that cannot
  alter the model: a comment, a renamed local, an inert constant...) and the changes premeasure
  found to help, each applied to the current incumbent's train.py. False keeps are nulls kept
  (with a 95% Clopper-Pearson interval on the rate); true keeps are helpful changes kept. It also
  reports experiments per hour with the new rule and what the old rule (one run each, a fixed
  0.01 bar, one baseline run) would have spent on the same runs.
- `power`: each change premeasure found to help, decided by its own session on a fresh lab
  against the baseline it was premeasured against (a baseline, then that one change): true keeps
  are the share kept. In `keeps` a helpful change meets the incumbent of the moment, which after
  one keep is no longer the commit its effect was measured on.
- `survival`: an offline-proposer session of `--hours`, then every kept change re-run against
  its parent, `--repeats` runs each, interleaved: the share still better, and the session's
  confirmed gain (its best commit against the baseline commit, re-run the same way).
- `clock`: `bench/clock.py` (wall vs cpu clock under a competing load).

    python bench/decision_quality.py [--parts premeasure,keeps,power]   # the default: about 2 hours here
    python bench/decision_quality.py --parts survival                   # about 1.5 hours more [--repeats 3] [--hours 1] [--seconds 60]

Results also go to --out (JSON), so `keeps` can reuse an earlier `premeasure` (--premeasured FILE).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.execution import sandbox  # noqa: E402
from controller.execution.runner import Job, Runner, verify_data  # noqa: E402
from controller.proposers import Proposal, ProposalContext  # noqa: E402
from controller.proposers.offline import OfflineProposer, apply_values, parse_constants  # noqa: E402
from controller.session.loop import Session  # noqa: E402
from controller.workspace.lab import Lab, init_lab  # noqa: E402
from controller.workspace.preparation import prepare_lab  # noqa: E402
from ledger.query import open_readonly  # noqa: E402


# -- the changes ---------------------------------------------------------------------------------

def _sub(pattern: str, repl: str, count: int = 1) -> Callable[[str], str]:
    def edit(text: str) -> str:
        new, n = re.subn(pattern, repl, text, count=count, flags=re.M)
        if n == 0:
            raise ValueError(f"pattern not found: {pattern}")
        return new
    return edit


def _scale(**factors: float) -> Callable[[str], str]:
    def edit(text: str) -> str:
        consts = parse_constants(text)
        return apply_values(text, consts, {k: consts[k].value * f for k, f in factors.items()})
    return edit


def _set(**values: float) -> Callable[[str], str]:
    def edit(text: str) -> str:
        return apply_values(text, parse_constants(text), values)
    return edit


# Changes that cannot alter the model or its training (each is a real diff the harm test passes).
NULLS: dict[str, Callable[[str], str]] = {
    "a comment": _sub(r"^(# Hyperparameters: edit these directly, no CLI flags)$", r"\1\n# (tuned on a 2-core CPU)"),
    "a renamed local": _sub(r"\btokens_per_micro\b", "micro_tokens", count=0),
    "a docstring sentence": _sub(r"^(Importing this file must not train: .*)$", r"\1 It is plain PyTorch."),
    "blank lines": _sub(r"^(def lr_multiplier)", r"\n\n\1"),
    "an inert constant": _sub(r"^(SEED = .*)$", r"\1\nUNUSED_RATIO = 0.5        # read by nothing"),
    "a type annotation": _sub(r"^def lr_multiplier\(progress\):", "def lr_multiplier(progress: float) -> float:"),
    "an always-true assert": _sub(r"^(    grad_accum = .*)$", r"\1\n    assert grad_accum >= 1"),
    "a renamed function": _sub(r"\bapply_rotary\b", "rotate_half_pairs", count=0),
    "os.getcwd() called": _sub(r"^(    run_dir = os.environ.get.*)$", r"\1\n    _here = os.getcwd()"),
    # moves the random stream (another initialization), so it is only as null as seed noise is
    "a random draw before init": _sub(r"^(    torch.manual_seed\(seed\))$", r"\1\n    _ = torch.rand(1)"),
}

# Changes that may help at 60 s on this CPU: premeasure decides which do.
CANDIDATES: dict[str, Callable[[str], str]] = {
    "batch halved": _scale(DEVICE_BATCH_SIZE=0.5, TOTAL_BATCH_SIZE=0.5),
    "warm-down 0.3": _set(WARMDOWN_RATIO=0.3),
    "learning rate x2": _scale(LEARNING_RATE=2.0),
    "head dim 32": _set(HEAD_DIM=32),
    "adam beta2 0.99": _set(ADAM_BETA2=0.99),
    # absolute values: applied after "batch halved" or "learning rate x2" was kept, each goes one step further
    "batch quartered": _set(DEVICE_BATCH_SIZE=8, TOTAL_BATCH_SIZE=2048),
    "learning rate 9e-3": _set(LEARNING_RATE=9e-3),
    "batch eighth": _set(DEVICE_BATCH_SIZE=4, TOTAL_BATCH_SIZE=1024),
    "depth 1": _set(DEPTH=1),
    "no warm-down": _set(WARMDOWN_RATIO=0.0),
}


@dataclass
class Item:
    label: str
    kind: str  # "null" or "helps"
    edit: Callable[[str], str]


class ListProposer:
    """Hands out a fixed list of edits, each applied to the current incumbent's train.py."""

    name = "bench-list"

    def __init__(self, items: list[Item]):
        self.items = list(items)

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        if not self.items:
            return None
        item = self.items.pop(0)
        text = item.edit(ctx.files["train.py"])
        return Proposal(description=f"{item.kind}: {item.label}", files={"train.py": text.encode()},
                        source=f"bench:{item.kind}:{item.label}",
                        params={k: c.value for k, c in parse_constants(text).items()})


# -- labs, runs, statistics ------------------------------------------------------------------------

def make_lab(root: Path, seconds: float, wall_hours: float | None = None) -> Lab:
    lab = init_lab(root)
    text = lab.constitution_path.read_text()
    text = re.sub(r"^training_seconds = \S+", f"training_seconds = {seconds:g}", text, count=1, flags=re.M)
    if wall_hours is not None:
        text = re.sub(r"^wall_hours = \S+", f"wall_hours = {wall_hours:g}", text, count=1, flags=re.M)
        text = re.sub(r"^experiments = \S+", "experiments = 400", text, count=1, flags=re.M)
    lab.constitution_path.write_text(text)
    lab.git.commit_all("bench: budgets")
    prepare_lab(lab, quiet=True)
    return lab


def run_commit(lab: Lab, commit: str, tag: str, seed_offset: int) -> dict:
    """One train + evaluate of a commit through the real Runner, the lab's rules; repeat k of a
    commit draws seed offset k, as the session's repeats do."""
    git(lab, "checkout", "-q", "--detach", commit)
    rules = lab.load_constitution()
    out = Runner(lab.state_dir, rules, sandbox.detect_level()[0]).run(
        Job(0, 1, commit, lab.root, lab.runs_dir / "bench" / f"{tag}-{time.time_ns()}", seed_offset=seed_offset),
        verify_data(lab.root, rules))
    return {"status": out.status, "val_bpb": out.val_bpb, "steps": out.stats.get("steps"),
            "wall_s": out.train.wall_seconds + (out.evaluation.wall_seconds if out.evaluation else 0.0)}


def git(lab: Lab, *args: str) -> None:
    subprocess.run(["git", "-C", str(lab.root), *args], check=True, capture_output=True)


def commit_variant(lab: Lab, base: str, label: str, edit: Callable[[str], str]) -> str:
    git(lab, "checkout", "-q", "--detach", base)
    path = lab.root / "train.py"
    path.write_text(edit(path.read_text()))
    return lab.git.commit_all(f"bench: {label}")


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.inf)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k of n, by bisection on the binomial tail (no scipy)."""
    a = (1 - level) / 2

    def tail_ge(p: float) -> float:
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def solve(f, target: float) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(tail_ge, a)
    at_most_k = lambda p: 1 - tail_ge(p) + math.comb(n, k) * p ** k * (1 - p) ** (n - k)  # noqa: E731
    high = 1.0 if k == n else solve(lambda p: 1 - at_most_k(p), 1 - a)   # P(X <= k) = a, decreasing in p
    return low, high


def experiments(lab: Lab) -> list[dict]:
    con = open_readonly(lab.ledger_path)
    try:
        cols = ["session", "experiment", "decision", "source", "val_bpb", "improvement", "threshold", "noise_sd",
                "runs", "train_seconds", "eval_seconds", "parent_commit", "candidate_commit", "reason"]
        rows = con.execute(f"select {', '.join(cols)} from experiments order by seq").fetchall()
        return [dict(zip(cols, r)) for r in rows]
    finally:
        con.close()


# -- the parts -----------------------------------------------------------------------------------

def premeasure(work: Path, args, earlier: dict | None = None) -> dict:
    """Each candidate (or those named by --only) and the baseline, interleaved; results merge into
    an earlier premeasure (the baseline's runs pool)."""
    lab = make_lab(work / "premeasure-lab", args.seconds)
    base = lab.git.head()
    chosen = [c.strip() for c in args.only.split(",")] if args.only else list(CANDIDATES)
    commits = {"baseline": base} | {label: commit_variant(lab, base, label, CANDIDATES[label]) for label in chosen}
    runs: dict[str, list[float]] = {k: [] for k in commits}
    for r in range(args.repeats):
        for label, commit in commits.items():  # interleaved: a slow minute hits every variant alike
            out = run_commit(lab, commit, f"pre{r}", seed_offset=r)
            print(f"  round {r + 1} {label}: {out}", flush=True)
            if out["status"] == "ok":
                runs[label].append(out["val_bpb"])
    earlier = earlier or {"baseline": [], "changes": {}}
    b = list(earlier["baseline"]) + runs["baseline"]
    for label, c in earlier["changes"].items():
        runs.setdefault(label, list(c["runs"]))
    result = {"baseline": b, "changes": {}}
    print("\n| change | runs | mean val_bpb | effect vs baseline | se | helps |\n|---|---|---|---|---|---|")
    print(f"| baseline | {len(b)} | {statistics.fmean(b):.4f} | | | |")
    for label in CANDIDATES:
        if label not in runs:
            continue
        xs = runs[label]
        effect = statistics.fmean(xs) - statistics.fmean(b) if xs else math.nan
        se = math.sqrt(statistics.variance(xs) / len(xs) + statistics.variance(b) / len(b)) if len(xs) > 1 and len(b) > 1 else math.inf
        helps = effect < 0 and -effect > se
        result["changes"][label] = {"runs": xs, "effect": effect, "se": se, "helps": helps}
        print(f"| {label} | {len(xs)} | {statistics.fmean(xs):.4f} | {effect:+.4f} | {se:.4f} | {'yes' if helps else 'no'} |")
    return result


def keeps(work: Path, args, pre: dict) -> dict:
    helpful = [label for label, c in pre["changes"].items() if c["helps"]]
    nulls = list(NULLS)
    order: list[Item] = []
    # nulls first and between the helpful changes, so nulls are judged against several incumbents
    for i, label in enumerate(nulls):
        order.append(Item(label, "null", NULLS[label]))
        if i % 3 == 2 and helpful:
            h = helpful.pop(0)
            order.append(Item(h, "helps", CANDIDATES[h]))
    order += [Item(h, "helps", CANDIDATES[h]) for h in helpful]
    lab = make_lab(work / "keeps-lab", args.seconds)
    t0 = time.time()
    Session(lab, ListProposer(order), tag="bench-keeps").run()
    hours = (time.time() - t0) / 3600
    rows = experiments(lab)
    decided = [r for r in rows if (r["source"] or "").startswith("bench:")]
    null_rows = [r for r in decided if r["source"].startswith("bench:null")]
    help_rows = [r for r in decided if r["source"].startswith("bench:helps")]
    false_keeps = sum(r["decision"] == "keep" for r in null_rows)
    true_keeps = sum(r["decision"] == "keep" for r in help_rows)
    lo, hi = clopper_pearson(false_keeps, len(null_rows))
    base = next(r for r in rows if r["decision"] == "baseline")
    # the old rule on the same runs: one baseline run, one run per experiment
    run_s = [(r["train_seconds"] or 0) + (r["eval_seconds"] or 0) for r in rows]
    per_run = [(s / r["runs"]) for s, r in zip(run_s, rows) if r["runs"]]
    old_hours = (statistics.fmean(per_run) * len(rows)) / 3600 if per_run else math.nan
    result = {"nulls": len(null_rows), "false_keeps": false_keeps, "false_keep_ci": [lo, hi],
              "helpful": len(help_rows), "true_keeps": true_keeps, "experiments": len(rows),
              "runs": sum(r["runs"] or 0 for r in rows), "hours": hours,
              "per_hour_new": len(rows) / hours, "per_hour_old": len(rows) / old_hours if old_hours else math.nan,
              "baseline": {k: base[k] for k in ("val_bpb", "runs", "noise_sd", "reason")},
              "rows": [{k: r[k] for k in ("experiment", "decision", "source", "val_bpb", "improvement", "threshold", "runs")}
                       for r in decided]}
    print("\n| experiment | change | decision | runs | improvement | required |\n|---|---|---|---|---|---|")
    for r in decided:
        imp = "" if r["improvement"] is None else f"{r['improvement']:+.4f}"
        need = "" if r["threshold"] is None else f"{r['threshold']:.4f}"
        print(f"| {r['experiment']} | {r['source'].removeprefix('bench:')} | {r['decision']} | {r['runs']} | {imp} | {need} |")
    print(f"\nbaseline: {base['reason']}")
    print(f"false keeps: {false_keeps}/{len(null_rows)} (rate 95% CI [{lo:.2f}, {hi:.2f}]); "
          f"helpful changes kept against the incumbent of the moment: {true_keeps}/{len(help_rows)} "
          f"(true keeps against the commit each was measured on: the power part)")
    print(f"cost: {len(rows)} experiments ({result['runs']} runs) in {hours:.2f} h = {result['per_hour_new']:.1f}/h; "
          f"the old rule (one run each) would have run {result['per_hour_old']:.1f}/h on the same runs")
    return result


def power(work: Path, args, pre: dict) -> dict:
    """Each helpful change against the commit its effect was measured on: one fresh lab each."""
    helpful = [label for label, c in pre["changes"].items() if c["helps"]]
    rows_out = []
    t0 = time.time()
    for i, label in enumerate(helpful):
        lab = make_lab(work / f"power-lab-{i}", args.seconds)
        Session(lab, ListProposer([Item(label, "helps", CANDIDATES[label])]), tag=f"bench-power-{i}").run()
        rows = experiments(lab)
        base = next(r for r in rows if r["decision"] == "baseline")
        row = next(r for r in rows if (r["source"] or "").startswith("bench:helps"))
        rows_out.append({"label": label, "premeasured": pre["changes"][label]["effect"],
                         "baseline": base["val_bpb"], "baseline_runs": base["runs"]}
                        | {k: row[k] for k in ("decision", "runs", "improvement", "threshold", "reason")})
        print(f"  {label}: {row['decision']} ({row['runs']} runs) {row['reason']}", flush=True)
    kept = sum(r["decision"] == "keep" for r in rows_out)
    print("\n| change | effect premeasured | decision | runs | improvement | required |\n|---|---|---|---|---|---|")
    for r in rows_out:
        imp = "" if r["improvement"] is None else f"{r['improvement']:+.4f}"
        need = "" if r["threshold"] is None else f"{r['threshold']:.4f}"
        print(f"| {r['label']} | {r['premeasured']:+.4f} | {r['decision']} | {r['runs']} | {imp} | {need} |")
    print(f"\ntrue keeps: {kept}/{len(rows_out)} in {(time.time() - t0) / 3600:.2f} h")
    return {"true_keeps": kept, "helpful": len(rows_out), "rows": rows_out}


def survival(work: Path, args) -> dict:
    lab = make_lab(work / "survival-lab", args.seconds, wall_hours=args.hours)
    base_commit = lab.git.head()
    Session(lab, OfflineProposer(seed=0), tag="bench-survival").run()
    rows = experiments(lab)
    kept = [r for r in rows if r["decision"] == "keep"]
    best = kept[-1]["candidate_commit"] if kept else base_commit
    pairs = [(r["parent_commit"], r["candidate_commit"], r["source"]) for r in kept] + [(base_commit, best, "session gain")]
    # each commit once per repeat (a kept change's child is the next one's parent), interleaved
    commits = list(dict.fromkeys(c for parent, child, _ in pairs for c in (parent, child)))
    measured: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for commit in commits:
            # offsets past the session's own runs of these commits: fresh seeds, paired per repeat
            out = run_commit(lab, commit, f"surv{rep}", seed_offset=100 + rep)
            print(f"  re-run {rep + 1} {commit[:10]}: {out}", flush=True)
            if out["status"] == "ok":
                measured.setdefault(commit, []).append(out["val_bpb"])
    result = {"experiments": len(rows), "kept": len(kept), "pairs": []}
    print("\n| kept change | parent re-run | child re-run | gain | still better |\n|---|---|---|---|---|")
    still = 0
    for parent, child, label in pairs:
        p, c = statistics.fmean(measured.get(parent, [math.nan])), statistics.fmean(measured.get(child, [math.nan]))
        gain = p - c
        if label != "session gain":
            still += gain > 0
        result["pairs"].append({"label": label, "parent": p, "child": c, "gain": gain})
        print(f"| {label} | {p:.4f} | {c:.4f} | {gain:+.4f} | {'yes' if gain > 0 else 'no'} |")
    result["survival"] = still / len(kept) if kept else math.nan
    result["confirmed_gain"] = result["pairs"][-1]["gain"]
    print(f"\nsurvival: {still}/{len(kept)} kept changes still better; confirmed gain over the baseline "
          f"{result['confirmed_gain']:+.4f} bpb in {args.hours:g} h ({len(rows)} experiments)")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="premeasure,keeps,power", help="comma-separated: premeasure, keeps, power, survival, clock")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="training_seconds of every run")
    ap.add_argument("--hours", type=float, default=1.0, help="length of the survival session")
    ap.add_argument("--premeasured", help="a JSON file from an earlier run (its premeasure part)")
    ap.add_argument("--only", help="premeasure only these candidates (comma-separated labels), merged into --premeasured")
    ap.add_argument("--out", default=None, help="where to write the JSON results (default: a temp file)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    work = Path(tempfile.mkdtemp(prefix="charter-decisions-"))
    out = Path(args.out) if args.out else work / "results.json"
    results: dict = json.loads(Path(args.premeasured).read_text()) if args.premeasured else {}
    print(f"work dir {work}; results -> {out}", flush=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=str))

    for part in parts:
        print(f"\n## {part}", flush=True)
        if part == "premeasure":
            results["premeasure"] = premeasure(work, args, results.get("premeasure"))
        elif part == "keeps":
            if "premeasure" not in results:
                raise SystemExit("keeps needs premeasure first (run it in --parts, or pass --premeasured FILE)")
            results["keeps"] = keeps(work, args, results["premeasure"])
        elif part == "power":
            if "premeasure" not in results:
                raise SystemExit("power needs premeasure first (run it in --parts, or pass --premeasured FILE)")
            results["power"] = power(work, args, results["premeasure"])
        elif part == "survival":
            results["survival"] = survival(work, args)
        elif part == "clock":
            import runpy
            sys.argv = [str(REPO / "bench" / "clock.py"), "--rounds", str(args.repeats), "--seconds", f"{args.seconds:g}"]
            runpy.run_path(sys.argv[0], run_name="__main__")
        else:
            raise SystemExit(f"unknown part {part!r}: use premeasure, keeps, power, survival or clock")
        save()


if __name__ == "__main__":
    main()
