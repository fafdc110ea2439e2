"""The proposer registry: a kind name -> a factory that builds the proposer from options.

Adding a kind is one module with a `build(options)` function plus one entry in `BUILTIN`; an
installed package adds one without touching Charter through the `charter.proposers` entry-point
group (`name = "package.module:build"`). The constitution names the kind as a plain string, so
an unknown kind is refused here with the list of what is installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from constitution import Constitution
from controller.proposers.base import Proposer

ENTRY_POINT_GROUP = "charter.proposers"
BUILTIN = {
    "offline": "controller.proposers.offline:build",
    "queue": "controller.proposers.queue:build",
    "anthropic": "controller.proposers.anthropic_agent:build",
    "command": "controller.proposers.command:build",
}


class ProposerError(Exception):
    """A proposer that can't be built from the given options."""


@dataclass(frozen=True)
class ProposerOptions:
    rules: Constitution
    seed: int = 0
    queue_dir: Path | None = None


Factory = Callable[[ProposerOptions], Proposer]


def _targets() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def available() -> list[str]:
    return sorted(_targets())


def factory(kind: str) -> Factory:
    target = _targets().get(kind)
    if target is None:
        raise ProposerError(f"proposer {kind!r} is not installed here (available: {', '.join(available())})")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "build")
    except (ImportError, AttributeError) as e:
        raise ProposerError(f"proposer {kind!r} ({target}) cannot be loaded: {e}") from None


def make_proposer(kind: str, options: ProposerOptions) -> Proposer:
    return factory(kind)(options)
