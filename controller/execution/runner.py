"""Running one training and one evaluation of a lab commit, each in its own sandbox.

Training sees the lab read-only, writes only its run directory and a compile cache, cannot see
validation data or Charter's state, and is stopped by the controller at its training budget (on
the constitution's clock: CPU seconds per CPU it may use, or wall seconds) and killed grace
seconds later.
The trusted evaluator (the lab's immutable prepare.py) sees validation data but writes only its
result file; the untrusted model code it loads runs in a nested sandbox that cannot see
validation data either (EVAL_WORKER_PREFIX). The metric is read from the evaluator's result,
never from anything training printed. One job is (commit, work dir, device) -> `RunOutcome`:
the runner trains, evaluates, reads the run's stats and runs the post-checks (immutable files
and data re-hashed) itself, and times each phase of the job on one clock (`RunPhases`), so the
caller only records what came back, and nothing here assumes one work tree or one experiment in
flight.
"""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from constitution import Constitution
from constitution.canonical import canonical_json
from controller.execution import gpu, sandbox
from controller.execution.early_eval import EarlyEvaluator, supports_go
from controller.execution.phases import RunPhases
from controller.execution.sandbox import SandboxResult, SandboxSpec
from controller.execution.run_files import RunFileRefused, read_run_file
from controller.policy.device import run_mfu, vram_check
from controller.workspace.lab import file_sha256


class PrepareError(Exception):
    """The lab's data or tokenizer is missing or does not verify."""


def python_argv(argv: list[str]) -> list[str]:
    """Run a constitution's `python ...` command with this interpreter (it has the trainer's packages)."""
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return list(argv)


def cache_dir() -> Path:
    return Path(os.environ.get("CHARTER_CACHE_DIR") or Path.home() / ".cache" / "charter").absolute()


def kernels_cache() -> Path:
    """Where compute kernels (Flash Attention 3) fetched ahead of time live: a Hugging Face hub
    cache a training run reads read-only and offline (`HF_HUB_CACHE=... python -c 'from kernels
    import get_kernel; get_kernel("kernels-community/flash-attn3", version=1)'` fills it)."""
    return cache_dir() / "kernels"


# glibc hands every allocation over 128 KiB-32 MiB to mmap and unmaps it on free, so an eager CPU
# step's activations (tens of MB each) are page-faulted in afresh every step: on 2 cores the default
# model trained 8.7k tokens/s by hand, 13.0k with the heap kept (bench/heap_reuse.py, medians of 3
# pairs), and the evaluator's model worker answered a batch in ~0.3 s instead of ~0.2 s. Every run and evaluation
# gets the same setting; an operator's own value passes through.
HEAP_REUSE = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
# The early evaluator starts this long before the run's stop is due (counted seconds on the cpu
# clock), in the idle class: its interpreter and both workers' `import torch` (~2.3 s) are then done
# when the run has saved (0.8 s since train.py skips its teardown), not after.
EARLY_EVAL_LEAD_S = 3.0


def base_env(rules: Constitution) -> dict[str, str]:
    env = sandbox.minimal_env(Path("/tmp"), {
        "CHARTER_CACHE_DIR": str(cache_dir()),
        "CHARTER_PROFILE": rules.evaluation.profile,
        "CHARTER_TIME_BUDGET": f"{rules.budgets.experiment.training_seconds:g}",
        "CHARTER_EVAL_TOKENS": str(rules.evaluation.eval_tokens),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    } | HEAP_REUSE)
    # operator knobs passed through: thread counts, BLAS quirks, eager mode for slow machines, the
    # GPUs a single worker may use (a Ray worker's own are set by Runner._env)
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CHARTER_NO_COMPILE",
                "CHARTER_COMPILE", "CUDA_VISIBLE_DEVICES", *HEAP_REUSE):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def prepare_env(rules: Constitution) -> dict[str, str]:
    """The environment of the controller's own calls of the lab's trusted prepare.py (verify,
    evaluate --help): this process's, with the constitution's CHARTER_ settings."""
    return dict(os.environ, **{k: v for k, v in base_env(rules).items() if k.startswith("CHARTER_")})


