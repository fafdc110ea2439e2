"""The event contract: one typed payload per event kind, shared by writers, readers, views and tests.

Every writer builds a payload class below and hands it to the ledger (`draft(...)` or
`Ledger.record(...)`); every Python reader turns an event back into one with `read(event)`;
the SQL views take their `from_json` shapes from `json_shape(...)`, which names fields of these
classes and fails at import if a name is not part of the contract. Reading is tolerant: keys a
class does not know are ignored and missing keys take the field's default, so ledgers written
before a field existed still read (and verify: the stored body is what the hash covers, reading
never rewrites it). A field is added with a default; one is never renamed in place (the JSON key
is the contract). Python names that are keywords (`from`) map to their JSON key in `JSON_KEYS`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .events import EventKind

__all__ = [
    "PAYLOADS", "Payload", "read", "json_shape",
    "LabCreated", "ConstitutionLoaded", "Note", "Anchor", "SessionStarted", "SessionResumed", "SessionEnded",
    "Proposed", "HarmPassed", "RefusalItem", "HarmRefused", "Committed", "TrainingStarted", "TrainingFinished",
    "Evaluated", "PostcheckFailed", "Decided", "GateTransition", "BudgetExhausted", "OperatorCommand",
    "IntegrityFailure", "AgentCall", "ProposerFailed", "AmendmentProposed", "AmendmentRatified",
    "AmendmentRejected", "AmendmentApplied",
]


@dataclass(frozen=True)
class Payload:
    """Base of every payload: `KIND` names the event kind it belongs to."""

    KIND: ClassVar[EventKind]
    JSON_KEYS: ClassVar[Mapping[str, str]] = {}  # python field name -> JSON key, where they differ

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                value = [v.to_json() if isinstance(v, Payload) else v for v in value]
            out[self.JSON_KEYS.get(f.name, f.name)] = value
        return out

    @classmethod
    def strict(cls, data: Mapping[str, Any]):
        """Like `from_json`, but a key the class does not know is an error (for writers and fixtures)."""
        known = {cls.JSON_KEYS.get(f.name, f.name) for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None):
        data = data or {}
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = cls.JSON_KEYS.get(f.name, f.name)
            if key not in data:
                continue
            value = data[key]
            item = _item_class(hints[f.name])
            if item is not None and isinstance(value, list):
                value = [item.from_json(v) if isinstance(v, Mapping) else v for v in value]
            kwargs[f.name] = value
        return cls(**kwargs)


# -- the lab and its rules ------------------------------------------------------------------------


@dataclass(frozen=True)
class LabCreated(Payload):
    KIND = EventKind.LAB_CREATED
    root: str = ""
    constitution_hash: str = ""
    constitution_version: int = 0
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConstitutionLoaded(Payload):
    """A constitution recorded as in force: at session start (with the full `rules`), or when
    `charter prepare` pinned hashes before the first session (with `pinned`)."""

    KIND = EventKind.CONSTITUTION_LOADED
    hash: str = ""
    version: int = 0
    reason: str = ""
    pinned: dict[str, str] | None = None
    rules: dict[str, Any] | None = None


@dataclass(frozen=True)
class Note(Payload):
    KIND = EventKind.NOTE
    text: str = ""


@dataclass(frozen=True)
class Anchor(Payload):
    KIND = EventKind.ANCHOR
    seq: int = 0
    hash: str = ""


# -- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStarted(Payload):
    KIND = EventKind.SESSION_STARTED
    tag: str = ""
    branch: str = ""
    base_commit: str = ""
    isolation: str = ""
    proposer: str = ""
    max_experiments: int | None = None
    pid: int | None = None
    constitution_hash: str = ""
    constitution_version: int = 0
    workers: int = 1  # experiments in flight at once (scale.workers, or charter run --workers)


@dataclass(frozen=True)
class SessionResumed(Payload):
    KIND = EventKind.SESSION_RESUMED
    tag: str = ""
    reset_to: str = ""
    interrupted: list[int] = field(default_factory=list)
    isolation: str = ""
    pid: int | None = None
    constitution_hash: str = ""
    constitution_version: int = 0


@dataclass(frozen=True)
class SessionEnded(Payload):
    KIND = EventKind.SESSION_ENDED
    reason: str = ""
    experiments: int = 0
    keeps: int = 0
    baseline_bpb: float | None = None
    best_bpb: float | None = None
    best_commit: str | None = None
    gate: str = ""
    branch: str = ""


# -- one experiment, step by step -----------------------------------------------------------------


@dataclass(frozen=True)
class Proposed(Payload):
    KIND = EventKind.PROPOSED
    description: str = ""
    hypothesis: str = ""
    source: str = ""
    proposer: str = ""
    parent_commit: str = ""
    params: dict[str, float] | None = None
    lesson: str = ""  # an agent's one-line lesson from the results so far: its journal, bounded


@dataclass(frozen=True)
class HarmPassed(Payload):
    KIND = EventKind.HARM_PASSED
    files: list[str] = field(default_factory=list)
    diff_lines: int = 0


@dataclass(frozen=True)
class RefusalItem(Payload):
    """One reason a proposal was refused (a harm-test rule, or `malformed` / `empty`)."""

    KIND = EventKind.HARM_REFUSED
    rule: str = ""
    path: str | None = None
    line: int | None = None
    evidence: str = ""
    hard: bool = False


@dataclass(frozen=True)
class HarmRefused(Payload):
    KIND = EventKind.HARM_REFUSED
    refusals: list[RefusalItem] = field(default_factory=list)
    diff: str = ""


@dataclass(frozen=True)
class Committed(Payload):
    KIND = EventKind.COMMITTED
    parent: str = ""
    diff: str = ""


@dataclass(frozen=True)
class TrainingStarted(Payload):
    KIND = EventKind.TRAINING_STARTED
    run_dir: str = ""
    run: int = 1
    deadline_seconds: float = 0.0
    isolation: str = ""


@dataclass(frozen=True)
class TrainingFinished(Payload):
    KIND = EventKind.TRAINING_FINISHED
    run: int = 1
    returncode: int | None = None
    timed_out: bool = False
    memory_killed: bool = False
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    isolation: str = ""
    log_tail_untrusted: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # the run's own stats.json: untrusted
    stopped: bool = False  # the controller sent its stop signal at the budget
    measured_seconds: float | None = None  # sandbox start to the process's exit, by the controller
    reported_seconds: float | None = None  # what the run claims it took (stats.json total_seconds)
    time_claim: str = ""  # "" when nothing was claimed; "consistent" or how the claim disagrees
    limits: str = ""  # how memory and processes were limited (cgroup-v1, cgroup-v2, poll)
    clock: str = ""  # what the stop counted: "wall", or "cpu" (CPU seconds per CPU, with a wall cap); "" before it existed
    cpu_seconds: float | None = None  # user + system CPU of the whole sandboxed tree, by the controller
    cpu_threads: int = 0  # the CPUs the run could use (its affinity), the cpu clock's divisor
    stopped_by: str = ""  # "cpu" or "wall": the clock that reached its limit and sent the stop signal
    # the GPU, by the controller (NVML): None / "" on a machine without one or before these existed
    peak_vram_mb: float | None = None  # peak device memory above what was in use when the run started
    device_name: str = ""  # e.g. "NVIDIA H100 80GB HBM3"
    mfu: float | None = None  # model FLOPs utilisation 0..1 (config.json's model, the run's tokens/s, the device's peak)
    # the run's phases, by the controller (controller.execution.phases): unix seconds on one clock per
    # run, None where the run never got there or before these existed
    sandbox_started_at: float | None = None  # the training sandbox started
    startup_done_at: float | None = None  # train.py's start-up marker line came out of it
    budget_ended_at: float | None = None  # the stop signal was sent, or the run exited before it
    saved_at: float | None = None  # the training tree exited cleanly (exit code 0)
    checked_at: float | None = None  # the runner's post-checks (immutable files, data) were done
    counted_seconds: float | None = None  # what the budget's clock counted (CPU s per CPU, or wall s) at its end


@dataclass(frozen=True)
class Evaluated(Payload):
    KIND = EventKind.EVALUATED
    run: int = 1
    status: str = ""
    reason: str = ""
    wall_seconds: float = 0.0
    returncode: int | None = None
    trust: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    # the evaluation's phases, by the controller (controller.execution.phases); None as above
    evaluator_started_at: float | None = None  # the evaluator started
    evaluator_released_at: float | None = None  # it was let read the run (later than its start if started early)
    worker_ready_at: float | None = None  # the evaluator printed that its model worker is ready
    scored_at: float | None = None  # the evaluator exited on its own


@dataclass(frozen=True)
class PostcheckFailed(Payload):
    KIND = EventKind.POSTCHECK_FAILED
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decided(Payload):
    """The decision on one experiment, with everything a proposer or gate rule learns from."""

    KIND = EventKind.DECIDED
    decision: str = ""
    reason: str = ""
    description: str = ""
    source: str = ""
    params: dict[str, float] | None = None
    refusal_rule: str | None = None  # the first harm-test rule, for a refusal
    repair: bool = False  # a baseline re-run while FREEZE (not counted as an experiment)
    baseline_drift: float | None = None
    hard_violation: bool = False
    integrity_failure: bool = False
    memory_soft_exceeded: bool = False
    peak_rss_mb: float | None = None
    peak_vram_mb: float | None = None  # the largest of the runs' peak GPU memory (NVML); None without a GPU
    vram_soft_exceeded: bool = False  # a run went over budgets.experiment.vram_soft_mb
    train_seconds: float | None = None
    eval_seconds: float | None = None
    runs: list[float] = field(default_factory=list)
    improvement: float | None = None
    best_before: float | None = None
    # the keep rule's evidence: the other side's runs, the noise it assumed and the bar it set
    incumbent_runs: list[float] = field(default_factory=list)
    threshold: float | None = None  # the improvement these runs had to show to be kept
    noise_sd: float | None = None
    noise_df: float | None = None
    confidence: float | None = None
    setup: str = ""  # fingerprint of the measurement setup (noise.measurement_setup): runs pool within one
    # runs of the incumbent made for this decision (a promising candidate's judge asked for them)
    incumbent_commit: str = ""
    incumbent_added: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ProposerFailed(Payload):
    """The proposer raised or overran its deadline; no experiment was started."""

    KIND = EventKind.PROPOSER_FAILED
    proposer: str = ""
    error: str = ""
    seconds: float = 0.0


# -- governance -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateTransition(Payload):
    KIND = EventKind.GATE_TRANSITION
    JSON_KEYS = {"from_state": "from", "to_state": "to"}
    from_state: str = ""
    to_state: str = ""
    rule: str = ""
    evidence: str = ""
    by: str = ""
    held: bool = False


@dataclass(frozen=True)
class BudgetExhausted(Payload):
    KIND = EventKind.BUDGET_EXHAUSTED
    period: str = ""
    resource: str = ""
    usage: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OperatorCommand(Payload):
    KIND = EventKind.OPERATOR_COMMAND
    command: str = ""
    reason: str = ""
    signed_by: str = ""  # a resume from STOP in a lab that requires signatures: the key's fingerprint


@dataclass(frozen=True)
class IntegrityFailure(Payload):
    KIND = EventKind.INTEGRITY_FAILURE
    problems: list[str] = field(default_factory=list)


# -- the agent and the amendment process ----------------------------------------------------------


@dataclass(frozen=True)
class AgentCall(Payload):
    """What one proposer step spent (one or more model calls), as the budgets count it."""

    KIND = EventKind.AGENT_CALL
    proposer: str = ""
    model: str = ""
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    # one Messages call (calls == 1); empty for a proposer that reports one sum per step
    request_id: str = ""
    stop_reason: str = ""  # end_turn, tool_use, max_tokens, ... or the error that ended the call
    latency_ms: float = 0.0
    tool_calls: int = 0  # tool uses the reply asked for
    tool_errors: int = 0  # of those, refused or failed (out of scope, malformed input)
    tool_refusals: list[str] = field(default_factory=list)  # one line each: the tool, its target, why


@dataclass(frozen=True)
class AmendmentProposed(Payload):
    """A proposed next constitution. `amendment_id` is the sha256 of `text`, its exact content."""

    KIND = EventKind.AMENDMENT_PROPOSED
    amendment_id: str = ""
    by: str = ""
    why: str = ""
    version: int = 0
    hash: str = ""
    number: int = 0  # NNNN of its file in the lab's amendments/ folder
    path: str = ""  # that file, relative to the lab
    parent_version: int = 0
    parent_hash: str = ""
    tier: str = ""  # minor, major or constitutional
    needed: int = 0  # ratifications its tier needs under the constitution in force
    changes: list[str] = field(default_factory=list)  # the diff in words, each with its tier and why
    ratifiers: dict[str, str] = field(default_factory=dict)  # who may ratify it: name -> key fingerprint ("" = no key)
    require_signatures: bool = True
    cooling_hours: float = 0.0
    text: str = ""  # the proposed constitution, exactly
    # immutable files it carries, path -> exact text; each is bound to the id by its sha256 pin in `text`
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AmendmentRatified(Payload):
    """A ratification, or (with `refused` set) an attempt that was refused and why."""

    KIND = EventKind.AMENDMENT_RATIFIED
    amendment_id: str = ""
    by: str = ""
    signed: bool = False
    refused: str = ""  # "" = it counts; otherwise the one-line reason it was refused
    signature: str = ""  # the armored ssh-keygen signature over the amendment id (namespace charter-amendment)
    key: str = ""  # the OpenSSH public key it was verified with
    fingerprint: str = ""  # that key's SHA256 fingerprint


@dataclass(frozen=True)
class AmendmentRejected(Payload):
    KIND = EventKind.AMENDMENT_REJECTED
    amendment_id: str = ""
    by: str = ""
    reason: str = ""


@dataclass(frozen=True)
class AmendmentApplied(Payload):
    KIND = EventKind.AMENDMENT_APPLIED
    amendment_id: str = ""
    version: int = 0
    hash: str = ""
    parent_hash: str = ""
    parent_version: int = 0
    ratified_by: list[str] = field(default_factory=list)


PAYLOADS: dict[EventKind, type[Payload]] = {
    cls.KIND: cls for cls in Payload.__subclasses__() if cls is not RefusalItem
}
assert set(PAYLOADS) == set(EventKind), f"event kinds without a payload: {set(EventKind) - set(PAYLOADS)}"


def read(event: Any) -> Payload:
    """The typed payload of an event (anything with `.kind` and `.payload`)."""
    return PAYLOADS[EventKind(event.kind)].from_json(event.payload)


# -- shapes for the SQL views ---------------------------------------------------------------------

_SQL_TYPES = {str: "VARCHAR", int: "BIGINT", float: "DOUBLE", bool: "BOOLEAN"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _item_class(tp: Any) -> type[Payload] | None:
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if isinstance(item, type) and issubclass(item, Payload):
            return item
    return None


def _sql_type(tp: Any) -> Any:
    tp = _strip_optional(tp)
    if tp in _SQL_TYPES:
        return _SQL_TYPES[tp]
    item = _item_class(tp)
    if item is not None:
        return [{item.JSON_KEYS.get(f.name, f.name): _sql_type(_hints(item)[f.name]) for f in dataclasses.fields(item)}]
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] in _SQL_TYPES:  # a list of scalars
        return [_SQL_TYPES[typing.get_args(tp)[0]]]
    raise TypeError(f"no SQL type for {tp!r}")


def json_shape(*parts: tuple[type[Payload], tuple[str, ...]], extra: Mapping[str, Any] | None = None) -> str:
    """A DuckDB `from_json` shape '{"payload": {...}}' for the named fields of payload classes.

    `json_shape((Proposed, ("description", "source")), (Committed, ("diff",)))`. A field that is
    not in its class raises at import time, so a view cannot read a key no writer writes. Two
    classes may share a key only with the same SQL type. `extra` adds nested shapes by hand.
    """
    import json

    shape: dict[str, Any] = {}
    for cls, names in parts:
        hints = _hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        for name in names:
            if name not in known:
                raise KeyError(f"{cls.__name__} has no field {name!r}")
            key = cls.JSON_KEYS.get(name, name)
            typ = _sql_type(hints[name])
            if shape.get(key, typ) != typ:
                raise TypeError(f"payload key {key!r} has two SQL types: {shape[key]} and {typ}")
            shape[key] = typ
    shape.update(extra or {})
    return json.dumps({"payload": shape})
