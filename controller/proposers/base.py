"""The proposer contract: what a proposer gets (`ProposalContext`) and what it returns.

A proposal is a description, a hypothesis and a change to the lab: either replacement file
contents (None deletes a file) or a unified diff. The controller materializes it, harm-tests it
and applies it; a proposer never touches the workspace: it sees a scratch copy of the editable
files (`ProposalContext.workdir`), which is thrown away after the step. A proposer that spends
money returns a `ProposerResult` with its `AgentUsage`; the session ledgers it as an
`agent_call` event and counts it against the budgets before the next step. Simple proposers may
return a bare `Proposal` (or None when they have nothing more to try).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

# What one proposer step spent, summed over its model calls: the ledger's own `agent_call` payload,
# so the contract is written once. The proposer leaves `proposer` empty; the session fills it in.
from ledger.payloads import AgentCall as AgentUsage


@dataclass(frozen=True)
class Proposal:
    description: str
    hypothesis: str = ""
    files: dict[str, bytes | None] = field(default_factory=dict)  # lab-relative path -> new content
    patch: str | None = None  # a unified diff, applied with `git apply`
    source: str = ""  # where it came from (e.g. the queue entry), for resuming and the ledger
    params: dict[str, float] | None = None  # the hyperparameters it sets, when known
    malformed: str | None = None  # the proposer knows this entry is unusable: refused, never staged
    lesson: str = ""  # an agent's one-line lesson from the results so far (its journal entry)


@dataclass(frozen=True)
class ProposerResult:
    proposal: Proposal | None  # None: nothing more to propose (unless failure or out_of_budget says why)
    usage: AgentUsage | None = None  # one summed record for the step
    calls: tuple[AgentUsage, ...] = ()  # or one record per model call, each ledgered as its own agent_call
    failure: str | None = None  # the step failed (recorded as proposer_failed, with its calls)
    out_of_budget: str | None = None  # "agent_tokens" or "agent_dollars": a call was not made; proposing ends


@dataclass(frozen=True)
class HistoryItem:
    """One past experiment, as proposers may learn from it (structured, never raw logs)."""

    description: str
    decision: str
    val_bpb: float | None
    source: str
    params: dict[str, float] | None
    improvement: float | None  # best before it minus its val_bpb; positive = it helped
    reason: str = ""  # the controller's reason for the decision
    rule: str | None = None  # the harm-test rule that refused it, for a refusal
    session: str = ""  # the session it ran in (lab history spans sessions)
    experiment: int = 0
    runs: tuple[float, ...] = ()  # every scored run of it (confirmations included)
    threshold: float | None = None  # the improvement it had to reach to be kept
    noise_sd: float | None = None  # the run-to-run sd the keep rule assumed for it
    lesson: str = ""  # the agent's journal line written with this proposal


@dataclass(frozen=True)
class AgentBudget:
    """What is left for agent calls in this step (the tighter of the session's and the day's)."""

    tokens: int
    dollars: float


@dataclass(frozen=True)
class ProposalContext:
    workdir: Path  # a scratch copy of the editable files; discarded after the step
    editable: list[str]
    files: dict[str, str]  # current text of each editable file
    history: list[HistoryItem]
    best_bpb: float | None
    experiment: int
    deadline: float | None = None  # time.time() by which the proposer must return
    budget: AgentBudget | None = None
    lab_history: list[HistoryItem] = field(default_factory=list)  # earlier sessions of this lab, oldest first
    # text of the lab files an agent may read besides the editable ones (proposer.readable, from the
    # work tree at the incumbent), program.md among them
    readable: dict[str, str] = field(default_factory=dict)
    # (experiment of this session, max bytes) -> the raw tail of its first run's training log, or None;
    # untrusted: an agent sees it only through brief.untrusted
    run_log: Callable[[int, int], str | None] | None = None
    # host paths no agent may see (the lab itself, the data cache): a sandboxed proposer hides them
    protected: tuple[Path, ...] = ()
    # with several workers: the candidates proposed and not yet decided (decision "in flight"), so
    # that nothing already running is proposed again
    in_flight: list[HistoryItem] = field(default_factory=list)


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> ProposerResult | Proposal | None:
        """The next proposal (None when there is nothing more to try), with its usage if any."""
        ...


def as_result(value: ProposerResult | Proposal | None) -> ProposerResult:
    """Normalize what a proposer returned; a TypeError says what is malformed about anything else."""
    if value is None or isinstance(value, Proposal):
        value = ProposerResult(value)
    if not isinstance(value, ProposerResult):
        raise TypeError(f"the proposer returned a {type(value).__name__}, not a Proposal")
    if value.proposal is not None:
        _check_proposal(value.proposal)
    if value.usage is not None:
        _check_usage(value.usage)
    for call in value.calls:
        _check_usage(call)
    if value.failure is not None and not isinstance(value.failure, str):
        raise TypeError("ProposerResult.failure must be text or None")
    if value.out_of_budget not in (None, "agent_tokens", "agent_dollars"):
        raise TypeError("ProposerResult.out_of_budget must be None, 'agent_tokens' or 'agent_dollars'")
    return value


def _check_proposal(p: Proposal) -> None:
    if not isinstance(p, Proposal):
        raise TypeError(f"the proposer's result holds a {type(p).__name__}, not a Proposal")
    for name in ("description", "hypothesis", "source", "lesson"):
        if not isinstance(getattr(p, name), str):
            raise TypeError(f"Proposal.{name} must be text, not {type(getattr(p, name)).__name__}")
    for name in ("patch", "malformed"):
        if getattr(p, name) is not None and not isinstance(getattr(p, name), str):
            raise TypeError(f"Proposal.{name} must be text or None")
    if not isinstance(p.files, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, bytes)) for k, v in p.files.items()):
        raise TypeError("Proposal.files must map paths (text) to bytes or None")
    if p.params is not None and not (isinstance(p.params, dict) and all(
            isinstance(k, str) and _finite(v) for k, v in p.params.items())):
        raise TypeError("Proposal.params must map names to finite numbers")


def _check_usage(u: AgentUsage) -> None:
    if not isinstance(u, AgentUsage):
        raise TypeError(f"the proposer's usage is a {type(u).__name__}, not an AgentUsage")
    for name in ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        v = getattr(u, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TypeError(f"AgentUsage.{name} must be a count (a whole number >= 0), not {v!r}")
    for name in ("dollars", "seconds"):
        if not _finite(getattr(u, name)) or getattr(u, name) < 0:
            raise TypeError(f"AgentUsage.{name} must be a finite number >= 0")
    if not isinstance(u.model, str) or not isinstance(u.proposer, str):
        raise TypeError("AgentUsage.model must be text")


def _finite(v: object) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False
