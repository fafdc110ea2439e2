"""Commits on the lab's main line (branch `main`), never on a session branch.

A proposal's file and an applied amendment's constitution are lab history, not experiments: they
are committed on `main` whatever branch the lab has checked out. When `main` is checked out the
commit is made in the lab itself; otherwise in a temporary git worktree of `main`, so the
checked-out session branch and its work tree are left exactly as they were. Only the named files
are committed. The edge to git; it goes through `GitWorkspace` (a fixed committer identity).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from controller.workspace.git import GitError, GitWorkspace

MAIN = "main"


def commit_on_main(root: Path, files: dict[str, str], message: str) -> str:
    """Write `files` (lab-relative path -> text) on `main` in one commit; its sha."""
    lab = GitWorkspace(root)
    if not lab.branch_exists(MAIN):
        raise GitError(f"the lab at {root} has no branch {MAIN}: amendments are committed on its main line")
    if lab.branch() == MAIN:
        return _commit(lab, root, files, message)
    with tempfile.TemporaryDirectory(prefix="charter-main-") as tmp:
        where = Path(tmp) / "main"
        lab._git("worktree", "prune", check=False)  # one left by a process that died is gone with its temp dir
        lab._git("worktree", "add", "-q", str(where), MAIN)
        try:
            return _commit(GitWorkspace(where), where, files, message)
        finally:
            lab._git("worktree", "remove", "--force", str(where), check=False)
            lab._git("worktree", "prune", check=False)


def _commit(git: GitWorkspace, root: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
    git._git("add", "--", *files)
    git._git("commit", "-q", "-m", message, "--", *files)
    return git.head()


def read_on_main(root: Path, rel: str) -> str | None:
    """A file's exact text as committed on `main` (None if it is not there); bytes, not text mode,
    so line ends come back as they were committed."""
    proc = subprocess.run(["git", "show", f"{MAIN}:{rel}"], cwd=root, capture_output=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def switch_to_main(root: Path) -> str:
    """Check `main` out in the lab (its work tree must be clean); the branch that was checked out."""
    lab = GitWorkspace(root)
    before = lab.branch()
    if before != MAIN:
        lab.checkout(MAIN)
    return before
