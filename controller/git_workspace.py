"""The lab's git repository as the controller sees it: commit, branch, reset, diff.

Keep-or-revert is git: a kept experiment advances the session branch, a discarded one is reset
away (its diff is kept in the ledger first). All git calls go through `GitWorkspace._git`, with a
fixed committer identity, so nothing depends on the user's global git configuration.
"""

from __future__ import annotations

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

    def is_repo(self) -> bool:
        return (self.root / ".git").exists()

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

    def diff(self, base: str, target: str = "HEAD") -> str:
        return self._git("diff", "--no-color", "--no-ext-diff", base, target)

    def changed_files(self, base: str, target: str = "HEAD") -> list[tuple[str, str]]:
        """(status letter, path) for each file that differs; renames are reported as D + A."""
        out = self._git("diff", "--name-status", "--no-renames", "-z", base, target)
        parts = [p for p in out.split("\0") if p]
        return [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]

    def show_file(self, rev: str, path: str) -> str | None:
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=self.root, capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else None

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

    def reset_hard(self, rev: str) -> None:
        """Return the work tree exactly to `rev`: tracked changes dropped, untracked files removed."""
        self._git("reset", "-q", "--hard", rev)
        self._git("clean", "-q", "-fd")

    def apply_patch(self, patch: str) -> None:
        self._git("apply", "--whitespace=nowarn", "-", input=patch)

    def add_note(self, rev: str, ref: str, text: str) -> None:
        self._git("notes", "--ref", ref, "add", "-f", "-m", text, rev)

    def read_notes(self, ref: str) -> list[tuple[str, str]]:
        """(commit, note text) for every note under `ref`."""
        out = self._git("notes", "--ref", ref, "list", check=False)
        notes = []
        for line in out.splitlines():
            note_obj, commit = line.split()
            notes.append((commit, self._git("cat-file", "-p", note_obj)))
        return notes
