"""Proposers: where ideas come from. Every one returns a `Proposal`; none writes the workspace.

`offline` searches train.py's hyperparameter block (the default, no network); `queue` takes
proposals a person put in a directory. Later kinds (anthropic, command) plug in through
`make_proposer` and go through exactly the same governance.
"""

from __future__ import annotations

from pathlib import Path

from controller.proposers.base import HistoryItem, Proposal, ProposalContext, Proposer
from controller.proposers.offline import OfflineProposer
from controller.proposers.queue import QueueProposer


class ProposerError(Exception):
    """A proposer that can't be built from the given options."""


def make_proposer(kind: str, *, seed: int = 0, queue_dir: str | Path | None = None) -> Proposer:
    if kind == "offline":
        return OfflineProposer(seed=seed)
    if kind == "queue":
        if queue_dir is None:
            raise ProposerError("the queue proposer needs --queue DIR")
        return QueueProposer(Path(queue_dir))
    raise ProposerError(f"proposer {kind!r} is not available here (choose offline or queue)")


__all__ = ["HistoryItem", "Proposal", "ProposalContext", "Proposer", "ProposerError", "make_proposer"]
