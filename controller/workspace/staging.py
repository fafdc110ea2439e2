"""Staging a proposal: turn it into the exact list of file changes it would make, without touching the lab.

The lab's tracked files are copied into a scratch directory, the proposal (replacement files or
a unified diff via `git apply`) is applied there, and the two trees are compared. The harm test
judges that list; only if it passes does the controller copy the changed files into the lab. A
patch that does not apply is a refusal with a reason, not an exception.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.workspace.git import GitWorkspace
from controller.policy.harm_test import Change
from controller.proposers.base import Proposal


class StagingError(Exception):
    """The proposal cannot be turned into a change (bad patch, bad path)."""


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (IsADirectoryError, FileNotFoundError):
        return None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _all_files(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            found.add((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def stage(lab_root: Path, proposal: Proposal) -> list[Change]:
    """The changes `proposal` makes to the lab's tracked files, computed in a scratch copy."""
    tracked = GitWorkspace(lab_root).tracked_files()
    with tempfile.TemporaryDirectory(prefix="charter-stage-") as tmp:
        scratch = Path(tmp) / "lab"
        scratch.mkdir()
        for rel in tracked:
            dst = scratch / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = lab_root / rel
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif src.is_file():
                shutil.copyfile(src, dst)
        if proposal.patch is not None:
            proc = subprocess.run(
                ["git", "apply", "--whitespace=nowarn", "-"], cwd=scratch, input=proposal.patch,
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or ["unknown reason"])[0]
                raise StagingError(f"patch does not apply: {why}")
        for rel, content in proposal.files.items():
            p = Path(rel)
            if p.is_absolute() or ".." in p.parts or not rel:
                raise StagingError(f"proposal names a path outside the lab: {rel!r}")
            dst = scratch / rel
            if content is None:
                if dst.is_symlink() or dst.is_file():
                    dst.unlink()
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink():
                dst.unlink()
            dst.write_bytes(content)

        changes = []
        for rel in sorted(set(tracked) | _all_files(scratch)):
            before, after = lab_root / rel, scratch / rel
            existed = rel in tracked
            exists = after.is_symlink() or after.exists()
            if not exists and existed:
                changes.append(Change(rel, "D", _text(_read(before)), None))
                continue
            if not exists:
                continue
            if after.is_symlink():
                if not (existed and before.is_symlink() and os.readlink(before) == os.readlink(after)):
                    changes.append(Change(rel, "M" if existed else "A", None, os.readlink(after), is_symlink=True))
                continue
            new = _read(after)
            old = _read(before) if existed else None
            if existed and new == old:
                continue
            changes.append(Change(rel, "M" if existed else "A", _text(old), _text(new)))
        return changes


def unified_diff(changes: list[Change]) -> str:
    parts = []
    for c in changes:
        old = (c.old_text or "").splitlines(keepends=True)
        new = (c.new_text or "").splitlines(keepends=True)
        a = f"a/{c.path}" if c.status != "A" else "/dev/null"
        b = f"b/{c.path}" if c.status != "D" else "/dev/null"
        parts.extend(difflib.unified_diff(old, new, a, b))
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def apply_to_lab(lab_root: Path, changes: list[Change]) -> None:
    """Write staged changes into the lab (only after the harm test passed them)."""
    for c in changes:
        dst = lab_root / c.path
        if c.status == "D":
            dst.unlink(missing_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(c.new_text or "")
