"""Running one training and one evaluation of a lab commit, each in its own sandbox.

Training sees the lab read-only, writes only its run directory and a compile cache, cannot see
validation data or Charter's state, and is killed at training budget + grace by the controller.
The trusted evaluator (the lab's immutable prepare.py) sees validation data but writes only its
result file; the untrusted model code it loads runs in a nested sandbox that cannot see
validation data either (EVAL_WORKER_PREFIX). The metric is read from the evaluator's result,
never from anything training printed.
"""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from constitution import Constitution
from controller.execution import sandbox
from controller.execution.sandbox import SandboxResult, SandboxSpec


class PrepareError(Exception):
    """The lab's data or tokenizer is missing or does not verify."""


def python_argv(argv: list[str]) -> list[str]:
    """Run a constitution's `python ...` command with this interpreter (it has the trainer's packages)."""
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return list(argv)


def cache_dir() -> Path:
    return Path(os.environ.get("CHARTER_CACHE_DIR") or Path.home() / ".cache" / "charter").absolute()


def base_env(rules: Constitution) -> dict[str, str]:
    env = sandbox.minimal_env(Path("/tmp"), {
        "CHARTER_CACHE_DIR": str(cache_dir()),
        "CHARTER_PROFILE": rules.evaluation.profile,
        "CHARTER_TIME_BUDGET": f"{rules.budgets.experiment.training_seconds:g}",
        "CHARTER_EVAL_TOKENS": str(rules.evaluation.eval_tokens),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    # operator knobs passed through: thread counts, BLAS quirks, eager mode for slow machines
    for key in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CHARTER_NO_COMPILE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def verify_data(lab_root: Path, rules: Constitution) -> dict:
    """Run the lab's own (pinned) `prepare.py verify --json`; the cached artifacts' hashes."""
    env = dict(os.environ, **{k: v for k, v in base_env(rules).items() if k.startswith("CHARTER_")})
    proc = subprocess.run(
        [sys.executable, "prepare.py", "verify", "--json"], cwd=lab_root, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip() or "prepare.py verify failed").splitlines()[-1]
        raise PrepareError(why)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise PrepareError("prepare.py verify --json printed no JSON") from None


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "ok", "crash", "timeout"
    reason: str
    val_bpb: float | None
    train: SandboxResult
    evaluation: SandboxResult | None
    eval_result: dict
    integrity_failure: bool = False


class Runner:
    def __init__(self, lab_root: Path, state_dir: Path, rules: Constitution, level: str):
        self.lab_root = lab_root
        self.state_dir = state_dir
        self.rules = rules
        self.level = level
        self.compile_cache = state_dir / "compile-cache"

    def _hidden(self, data: dict) -> list[Path]:
        # validation data and Charter's own state (ledger, socket) are invisible to untrusted code;
        # the run dir and compile cache inside .charter/ are bound back by the sandbox
        return [Path(data["val_dir"]), self.state_dir]

    def train(self, run_dir: Path, data: dict, on_start: Callable[[int], None] | None = None) -> SandboxResult:
        b = self.rules.budgets.experiment
        run_dir.mkdir(parents=True, exist_ok=True)
        self.compile_cache.mkdir(parents=True, exist_ok=True)
        env = base_env(self.rules) | {
            "RUN_DIR": str(run_dir),
            "HOME": str(run_dir),
            "TORCHINDUCTOR_CACHE_DIR": str(self.compile_cache),
            "TRITON_CACHE_DIR": str(self.compile_cache / "triton"),
        }
        spec = SandboxSpec(
            argv=python_argv(self.rules.evaluation.train_command),
            cwd=self.lab_root,
            writable=[run_dir, self.compile_cache],
            readable=[Path(data["cache_dir"])],  # train data + tokenizer; val inside it stays hidden
            hidden=self._hidden(data),
            env=env,
            timeout_s=self.rules.experiment_deadline_seconds,
            memory_mb=b.memory_hard_mb,
            max_processes=self.rules.sandbox.max_processes,
            max_file_mb=min(b.disk_mb, self.rules.sandbox.max_file_mb),
            stdout_path=run_dir / "train.log",
        )
        return sandbox.run(spec, self.level, on_start=on_start)

    def evaluate(self, run_dir: Path, data: dict, on_start: Callable[[int], None] | None = None) -> tuple[SandboxResult, dict]:
        """The trusted evaluator runs unwrapped (nested bwrap can't work without capabilities we
        drop); the untrusted model worker it starts runs in bwrap: no validation data, no
        network, the run dir read-only, nothing writable. The controller still owns the
        evaluator's timeout, memory limit (covering the worker's tree) and kill."""
        b = self.rules.budgets.experiment
        out_dir = run_dir.parent / f"{run_dir.name}.eval"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "evaluation.json"
        out.unlink(missing_ok=True)
        env = base_env(self.rules) | {"HOME": str(out_dir)}
        if self.level == "bubblewrap":
            worker_spec = SandboxSpec(
                argv=[], cwd=self.lab_root, writable=[], readable=[run_dir], hidden=self._hidden(data),
                env=base_env(self.rules) | {"HOME": "/tmp"}, timeout_s=b.evaluate_timeout_seconds,
                memory_mb=b.memory_hard_mb, max_processes=self.rules.sandbox.max_processes, max_file_mb=1,
            )
            env["EVAL_WORKER_PREFIX"] = sandbox.worker_prefix(worker_spec)
        spec = SandboxSpec(
            argv=python_argv(self.rules.evaluation.evaluate_command) + [str(run_dir), "--out", str(out)],
            cwd=self.lab_root,
            writable=[out_dir],
            hidden=[],
            env=env,
            timeout_s=b.evaluate_timeout_seconds,
            memory_mb=b.memory_hard_mb,
            max_processes=self.rules.sandbox.max_processes,
            max_file_mb=16,
            stdout_path=out_dir / "evaluate.log",
        )
        res = sandbox.run(spec, "none", on_start=on_start)
        try:
            result = json.loads(out.read_text())
            if not isinstance(result, dict):
                result = {}
        except (OSError, json.JSONDecodeError):
            result = {}
        return res, result

    def reported(self, run_dir: Path, t: SandboxResult) -> RunOutcome:
        """Weaker trust, for labs that govern an unmodified upstream checkout: the metric is the
        last line of the training log matching the constitution's pattern. Ledgered as such."""
        try:
            log = (run_dir / "train.log").read_text(errors="replace")
        except OSError:
            log = ""
        found = re.findall(self.rules.evaluation.reported_metric_pattern, log, flags=re.M)
        result = {"trust": "reported", "pattern": self.rules.evaluation.reported_metric_pattern}
        try:
            bpb = float(found[-1] if isinstance(found[-1], str) else found[-1][0])
        except (IndexError, ValueError):
            return RunOutcome("crash", "training printed no metric line matching reported_metric_pattern", None, t, None, result)
        if not math.isfinite(bpb) or not (0 < bpb < 32):
            return RunOutcome("crash", f"training reported an impossible val_bpb {bpb!r}", None, t, None, result)
        return RunOutcome("ok", "trained; metric as reported by the training run (trust: reported)", bpb, t, None, result | {"val_bpb": bpb})

    def run(self, run_dir: Path, data: dict, on_start: Callable[[int], None] | None = None) -> RunOutcome:
        t = self.train(run_dir, data, on_start)
        if t.timed_out:
            return RunOutcome("timeout", f"training passed its deadline of {self.rules.experiment_deadline_seconds:g} s and was killed", None, t, None, {})
        if t.memory_killed:
            return RunOutcome("crash", f"training exceeded {self.rules.budgets.experiment.memory_hard_mb} MB and was killed", None, t, None, {})
        if t.returncode != 0:
            return RunOutcome("crash", f"training exited with code {t.returncode}", None, t, None, {})
        if self.rules.evaluation.trust == "reported":
            return self.reported(run_dir, t)
        e, result = self.evaluate(run_dir, data, on_start)
        if e.timed_out:
            return RunOutcome("crash", "evaluation passed its deadline and was killed", None, t, e, result)
        if result.get("status") != "ok":
            why = str(result.get("reason") or f"evaluator exited with code {e.returncode}")[:300]
            return RunOutcome("crash", f"evaluation rejected the run: {why}", None, t, e, result)
        bpb = result.get("val_bpb")
        if not isinstance(bpb, (int, float)) or not math.isfinite(bpb) or not (0 < bpb < 32):
            return RunOutcome("crash", f"evaluation gave an impossible val_bpb {bpb!r}", None, t, e, result)
        return RunOutcome("ok", "trained and evaluated", float(bpb), t, e, result)
