"""The lab's git repository as the controller sees it: commit, branch, reset, diff.

Keep-or-revert is git: a kept experiment advances the session branch, a discarded one is reset
away (its diff is kept in the ledger first). All git calls go through `GitWorkspace._git`, with a
fixed committer identity, so nothing depends on the user's global git configuration.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

IDENTITY = ["-c", "user.name=Charter", "-c", "user.email=charter@localhost", "-c", "commit.gpgsign=false"]


class GitError(Exception):
    """A git operation failed; the message carries git's own one-line reason."""


class GitWorkspace:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _git(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(
            ["git", *IDENTITY, *args],
            cwd=self.root,
            input=input,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            reason = (proc.stderr or proc.stdout).strip().splitlines()
            raise GitError(f"git {args[0]} failed in {self.root}: {reason[-1] if reason else proc.returncode}")
        return proc.stdout

    # -- set-up ------------------------------------------------------------------------------
    def init(self, branch: str = "main") -> None:
        self._git("init", "-q", "-b", branch)

    # -- reading ------------------------------------------------------------------------------
    def head(self) -> str:
        return self._git("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        return self._git("rev-parse", "--abbrev-ref", "HEAD").strip()

    def branch_exists(self, name: str) -> bool:
        return self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).strip() != ""

    def dirty_paths(self) -> list[str]:
        """Paths with uncommitted changes or untracked files (ignored files excluded)."""
        out = self._git("status", "--porcelain", "-z", "--untracked-files=all")
        paths = []
        for entry in out.split("\0"):
            if len(entry) > 3:
                paths.append(entry[3:])
        return paths

    def tracked_files(self) -> list[str]:
        return [p for p in self._git("ls-files", "-z").split("\0") if p]

    def tag_messages(self, pattern: str) -> str:
        """The messages of every annotated tag matching `pattern`, concatenated."""
        return self._git("tag", "-l", pattern, "--format=%(contents)")

    # -- writing ------------------------------------------------------------------------------
    def commit_all(self, message: str) -> str:
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def checkout(self, name: str, create_at: str | None = None) -> None:
        if create_at is not None:
            self._git("checkout", "-q", "-B", name, create_at)
        else:
            self._git("checkout", "-q", name)

    def tag(self, name: str, message: str) -> None:
        """An annotated tag on HEAD (replacing one of the same name)."""
        self._git("tag", "-f", "-a", name, "-m", message)

    def worktree_add(self, path: Path, rev: str) -> None:
        """A worktree at `path`, detached at `rev` (a candidate's own tree; commits land in this repo)."""
        self._git("worktree", "add", "-q", "--detach", str(path), rev)

    def worktree_remove(self, path: Path) -> None:
        """Remove a worktree, whatever is in it: its files, then git's record of it."""
        self._git("worktree", "remove", "--force", "--force", str(path), check=False)
        shutil.rmtree(path, ignore_errors=True)  # a folder git no longer knew as a worktree
        self._git("worktree", "prune", check=False)

    def reset_hard(self, rev: str) -> None:
        """Return the work tree exactly to `rev`: tracked changes dropped, untracked files removed."""
        self._git("reset", "-q", "--hard", rev)
        self._git("clean", "-q", "-fd")
