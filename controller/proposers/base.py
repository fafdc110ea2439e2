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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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


@dataclass(frozen=True)
class ProposerResult:
    proposal: Proposal | None  # None: nothing more to propose
    usage: AgentUsage | None = None


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


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> ProposerResult | Proposal | None:
        """The next proposal (None when there is nothing more to try), with its usage if any."""
        ...


def as_result(value: ProposerResult | Proposal | None) -> ProposerResult:
    """Normalize what a proposer returned; anything else is a malformed result."""
    if isinstance(value, ProposerResult):
        if value.proposal is not None and not isinstance(value.proposal, Proposal):
            raise TypeError(f"the proposer's result holds a {type(value.proposal).__name__}, not a Proposal")
        if value.usage is not None and not isinstance(value.usage, AgentUsage):
            raise TypeError(f"the proposer's usage is a {type(value.usage).__name__}, not an AgentUsage")
        return value
    if value is None or isinstance(value, Proposal):
        return ProposerResult(value)
    raise TypeError(f"the proposer returned a {type(value).__name__}, not a Proposal")
