"""The constitution's data model: every section of a lab's rules as strict pydantic models.

A constitution is one TOML file. These models are its only definition: unknown keys are errors,
numbers have real bounds, gate rules name known metrics and states, paths stay inside the lab and
editable paths never overlap immutable ones. Validation problems surface as pydantic errors that
`constitution.loader` turns into one line per problem; nothing here reads files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class GateState(StrEnum):
    """Graduated gate states, from normal work to a full stop that needs a person."""

    RUN = "RUN"
    THROTTLE = "THROTTLE"
    FREEZE = "FREEZE"
    STOP = "STOP"


# Severity order: a gate only escalates along this order by rules; stepping down needs probation.
GATE_SEVERITY = {GateState.RUN: 0, GateState.THROTTLE: 1, GateState.FREEZE: 2, GateState.STOP: 3}


class GateMetric(StrEnum):
    """Quantities a gate rule can watch, each computed from a window of the ledger."""

    CRASH_STREAK = "crash_streak"  # consecutive crashed or timed-out experiments
    CRASHES = "crashes"  # crashed or timed-out experiments in the window
    REFUSALS = "refusals"  # harm-test refusals in the window
    STAGNATION = "stagnation"  # experiments since the last keep
    BUDGET_BURN = "budget_burn"  # largest fraction of any session budget consumed (0..1+)
    INTEGRITY_FAILURES = "integrity_failures"  # post-check failures in the window
    HARD_CONSTRAINT_VIOLATIONS = "hard_constraint_violations"  # in the window
    MEMORY_SOFT_EXCEEDED = "memory_soft_exceeded"  # experiments over the soft memory limit
    BASELINE_DRIFT = "baseline_drift"  # |re-verified baseline - recorded baseline| in bpb
    PROPOSER_FAILURES = "proposer_failures"  # failed proposing steps (API errors, no submit, ...) in the window


class Strict(BaseModel):
    # no number in a constitution may be infinite or NaN: the canonical JSON that hashes it has neither
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


def _check_lab_path(path: str) -> str:
    if not path or path.strip() != path:
        raise ValueError("path must be a non-empty relative path without surrounding spaces")
    p = PurePosixPath(path)
    if p.is_absolute() or path.startswith("~") or "\\" in path:
        raise ValueError(f"path {path!r} must be relative to the lab")
    if any(part == ".." for part in p.parts):
        raise ValueError(f"path {path!r} leaves the lab")
    if any(part == ".git" or part == ".charter" for part in p.parts):
        raise ValueError(f"path {path!r} is inside Charter's or git's own files")
    return str(p)


def _check_pin(value: str) -> str:
    if value != "" and not SHA256_RE.match(value):
        raise ValueError("must be a lowercase sha256 hex digest or \"\" (not pinned yet)")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression ({e})") from None
    return value


LabPath = Annotated[str, AfterValidator(_check_lab_path)]
Regex = Annotated[str, AfterValidator(_check_regex)]
Pin = Annotated[str, AfterValidator(_check_pin)]


def _paths_overlap(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


class Meta(Strict):
    version: int = Field(ge=1)
    parent_hash: Pin = ""
    ratified_at: str = ""
    amendment_id: str = ""
    name: str = Field(default="lab", min_length=1, max_length=80)

    @model_validator(mode="after")
    def _genesis(self) -> "Meta":
        if self.version == 1 and self.parent_hash:
            raise ValueError("version 1 has no parent: parent_hash must be \"\"")
        if self.version > 1 and not self.parent_hash:
            raise ValueError(f"version {self.version} needs the parent_hash of version {self.version - 1}")
        return self


class Evaluation(Strict):
    metric: Literal["val_bpb"] = "val_bpb"
    direction: Literal["minimize"] = "minimize"
    profile: Literal["cpu", "gpu"] = "cpu"
    trust: Literal["evaluator", "reported"] = "evaluator"
    train_command: list[str] = Field(min_length=1)
    evaluate_command: list[str] = Field(min_length=1)
    reported_metric_pattern: Regex = r"^val_bpb:\s*([0-9.]+)"
    eval_tokens: int = Field(gt=0, le=1 << 30)
    immutable: dict[LabPath, Pin] = Field(min_length=1)
    data_hash: Pin = ""
    tokenizer_hash: Pin = ""



class HardConstraint(Strict):
    name: str = Field(min_length=1, max_length=80)
    pattern: Regex = Field(min_length=1)  # must never match an editable file after a change
    why: str = ""


HarmRule = Literal[
    "network", "subprocess", "dynamic_import", "file_write", "data_access", "timing", "evaluation"
]


class Scope(Strict):
    editable: list[LabPath] = Field(min_length=1)
    max_diff_lines: int = Field(gt=0)
    forbidden: list[HarmRule] = Field(default_factory=list)
    hard_constraints: list[HardConstraint] = Field(default_factory=list)


class ExperimentBudget(Strict):
    training_seconds: float = Field(gt=0)
    # "wall": seconds from the sandbox start; "cpu": CPU seconds of the run's processes divided by
    # cpu_threads, so other work on the machine doesn't change how much training a run gets
    clock: Literal["wall", "cpu"] = "cpu"
    cpu_threads: int = Field(default=0, ge=0, le=1024)  # CPUs a run may use (its affinity); 0 = all the controller has
    grace_seconds: float = Field(ge=0)  # start-up, compile and saving on top of training
    evaluate_timeout_seconds: float = Field(gt=0)
    memory_soft_mb: int = Field(gt=0)
    memory_hard_mb: int = Field(gt=0)
    disk_mb: int = Field(gt=0)
    # GPU memory of the run as the controller reads it through NVML (never the run's own claim);
    # None = no limit, and on a machine without NVML nothing is measured, so neither ever fires there
    vram_soft_mb: int | None = Field(default=None, gt=0)  # over this the gate may THROTTLE (like memory_soft_mb)
    vram_hard_mb: int | None = Field(default=None, gt=0)  # over this the run is unscored and a hard violation

    @model_validator(mode="after")
    def _memory(self) -> "ExperimentBudget":
        if self.memory_soft_mb > self.memory_hard_mb:
            raise ValueError("memory_soft_mb must not exceed memory_hard_mb")
        if self.vram_soft_mb is not None and self.vram_hard_mb is not None and self.vram_soft_mb > self.vram_hard_mb:
            raise ValueError("vram_soft_mb must not exceed vram_hard_mb")
        return self


class PeriodBudget(Strict):
    experiments: int = Field(ge=0)
    device_seconds: float = Field(ge=0)
    wall_hours: float = Field(ge=0)
    agent_tokens: int = Field(ge=0)
    agent_dollars: float = Field(ge=0)
    disk_mb: int = Field(ge=0)


class Budgets(Strict):
    experiment: ExperimentBudget
    session: PeriodBudget
    day: PeriodBudget


class DecisionRule(Strict):
    min_improvement: float = Field(ge=0)  # the smallest gain worth keeping, whatever the noise
    confirmation_runs: int = Field(ge=0, le=10)  # extra runs a promising candidate earns before the decision
    noise_sd: float = Field(gt=0)  # the floor and prior of the run-to-run sd; measured repeats can only raise it
    noise_prior_df: float = Field(default=4.0, gt=0, le=1000)  # how many degrees of freedom that prior is worth
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)  # one-sided: P(keep | no real gain) <= 1 - confidence
    baseline_runs: int = Field(default=2, ge=1, le=10)  # runs the incumbent has before a keep is judged against it


class GateRule(Strict):
    name: str = Field(min_length=1, max_length=80)
    metric: GateMetric
    op: Literal[">=", ">", "<=", "<", "=="] = ">="
    threshold: float
    window: int = Field(gt=0, le=10_000)  # experiments looked back over
    target: GateState

    @field_validator("target")
    @classmethod
    def _not_run(cls, v: GateState) -> GateState:
        if v == GateState.RUN:
            raise ValueError("a rule escalates: target must be THROTTLE, FREEZE or STOP")
        return v


class ThrottleEffect(Strict):
    confirmation_runs: int = Field(ge=0, le=10)
    cooldown_seconds: float = Field(ge=0)


class Gates(Strict):
    probation_experiments: int = Field(ge=0)  # clear experiments before stepping down
    rules: list[GateRule] = Field(default_factory=list)
    throttle: ThrottleEffect

    @model_validator(mode="after")
    def _unique(self) -> "Gates":
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique (repeated: {', '.join(dup)})")
        return self


class Sandbox(Strict):
    level: Literal["bubblewrap", "none"] = "bubblewrap"
    allow_weaker: bool = False  # run with level "none" when bubblewrap can't run
    max_processes: int = Field(gt=0)
    max_file_mb: int = Field(gt=0)


class Scale(Strict):
    """Experiments in flight at once. One worker runs in the controller's process, as always; more
    run as Ray tasks (backend "ray", `pip install charter[ray]`), each run in the same sandbox on
    its worker, while the controller keeps proposing, the harm test, git, decisions, gates and
    the ledger."""

    workers: int = Field(default=1, ge=1, le=256)  # experiments in flight at once (charter run --workers N)
    backend: Literal["local", "ray"] = "ray"  # where more than one worker runs; "local" allows only one
    devices_per_worker: int = Field(default=1, ge=1)  # each worker's CPUs (cpu profile) or GPUs (gpu profile)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: a local one per session


class Prices(Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)  # None: a tenth of input
    cache_write_per_mtok: float | None = Field(default=None, ge=0)  # None: 1.25 x input

    def dollars(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float:
        """What a call's usage costs at these prices (input_tokens excludes cached tokens, as the API reports)."""
        read = self.input_per_mtok / 10 if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        write = self.input_per_mtok * 1.25 if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok
                + cache_read * read + cache_write * write) / 1e6


