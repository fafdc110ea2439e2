"""Where a candidate's change is made and run: the lab's own work tree, or a git worktree.

One experiment at a time changes the lab's work tree itself (`InPlace`): the change is committed
on the session branch and reset away unless it is kept. With several in flight, each candidate
gets a git worktree of its own (`Worktree`), detached at the incumbent it was proposed from; its
commit lives in the lab's repository, and the session branch (the lab's work tree, where
proposers read the incumbent) moves only when a candidate is kept. Worktrees live outside the
lab and its state dir (a run's sandbox shows neither another candidate's tree nor the ledger):
under the cache dir, one folder per lab, removed when their experiment is decided and swept at a
resume (`clean_worktrees`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from controller.execution.runner import cache_dir
from controller.workspace.git import GitWorkspace
from controller.workspace.lab import Lab


def worktrees_dir(lab: Lab) -> Path:
    return cache_dir() / "worktrees" / hashlib.sha256(str(lab.root.resolve()).encode()).hexdigest()[:12]


@dataclass
class InPlace:
    """The lab's work tree: the branch is at a kept commit already; a discard resets it away."""

    lab: Lab

    @property
    def root(self) -> Path:
        return self.lab.root

    @property
    def git(self) -> GitWorkspace:
        return self.lab.git

    def keep(self, commit: str) -> None:
        pass

    def discard(self, parent: str) -> None:
        self.lab.git.reset_hard(parent)

    def close(self) -> None:
        pass


@dataclass
class Worktree:
    """A candidate's own worktree; the lab's work tree (the session branch) moves to a kept commit."""

    lab: Lab
    path: Path

    @classmethod
    def create(cls, lab: Lab, base: str, name: str) -> Worktree:
        path = worktrees_dir(lab) / name
        if path.exists():  # left by a controller that died: nothing in it is wanted
            lab.git.worktree_remove(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lab.git.worktree_add(path, base)
        return cls(lab, path)

    @property
    def root(self) -> Path:
        return self.path

    @property
    def git(self) -> GitWorkspace:
        return GitWorkspace(self.path)

    def keep(self, commit: str) -> None:
        self.lab.git.reset_hard(commit)

    def discard(self, parent: str) -> None:
        pass  # the lab's work tree never had it

    def close(self) -> None:
        self.lab.git.worktree_remove(self.path)


def clean_worktrees(lab: Lab) -> int:
    """Remove every candidate worktree of this lab (a resume: none of them is in flight any more);
    how many there were."""
    top = worktrees_dir(lab)
    found = sorted(top.iterdir()) if top.is_dir() else []
    for path in found:
        lab.git.worktree_remove(path)
    return len(found)