def verify_data(lab_root: Path, rules: Constitution) -> dict:
    """Run the lab's own (pinned) `prepare.py verify --json`; the cached artifacts' hashes."""
    env = prepare_env(rules)
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
class Job:
    """One training + evaluation of one commit, checked out in `work_dir`, on `device`."""

    experiment: int
    run_index: int  # 1 for the first run of a candidate, 2.. for confirmation runs
    commit: str
    work_dir: Path  # the lab's work tree (or, later, a worktree of it) at `commit`
    run_dir: Path
    device: str = "cpu"
    seed_offset: int = 0  # how many runs of this commit the lab has scored before: repeats draw other seeds


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "ok", "crash", "timeout"
    reason: str
    val_bpb: float | None
    train: SandboxResult
    evaluation: SandboxResult | None
    eval_result: dict
    integrity_failure: bool = False
    stats: dict = field(default_factory=dict)  # the run's own stats.json (untrusted, bounded)
    postcheck_problems: tuple[str, ...] = ()  # immutable files or data changed during the run
    evaluated: tuple[str, str, float | None] | None = None  # what the evaluator said (status, reason, val_bpb),
                                                            # kept when a post-check overrules it
    # the device, as the controller measured it (NVML; None / "" on a machine without one)
    peak_vram_mb: float | None = None  # peak GPU memory above what was in use when training started
    device_name: str = ""
    mfu: float | None = None  # from config.json's model, the run's tokens/s claim and the device's peak
    vram_soft_exceeded: bool = False
    vram_hard_exceeded: bool = False  # the run is unscored (status crash) and the experiment a hard violation
    phases: RunPhases = field(default_factory=RunPhases)  # when it reached each phase, by the controller
    released_monotonic: float | None = None  # an early evaluator's release (time.monotonic()); else its start


STATS_MAX_BYTES = 20_000

# The lines that mark a phase, at the start of a line of output. train.py prints its `profile:`
# line (flushed) once the model is built and the first batch loaded, just before its loop: the
# start-up is done. The evaluator prints `worker ready` once its scoring worker has loaded the
# model (a lab whose pinned prepare.py predates the line records that moment as None).
TRAIN_STARTUP_MARKER = b"profile: "
EVAL_READY_MARKER = b"worker ready"

# Under the cpu clock, wall time is only a safety net: a run that gets little CPU (a machine
# overloaded beyond reason, a run that sleeps or waits) is still stopped after this many times
# training_seconds of wall time. 3 lets a run finish its CPU budget with a third of its CPUs.
CPU_WALL_FACTOR = 3.0

EARLY_EVALUATOR_NICE = 10  # an evaluator started at the stop signal: below the run it waits for


def training_wall_cap(rules: Constitution) -> float:
    """Wall seconds from the sandbox start to the stop signal at the latest."""
    b = rules.budgets.experiment
    return b.training_seconds * (CPU_WALL_FACTOR if b.clock == "cpu" else 1.0)


def training_kill_seconds(rules: Constitution) -> float:
    """Wall seconds from the sandbox start to the hard kill at the latest: the wall cap + grace (the
    kill also comes grace seconds after an earlier stop). On the wall clock this is
    rules.experiment_deadline_seconds."""
    return training_wall_cap(rules) + rules.budgets.experiment.grace_seconds