class Proposer(Strict):
    # a registered proposer kind (offline, queue, or one an installed package adds); the
    # controller refuses a kind that is not installed
    kind: str = Field(default="offline", pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    seed: int = Field(ge=0)
    deadline_seconds: float = Field(default=600, gt=0)  # one proposer step, model calls included
    model: str = ""
    max_tokens_per_call: int = Field(gt=0)
    command: list[str] = Field(default_factory=list)
    # lab files an agent may read besides the editable ones (never .charter/: the ledger, runs, cache)
    readable: list[LabPath] = Field(default_factory=lambda: ["program.md", "prepare.py"])
    max_turns: int = Field(default=20, ge=1, le=500)  # model calls per proposal before it counts as a failure
    retries: int = Field(default=4, ge=0, le=20)  # retries of a 429 / 5xx / overloaded / connection error per call
    network: bool = False  # kind = "command": the agent's sandbox may reach the network (its own API)
    # kind = "command": environment variables passed through to the agent (its API key), by name, and
    # host paths shown to it read-only (where its program lives: a node_modules tree, a venv)
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = Field(default_factory=list)
    program_paths: list[Annotated[str, Field(pattern=r"^/")]] = Field(default_factory=list)
    prices: Prices

    @model_validator(mode="after")
    def _kind_needs(self) -> "Proposer":
        if self.kind == "anthropic" and not self.model:
            raise ValueError('kind = "anthropic" needs a model (proposer.model, e.g. "claude-sonnet-4-5")')
        if self.kind == "command" and not self.command:
            raise ValueError('kind = "command" needs proposer.command, the agent\'s argv (e.g. ["claude", "-p"])')
        return self


class AmendmentTiers(Strict):
    minor: int = Field(ge=1)  # tightening a limit or threshold
    major: int = Field(ge=1)  # loosening a budget, scope or gate rule
    constitutional: int = Field(ge=1)  # evaluation, entrenched sections, the ratifier list, the sandbox level, pins


# OpenSSH public key types `ssh-keygen -Y verify` accepts (the security-key kinds included)
SSH_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
# a ratifier's name is an allowed-signers principal and a ledger actor: no spaces, quotes or commas
RATIFIER_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$"


def ssh_key_blob(line: str) -> bytes:
    """The decoded key blob of an OpenSSH public key line ("TYPE BASE64 [comment]"); ValueError
    naming what is wrong. Pure: the blob's own type field must match the line's type."""
    line = line.strip()
    parts = line.split()
    if len(parts) < 2 or "\n" in line or "\r" in line:
        raise ValueError("must be one OpenSSH public key line: TYPE BASE64 [comment]")
    kind, b64 = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        raise ValueError(f"key type {kind!r} is not one ssh-keygen verifies ({', '.join(SSH_KEY_TYPES[:2])}, ...)")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part does not decode") from None
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if n < 0 or blob[4:4 + n] != kind.encode():
        raise ValueError(f"the key's data is not a {kind} key")
    return blob


def ssh_fingerprint(line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line, as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(ssh_key_blob(line)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _check_key(value: str) -> str:
    if value:
        ssh_key_blob(value)
    return value.strip()


class Ratifier(Strict):
    """A person who may ratify amendments, with the SSH public key their signatures verify against."""

    name: str
    key: Annotated[str, AfterValidator(_check_key)] = ""  # "ssh-ed25519 AAAA... comment"; "" = none (can't sign)

    @field_validator("name")
    @classmethod
    def _a_person(cls, v: str) -> str:
        low = v.casefold()
        if low.startswith("agent:") or low in ("controller", "charter"):
            raise ValueError(f"{v!r} is not a person's name (agents and the controller never ratify)")
        if not re.fullmatch(RATIFIER_NAME_RE, v):
            raise ValueError("a ratifier's name is 1 to 64 letters, digits and . _ @ + - (it names them in the "
                             "ledger and in ssh-keygen's allowed signers)")
        return v


class Amendment(Strict):
    ratifiers: list[Ratifier] = Field(default_factory=list)
    require_signatures: bool = True  # a ratification is an ssh-keygen signature; false: by name, ledgered as unsigned
    tiers: AmendmentTiers
    entrenched: list[str] = Field(default_factory=list)
    cooling_hours: float = Field(ge=0)

    @field_validator("ratifiers", mode="before")
    @classmethod
    def _names(cls, v):
        # older constitutions listed bare names: each is a ratifier without a key
        if isinstance(v, list):
            return [{"name": r} if isinstance(r, str) else r for r in v]
        return v

    @model_validator(mode="after")
    def _tiers(self) -> "Amendment":
        t = self.tiers
        if not (t.minor <= t.major <= t.constitutional):
            raise ValueError("tiers must not decrease: minor <= major <= constitutional")
        names = [r.name for r in self.ratifiers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"ratifier names must be unique (repeated: {', '.join(dup)})")
        keys = [r.key.split()[1] for r in self.ratifiers if r.key]
        if len(keys) != len(set(keys)):
            raise ValueError("two ratifiers share one key: each person counts once, with a key of their own")
        # no ratifiers at all is allowed (nobody can ratify: the lab's rules are fixed after its first
        # session); some ratifiers but too few for the highest tier is a mistake
        if self.ratifiers and t.constitutional > len(self.ratifiers):
            raise ValueError(
                f"tiers.constitutional needs {t.constitutional} ratifiers but only "
                f"{len(self.ratifiers)} are listed"
            )
        unknown = [s for s in self.entrenched if s not in SECTIONS]
        if unknown:
            raise ValueError(f"entrenched names unknown sections: {', '.join(unknown)}")
        return self

    def ratifier(self, name: str) -> Ratifier | None:
        return next((r for r in self.ratifiers if r.name == name), None)


SECTIONS = ("meta", "evaluation", "scope", "budgets", "decision", "gates", "sandbox", "proposer", "amendment")


class Constitution(Strict):
    meta: Meta
    evaluation: Evaluation
    scope: Scope
    budgets: Budgets
    decision: DecisionRule
    gates: Gates
    sandbox: Sandbox
    proposer: Proposer
    amendment: Amendment
    scale: Scale = Field(default_factory=Scale)  # absent in constitutions older than parallel experiments

    @model_validator(mode="after")
    def _paths(self) -> "Constitution":
        for e in self.scope.editable:
            for i in self.evaluation.immutable:
                if _paths_overlap(e, i):
                    raise ValueError(f"editable path {e!r} overlaps immutable path {i!r}")
        return self

    @model_validator(mode="after")
    def _clock(self) -> "Constitution":
        # CPU seconds don't count what a GPU does: a run that waits on the device would train to the wall cap
        if self.evaluation.profile == "gpu" and self.budgets.experiment.clock == "cpu":
            raise ValueError('the gpu profile needs budgets.experiment.clock = "wall" (the cpu clock does not count device time)')
        return self

    @property
    def experiment_deadline_seconds(self) -> float:
        """Wall seconds after which the controller kills a training run on the wall clock (on the
        cpu clock: `controller.execution.runner.training_kill_seconds`)."""
        b = self.budgets.experiment
        return b.training_seconds + b.grace_seconds
