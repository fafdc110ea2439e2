"""What a proposer gets (`ProposalContext`) and what it returns (`Proposal`).

A proposal is a description, a hypothesis and a change to the lab: either replacement file
contents (None deletes a file) or a unified diff. The controller materializes it, harm-tests it
and applies it; a proposer never touches the workspace itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Proposal:
    description: str
    hypothesis: str = ""
    files: dict[str, bytes | None] = field(default_factory=dict)  # lab-relative path -> new content
    patch: str | None = None  # a unified diff, applied with `git apply`
    source: str = ""  # where it came from (e.g. the queue entry), for resuming and the ledger
    params: dict[str, float] | None = None  # the hyperparameters it sets, when known


@dataclass(frozen=True)
class HistoryItem:
    """One past experiment, as proposers may learn from it (structured, never raw logs)."""

    description: str
    decision: str
    val_bpb: float | None
    source: str
    params: dict[str, float] | None
    improvement: float | None  # best before it minus its val_bpb; positive = it helped


@dataclass(frozen=True)
class ProposalContext:
    lab_root: Path
    editable: list[str]
    files: dict[str, str]  # current text of each editable file
    history: list[HistoryItem]
    best_bpb: float | None
    experiment: int


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        """The next proposal, or None when there is nothing more to try."""
        ...
