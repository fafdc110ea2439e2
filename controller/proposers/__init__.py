"""Proposers: where ideas come from. Every one returns a `Proposal`; none writes the workspace.

`offline` searches train.py's hyperparameter block (the default, no network); `queue` takes
proposals a person put in a directory. Kinds are found through the registry
(`controller.proposers.registry`), so a new one is a module plus one entry.
"""

from __future__ import annotations

from controller.proposers.base import (
    AgentBudget, AgentUsage, HistoryItem, Proposal, ProposalContext, Proposer, ProposerResult, as_result,
)
from controller.proposers.registry import ProposerError, ProposerOptions, available, make_proposer

__all__ = [
    "AgentBudget", "AgentUsage", "HistoryItem", "Proposal", "ProposalContext", "Proposer", "ProposerError",
    "ProposerOptions", "ProposerResult", "as_result", "available", "make_proposer",
]
