"""How many validation tokens an evaluation needs: the error fewer tokens add to a comparison, and
what each count costs.

The evaluator scores `eval_tokens` validation tokens, the same rows for every run. Two
runs compared on those rows differ by their true difference plus an error that depends on which
rows they are; the same rows every time make that error a fixed bias of the pair, which repeated
runs do not average away. This bench measures it on a session's own models: every scored run of
the session (default: the last) answers every validation row there is (through the evaluator's
own sandboxed model worker), and for each candidate count n the rows are cut into disjoint
subsets of n tokens, contiguous (what the evaluator scored before issue 15: its first n rows) or
spread (every k-th row, close to what it scores now): the spread across subsets of
a pair's bpb difference, root-mean-squared over pairs of different experiments, is the error n
tokens add to a comparison. Beside it, the time the real evaluator takes at n (`Runner.evaluate`,
interleaved over the counts, median and spread) on the session's first scored run. Read it
against the keep rule's noise floor (`decision.noise_sd`) and `decision.min_improvement`.

    python bench/eval_noise.py --lab DIR [--session ID] [--timing-repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution import sandbox  # noqa: E402
from controller.execution.runner import HEAP_REUSE, Runner, base_env, verify_data  # noqa: E402
from controller.execution.sandbox import SandboxSpec  # noqa: E402
from controller.workspace.lab import find_lab  # noqa: E402

COUNTS = (2**12, 2**13, 2**14, 2**15, 2**16, 2**17)
LAYOUTS = ("contiguous", "spread")


# -- pure ------------------------------------------------------------------------------------------

def subset_bpb(row_nats: np.ndarray, row_bytes: np.ndarray, rows_per_subset: int, layout: str) -> np.ndarray:
    """(models, subsets): bpb of each model on each disjoint subset of `rows_per_subset` rows, the rows
    cut into as many subsets as fit (the rest dropped): "contiguous" subsets are runs of consecutive
    rows (the evaluator's first n rows are one); "spread" subsets take every k-th row (subset j: rows
    j, j + k, j + 2k, ...), so each reaches across the whole split."""
    k = row_nats.shape[1] // rows_per_subset
    cut = k * rows_per_subset
    nats, nbytes = row_nats[:, :cut], row_bytes[:cut]
    if layout == "contiguous":
        nats, nbytes = nats.reshape(len(nats), k, rows_per_subset), nbytes.reshape(k, rows_per_subset)
    else:
        nats, nbytes = nats.reshape(len(nats), rows_per_subset, k).swapaxes(1, 2), nbytes.reshape(rows_per_subset, k).T
    return nats.sum(axis=2) / (math.log(2) * nbytes.sum(axis=1))


def comparison_error(row_nats: np.ndarray, row_bytes: np.ndarray, experiments: list[int],
                     rows_per_subset: int, layout: str = "contiguous") -> float | None:
    """RMS over pairs of models from different experiments of the sd across subsets of their bpb
    difference: the error scoring one such subset adds to a comparison. None with fewer than 2
    subsets or no such pair."""
    bpb = subset_bpb(row_nats, row_bytes, rows_per_subset, layout)
    if bpb.shape[1] < 2:
        return None
    sds = [float(np.std(bpb[a] - bpb[b], ddof=1))
           for a in range(len(experiments)) for b in range(a + 1, len(experiments))
           if experiments[a] != experiments[b]]
    return math.sqrt(statistics.fmean(s * s for s in sds)) if sds else None


def choose(errors: dict[int, float | None], noise_sd: float, share: float = 0.25) -> int | None:
    """The smallest count whose comparison error is at most `share` of the run-to-run noise floor
    (then the sd of a comparison grows by at most sqrt(1 + share^2) - 1: 3% at a quarter)."""
    ok = [n for n, e in sorted(errors.items()) if e is not None and e <= share * noise_sd]
    return ok[0] if ok else None


# -- IO --------------------------------------------------------------------------------------------

def load_prepare(lab_root: Path, env: dict[str, str]):
    """The lab's own (pinned) prepare.py as a module, with the constitution's constants in force."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("CHARTER_")})
    spec = importlib.util.spec_from_file_location("lab_prepare", lab_root / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scored_runs(runs_dir: Path) -> list[tuple[int, Path]]:
    """(experiment, run dir) of every run in a session's runs dir that the evaluator scored ok."""
    found = []
    for d in sorted(runs_dir.iterdir()):
        result = d.parent / f"{d.name}.eval" / "evaluation.json"
        if d.suffix == ".eval" or not result.is_file():
            continue
        try:
            if json.loads(result.read_text()).get("status") == "ok":
                found.append((int(d.name.split("-")[0]), d))
        except (ValueError, OSError):
            continue
    return found


def row_losses(prep, runner: Runner, work_dir: Path, run_dir: Path, data: dict, rows: np.ndarray,
               token_bytes: np.ndarray) -> np.ndarray:
    """Nats of every row, from the run's model in the evaluator's sandboxed worker (its model code
    is untrusted: it never runs in this process)."""
    if runner.level == "bubblewrap":
        spec = SandboxSpec(argv=[], cwd=work_dir, writable=[], readable=[run_dir], hidden=runner._hidden(data),
                           env=base_env(runner.rules) | {"HOME": "/tmp"}, timeout_s=600,
                           memory_mb=runner.rules.budgets.experiment.memory_hard_mb,
                           max_processes=runner.rules.sandbox.max_processes, max_file_mb=1)
        os.environ["EVAL_WORKER_PREFIX"] = sandbox.worker_prefix(spec)
    worker = prep._Worker("model worker")
    try:
        worker.send_model(prep.read_model_files(str(run_dir)))
        worker.wait_ready()
        vocab = len(token_bytes)
        nats = np.zeros(len(rows))
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            logits = worker.ask(batch[:, :-1], vocab).astype(np.float64)
            logits -= logits.max(axis=-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            targets = batch[:, 1:]
            nll = -np.take_along_axis(logp, targets[..., None].astype(np.int64), axis=-1)[..., 0]
            nats[start:start + len(batch)] = (nll * (token_bytes[targets] > 0)).sum(axis=1)
        return nats
    finally:
        worker.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True)
    ap.add_argument("--session", help="session id (default: the newest runs directory)")
    ap.add_argument("--timing-repeats", type=int, default=3, help="evaluator runs per count (0: no timing)")
    ap.add_argument("--cache", help="an .npz of every run's row losses: read if it exists, else written")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    lab = find_lab(str(Path(args.lab).resolve()))  # the sandbox binds real paths, never a link to them
    rules = lab.load_constitution()
    runs_root = lab.state_dir / "runs"
    runs_dir = runs_root / args.session if args.session else max(runs_root.iterdir(), key=lambda p: p.stat().st_mtime)
    runs = scored_runs(runs_dir)
    if len({e for e, _ in runs}) < 2:
        print(f"bench/eval_noise.py: {runs_dir} has scored runs of fewer than 2 experiments", file=sys.stderr)
        return 1
    data = verify_data(lab.root, rules)
    level, _ = sandbox.detect_level()
    runner = Runner(lab.state_dir, rules, level)
    prep = load_prepare(lab.root, base_env(rules))
    enc = prep.load_tokenizer()
    seq = prep.MAX_SEQ_LEN
    # every packed row of the split, in order (the evaluator's own selection would be strided)
    docs = prep._tokenize(enc, prep._read_split("val", prep.verify_data()))
    rows = np.stack(list(prep.pack_rows(docs, seq + 1, enc.bos_token_id)))
    token_bytes = prep.load_token_bytes().astype(np.int64)
    row_bytes = token_bytes[rows[:, 1:]].sum(axis=1)
    if args.cache and Path(args.cache).is_file():
        nats = np.load(args.cache)["nats"]
    else:
        os.environ.update(HEAP_REUSE)  # the workers' environment, as the runner gives it
        nats = np.stack([row_losses(prep, runner, lab.root, d, data, rows, token_bytes) for _, d in runs])
        # a worker's wrapper dies by SIGKILL at close: outside a sandboxed evaluator, nothing removes
        # its cgroup but the stale-group sweep (the wrappers' pids are gone now)
        where = sandbox._cgroup_parents()
        if where:
            sandbox._remove_stale(where[1].values(), "worker")
        if args.cache:
            np.savez(args.cache, nats=nats)
    experiments = [e for e, _ in runs]
    errors = {(n, layout): comparison_error(nats, row_bytes, experiments, n // seq, layout)
              for n in COUNTS for layout in LAYOUTS}
    timing: dict[int, list[float]] = {n: [] for n in COUNTS}
    for _ in range(args.timing_repeats):
        for n in COUNTS:
            r = Runner(lab.state_dir, rules.model_copy(update={"evaluation": rules.evaluation.model_copy(
                update={"eval_tokens": n})}), level)
            res, result = r.evaluate(lab.root, runs[0][1], data)
            if result.get("status") == "ok":
                timing[n].append(res.wall_seconds)
    noise_sd, floor = rules.decision.noise_sd, rules.decision.min_improvement
    chosen = {layout: choose({n: errors[n, layout] for n in COUNTS}, noise_sd) for layout in LAYOUTS}
    summary = dict(runs_dir=str(runs_dir), models=len(runs), experiments=len(set(experiments)),
                   validation_tokens=int(rows.shape[0] * seq), noise_sd=noise_sd, min_improvement=floor, chosen=chosen,
                   counts=[dict(eval_tokens=n, subsets=rows.shape[0] // (n // seq),
                                **{f"comparison_error_{layout}": errors[n, layout] for layout in LAYOUTS},
                                eval_seconds_median=statistics.median(timing[n]) if timing[n] else None,
                                eval_seconds_min=min(timing[n], default=None), eval_seconds_max=max(timing[n], default=None))
                           for n in COUNTS])
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0

    def err(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f} ({value / noise_sd:.0%})"
    print(f"{summary['models']} models of {summary['experiments']} experiments ({runs_dir.name}), every one on "
          f"{summary['validation_tokens']} validation tokens; noise floor {noise_sd}, min_improvement {floor}")
    print("| eval tokens | subsets | comparison error, contiguous rows (share of the noise floor) | "
          "comparison error, spread rows | evaluation s, median [min, max] |")
    print("|---:|---:|---:|---:|---|")
    for c in summary["counts"]:
        t = "–" if c["eval_seconds_median"] is None else \
            f"{c['eval_seconds_median']:.2f} [{c['eval_seconds_min']:.2f}, {c['eval_seconds_max']:.2f}]"
        print(f"| {c['eval_tokens']} | {c['subsets']} | {err(c['comparison_error_contiguous'])} | "
              f"{err(c['comparison_error_spread'])} | {t} |")
    print(f"smallest count within a quarter of the noise floor: contiguous {chosen['contiguous']}, spread {chosen['spread']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