def read_stats(run_dir: Path) -> dict:
    """The training run's stats.json, if it is a small JSON object (untrusted: recorded as the
    run's own claim, never used to decide); {} for anything else, links and FIFOs included."""
    try:
        data = json.loads(read_run_file(run_dir, "stats.json", STATS_MAX_BYTES), parse_constant=_no_constant)
        canonical_json(data)  # only what the ledger can record (finite numbers, plain JSON)
    except (RunFileRefused, ValueError, TypeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number the ledger records")


def immutable_problems(work_dir: Path, rules: Constitution) -> list[str]:
    """Immutable files that are missing, replaced by a link, or no longer match their pins."""
    problems = []
    for rel, pin in rules.evaluation.immutable.items():
        p = work_dir / rel
        if not p.is_file() or p.is_symlink():
            problems.append(f"immutable file {rel} is missing")
        elif pin and file_sha256(p) != pin:
            problems.append(f"immutable file {rel} does not match its pin (restore it with git checkout; only an "
                            f"applied amendment changes it: charter amend propose --immutable {rel}=NEW_FILE)")
    return problems


def data_problems(data: dict, rules: Constitution) -> list[str]:
    """Differences between the prepared data's hashes and the constitution's pins."""
    problems = []
    ev = rules.evaluation
    if ev.data_hash and data.get("data_hash") != ev.data_hash:
        problems.append("prepared data does not match evaluation.data_hash")
    if ev.tokenizer_hash and data.get("tokenizer_hash") != ev.tokenizer_hash:
        problems.append("tokenizer does not match evaluation.tokenizer_hash")
    if data.get("profile") != ev.profile:
        problems.append(f"prepared profile {data.get('profile')!r} is not the constitution's {ev.profile!r}")
    return problems


def integrity_problems(work_dir: Path, rules: Constitution) -> list[str]:
    """Everything the post-check re-verifies: immutable files first, then the data."""
    problems = immutable_problems(work_dir, rules)
    if problems:
        return problems
    try:
        return data_problems(verify_data(work_dir, rules), rules)
    except PrepareError as e:
        return [f"data no longer verifies: {e}"]


def over_budget(t: SandboxResult, training_s: float, grace_s: float) -> str | None:
    """Why a training run is over its budget (never scored), or None. The controller sent the stop
    signal at `training_s` (wall seconds after it started the sandbox, or on the cpu clock CPU
    seconds per CPU, or the wall cap); a run still going `grace_s` later was killed, and one that
    did not exit cleanly after the signal did not save in time."""
    at = f"{training_s:g} s"
    if t.clock == "cpu":
        at = (f"the wall cap of {training_s * CPU_WALL_FACTOR:g} s" if t.stopped_by == "wall"
              else f"{training_s:g} CPU s per CPU")
    if t.timed_out:
        return (f"over budget: still running {grace_s:g} s after the stop signal at {at} "
                "(start-up and compile included), so it was killed unscored")
    if t.stopped and t.returncode != 0:
        return (f"over budget: stopped at {at} (start-up and compile included) and did not save "
                f"within the {grace_s:g} s grace (exit code {t.returncode})")
    return None


class Runner:
    def __init__(self, state_dir: Path, rules: Constitution, level: str, gpus: tuple[gpu.GpuDevice, ...] | None = None):
        self.state_dir = state_dir
        self.rules = rules
        self.level = level
        self.gpus = gpus  # a Ray worker's GPUs: its runs see and are charged for only these; None: all there are

    def _env(self) -> dict[str, str]:
        env = base_env(self.rules)
        if self.gpus is not None:  # by UUID: the same GPU whichever order CUDA counts devices in
            env["CUDA_VISIBLE_DEVICES"] = ",".join(d.uuid for d in self.gpus)
        return env

    def _gpu_minors(self) -> tuple[int, ...] | None:
        return None if self.gpus is None else tuple(d.minor for d in self.gpus)

    def _hidden(self, data: dict) -> list[Path]:
        # An extra deny only: the sandbox shows an allow-list, in which neither the validation data
        # nor Charter's state (ledger, control socket; masked inside a bound lab anyway) is named.
        # The run dir inside .charter/ is bound back by the sandbox.
        return [Path(data["val_dir"]), self.state_dir]

    def train(self, work_dir: Path, run_dir: Path, data: dict, on_start: Callable[[int], None] | None = None,
              seed_offset: int = 0, on_stop: Callable[[], None] | None = None, stop_lead_s: float = 0.0) -> SandboxResult:
        """Training sees the lab, the train shards, the manifest and the tokenizer read-only and
        writes only its run dir, compile caches included (nothing one run writes reaches the
        next). The controller owns the clock: SIGTERM at training_seconds after the sandbox
        starts ($CHARTER_DEADLINE, set by the sandbox from the clock it stops by, tells the run
        when), the kill grace_seconds later. On the cpu clock those are CPU seconds of the run's
        tree per CPU it may use ($CHARTER_CPU_BUDGET and $CHARTER_CPU_THREADS tell the run; its
        affinity is those CPUs), and $CHARTER_DEADLINE is the wall cap. $CHARTER_SEED_OFFSET is
        how many runs of its commit the lab scored before (0 for the first): repeats, in this
        session or a later one, draw other seeds, so the noise they measure includes seed-to-seed
        variation, which any change that moves the random stream (a new shape, another batch
        size) carries too; a candidate's k-th run shares its seed with the baseline's k-th."""
        b = self.rules.budgets.experiment
        cpu = b.clock == "cpu"
        run_dir.mkdir(parents=True, exist_ok=True)
        cache = run_dir / ".compile-cache"  # per run: created by the run itself, as the sandbox uid
        env = self._env() | {
            "RUN_DIR": str(run_dir),
            "HOME": str(run_dir),
            "TORCHINDUCTOR_CACHE_DIR": str(cache),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "CHARTER_SEED_OFFSET": str(seed_offset),
        }
        if cpu:
            # OpenMP threads (torch's) that wait sleep rather than spin: a spinning thread is charged
            # CPU for no work, and the more so the busier the machine (on 2 busy cores: 3.8 CPU s per
            # step spinning, 1.9 passive, the same as with a competing process). Even a bounded spin
            # (GOMP_SPINCOUNT=10000) that saves 9% of a budget's wall time on a quiet machine trains
            # 26% less beside one busy process (bench/omp_wait.py). The operator or the run may set
            # its own policy; it pays for the spinning.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        train_dir = Path(data["train_dir"])
        # what make_dataloader reads: never the cache whole (its val split, other profiles)
        readable = [train_dir, train_dir.parent / "manifest.json", Path(data["tokenizer_dir"])]
        if kernels_cache().is_dir():  # kernels fetched ahead (FA3), read-only and offline
            readable.append(kernels_cache())
            env["HF_HUB_CACHE"] = str(kernels_cache())
        spec = SandboxSpec(
            argv=python_argv(self.rules.evaluation.train_command),
            cwd=work_dir,
            writable=[run_dir],
            readable=readable,
            hidden=self._hidden(data),
            env=env,
            timeout_s=training_kill_seconds(self.rules),
            stop_after_s=training_wall_cap(self.rules),
            stop_env="CHARTER_DEADLINE",
            stop_after_cpu_s=b.training_seconds if cpu else None,
            cpu_threads=b.cpu_threads,
            cpu_env="CHARTER_CPU_BUDGET" if cpu else None,
            threads_env="CHARTER_CPU_THREADS" if cpu else None,
            stop_grace_s=b.grace_seconds,
            memory_mb=b.memory_hard_mb,
            max_processes=self.rules.sandbox.max_processes,
            max_file_mb=min(b.disk_mb, self.rules.sandbox.max_file_mb),
            stdout_path=run_dir / "train.log",
            marker=TRAIN_STARTUP_MARKER,
            gpus=self._gpu_minors(),
        )
        return sandbox.run(spec, self.level, on_start=on_start, on_stop=on_stop, stop_lead_s=stop_lead_s)

    def evaluate(self, work_dir: Path, run_dir: Path, data: dict, on_start: Callable[[int], None] | None = None,
                 go_file: Path | None = None) -> tuple[SandboxResult, dict]:
        """The trusted evaluator runs unwrapped (nested bwrap can't work without capabilities we
        drop); the untrusted model worker it starts runs in bwrap as the sandbox uid: no
        validation data, no cache, no network, the lab and the run dir read-only, nothing
        writable but a private /tmp, and limits of its own (worker_prefix: its own memory cgroup,
        tasks, file size, a wall-clock kill; prepare.py's WORKER_TIMEOUT rejects a worker that
        stops answering). The controller still owns the evaluator's timeout, memory limit
        (covering the worker's tree) and kill. With go_file (`early_eval`), the evaluator is
        started early and reads the run only at the runner's word; it may wait for as long as
        the run's grace."""
        b = self.rules.budgets.experiment
        out_dir = self.eval_dir(run_dir)
        out_dir.mkdir(parents=True, exist_ok=True)  # (an early one's, with its go file cleared, by early_evaluator)
        out = out_dir / "evaluation.json"
        out.unlink(missing_ok=True)
        waits = [] if go_file is None else ["--go", str(go_file)]
        # an early evaluator may wait for as long as the run's grace; its workers' own limit counts from then too
        timeout = b.evaluate_timeout_seconds + (b.grace_seconds if waits else 0)
        env = self._env() | {"HOME": str(out_dir)}
        if self.level == "bubblewrap":
            worker_spec = SandboxSpec(
                # nothing of the run either: the evaluator sends the model over a pipe, and a FIFO the
                # run left in its dir would be a channel between the scoring and the checking worker
                argv=[], cwd=work_dir, writable=[], readable=[], hidden=self._hidden(data),
                env=self._env() | {"HOME": "/tmp"}, timeout_s=timeout,
                memory_mb=b.memory_hard_mb, max_processes=self.rules.sandbox.max_processes, max_file_mb=1,
                gpus=self._gpu_minors(),
            )
            env["EVAL_WORKER_PREFIX"] = sandbox.worker_prefix(worker_spec)
        spec = SandboxSpec(
            argv=python_argv(self.rules.evaluation.evaluate_command) + [str(run_dir), "--out", str(out), *waits],
            cwd=work_dir,
            writable=[out_dir],
            hidden=[],
            env=env,
            timeout_s=timeout,
            memory_mb=b.memory_hard_mb,
            max_processes=self.rules.sandbox.max_processes,
            max_file_mb=16,
            stdout_path=out_dir / "evaluate.log",
            marker=EVAL_READY_MARKER,
            # started early, it yields the CPUs to the run it was started for, which is still in its
            # last seconds of training or saving within its grace: SCHED_IDLE, inherited by its workers (with nothing else running,
            # as after the run's exit, it changes nothing)
            nice=EARLY_EVALUATOR_NICE if waits else 0,
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
        try:  # the run could have replaced its log with a link or a FIFO
            log = read_run_file(run_dir, "train.log", sandbox.LOG_CAP_BYTES + 4096).decode("utf-8", "replace")
        except RunFileRefused:
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

    def run(self, job: Job, data: dict, on_start: Callable[[int], None] | None = None) -> RunOutcome:
        """Train and evaluate one job, then read its stats and run the post-checks."""
        anchor = time.time() - time.monotonic()  # the job's moments: monotonic readings, anchored once
        outcome = self._train_and_evaluate(job.work_dir, job.run_dir, data, on_start, job.seed_offset)
        problems = tuple(integrity_problems(job.work_dir, self.rules))
        checked = time.monotonic()
        outcome = replace(outcome, stats=read_stats(job.run_dir), postcheck_problems=problems,
                          evaluated=(outcome.status, outcome.reason, outcome.val_bpb),
                          phases=run_phases(outcome.train, outcome.evaluation, checked, anchor,
                                            outcome.released_monotonic))
        outcome = self._device_use(outcome, job.run_dir)
        if problems:
            return replace(outcome, status="crash", reason="post-check failed: " + "; ".join(problems), val_bpb=None,
                           integrity_failure=True)
        return outcome

    def _device_use(self, outcome: RunOutcome, run_dir: Path) -> RunOutcome:
        """The run's GPU memory against the limits, and its MFU (nothing on a CPU machine)."""
        b = self.rules.budgets.experiment
        verdict = vram_check(outcome.peak_vram_mb, b.vram_soft_mb, b.vram_hard_mb)
        try:
            kwargs = json.loads(read_run_file(run_dir, "config.json", STATS_MAX_BYTES)).get("kwargs") or {}
        except (RunFileRefused, ValueError, AttributeError):
            kwargs = {}
        value = run_mfu(kwargs, outcome.stats, outcome.device_name) if outcome.device_name and isinstance(kwargs, dict) else None
        return replace(outcome, mfu=value, vram_soft_exceeded=verdict.soft_exceeded, vram_hard_exceeded=verdict.hard_exceeded)

    @staticmethod
    def eval_dir(run_dir: Path) -> Path:
        """The evaluator's own directory (its result, its log, the runner's word to it)."""
        return run_dir.parent / f"{run_dir.name}.eval"

    def early_evaluator(self, work_dir: Path, run_dir: Path, data: dict) -> EarlyEvaluator | None:
        """An evaluator to start at the stop signal, where the lab's evaluator can wait for the
        runner's word (`early_eval`); None where it can't or nothing is evaluated."""
        if self.rules.evaluation.trust == "reported":
            return None
        if not supports_go(python_argv(self.rules.evaluation.evaluate_command), work_dir, prepare_env(self.rules)):
            return None
        go_file = self.eval_dir(run_dir) / "go"
        go_file.parent.mkdir(parents=True, exist_ok=True)
        go_file.unlink(missing_ok=True)  # here, before any thread: the word is never written before this
        return EarlyEvaluator(go_file, lambda started: self.evaluate(work_dir, run_dir, data, started, go_file))

    def _train_and_evaluate(self, work_dir: Path, run_dir: Path, data: dict, on_start: Callable[[int], None] | None,
                            seed_offset: int = 0) -> RunOutcome:
        early = self.early_evaluator(work_dir, run_dir, data)
        try:
            # GPU memory is sampled by the controller while training runs (NVML; off for a cpu lab)
            with gpu.VramSampler(enabled=self.rules.evaluation.profile == "gpu",
                                 indices=None if self.gpus is None else tuple(d.index for d in self.gpus)) as vram:
                t = self.train(work_dir, run_dir, data, on_start, seed_offset, on_stop=early.start if early else None,
                               stop_lead_s=EARLY_EVAL_LEAD_S)
            over = vram_check(vram.peak_mb, None, self.rules.budgets.experiment.vram_hard_mb)
            if over.hard_exceeded:  # unscored, like a run over its host memory limit: no evaluation
                outcome = RunOutcome("crash", over.reason, None, t, None, {})
            else:
                outcome = self._after_training(work_dir, run_dir, data, on_start, t, early)
        finally:
            if early:
                early.cancel()  # nothing to score (or an error on the way): it exits unread; no-op once released
        return replace(outcome, peak_vram_mb=vram.peak_mb, device_name=vram.device_name)

    def _after_training(self, work_dir: Path, run_dir: Path, data: dict, on_start: Callable[[int], None] | None,
                        t: SandboxResult, early: EarlyEvaluator | None = None) -> RunOutcome:
        b = self.rules.budgets.experiment
        if t.memory_killed:
            return RunOutcome("crash", f"training exceeded {b.memory_hard_mb} MB and was killed", None, t, None, {})
        over = over_budget(t, b.training_seconds, b.grace_seconds)
        if over:
            return RunOutcome("timeout", over, None, t, None, {})
        if t.returncode != 0:
            return RunOutcome("crash", f"training exited with code {t.returncode}", None, t, None, {})
        if self.rules.evaluation.trust == "reported":
            return self.reported(run_dir, t)
        if early and early.started:  # the training tree is gone (sandbox.run returned): it may read the run
            e, result, released = early.release(on_start)
        else:
            e, result = self.evaluate(work_dir, run_dir, data, on_start)
            released = e.started_monotonic
        outcome = RunOutcome("ok", "trained and evaluated", None, t, e, result, released_monotonic=released)
        if e.timed_out:
            return replace(outcome, status="crash", reason="evaluation passed its deadline and was killed")
        if result.get("status") != "ok":
            why = str(result.get("reason") or f"evaluator exited with code {e.returncode}")[:300]
            return replace(outcome, status="crash", reason=f"evaluation rejected the run: {why}")
        bpb = result.get("val_bpb")
        if not isinstance(bpb, (int, float)) or not math.isfinite(bpb) or not (0 < bpb < 32):
            return replace(outcome, status="crash", reason=f"evaluation gave an impossible val_bpb {bpb!r}")
        return replace(outcome, val_bpb=float(bpb))


def run_phases(train: SandboxResult, evaluation: SandboxResult | None, checked: float | None,
               anchor: float, released: float | None = None) -> RunPhases:
    """A job's phases from its sandboxes' monotonic readings (`checked`: the post-checks' end,
    `released`: the evaluator's release, both on time.monotonic(); an evaluator released at its
    start when not given); `anchor` (unix time minus monotonic time) makes them unix seconds. Budget end:
    the stop signal, or the run's own exit before it; saved: a clean exit only. A marker line read
    after its phase's end (a start-up that outlasted the budget, output drained after the exit)
    is not counted as reached in time."""
    def at(r: SandboxResult | None, offset: float | None) -> float | None:
        if r is None or r.started_monotonic is None or offset is None:
            return None
        return anchor + r.started_monotonic + offset

    def in_time(marker: float | None, end: float | None) -> float | None:
        return marker if marker is None or end is None or marker <= end else None

    t, e = train, evaluation
    budget_end = t.stop_seconds if t.stopped else t.exit_seconds
    scored = e.exit_seconds if e else None
    return RunPhases(
        sandbox_started=at(t, 0.0),
        startup_done=at(t, in_time(t.marker_seconds, budget_end)),
        budget_ended=at(t, budget_end),
        saved=at(t, t.exit_seconds if t.returncode == 0 else None),
        evaluator_started=at(e, 0.0),
        evaluator_released=(at(e, 0.0) if released is None else anchor + released) if e else None,
        worker_ready=at(e, in_time(e.marker_seconds, scored) if e else None),
        scored=at(e, scored),
        checked=None if checked is None else anchor + checked,
    )


# A run's own clock starts after its interpreter and imports are up, so an honest claim is a bit
# under what the controller measured from the sandbox start; never more.
CLAIM_SLACK_S = (10.0, 0.2, 1.0)  # start-up allowance, fraction of the run, clock jitter


def time_claim(stats: dict, measured_seconds: float | None) -> tuple[float | None, str]:
    """The run's claim of its own time (untrusted, never used to decide) against the controller's."""
    claimed = stats.get("total_seconds")
    if not isinstance(claimed, (int, float)) or isinstance(claimed, bool) or measured_seconds is None:
        return None, ""
    claimed = float(claimed)
    startup, fraction, jitter = CLAIM_SLACK_S
    if measured_seconds * (1 - fraction) - startup <= claimed <= measured_seconds + jitter:
        return claimed, "consistent"
    return claimed, f"disagrees: the run claims {claimed:.1f} s, the controller measured {measured_seconds:.1f} s"
