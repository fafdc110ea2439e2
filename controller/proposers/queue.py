"""The queue proposer: proposals a person (or a test) puts in a directory, taken in name order.

Each entry is either a unified diff `NNN-slug.patch` (its first line, if it is not part of the
diff, or else the slug, is the description) or a folder `NNN-slug/` holding replacement files at
their lab-relative paths (optional `description.txt`). Entries already proposed (the ledger's
history names their source) are skipped, so a resumed session continues where it stopped; the
session ends when the queue is empty. An entry that can't be read as given (a symlink anywhere in
it, a file too large, unreadable bytes) becomes a proposal marked `malformed`, which the
controller records as a refusal, so the next entry is taken and a resume never meets it again.
"""

from __future__ import annotations

import re
from pathlib import Path

from controller.proposers.base import Proposal, ProposalContext

ENTRY = re.compile(r"^\d+-[\w.-]+$")
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class MalformedEntry(Exception):
    """A queue entry that can't be turned into a proposal; the message says why."""


def _slug_description(name: str) -> str:
    stem = name.removesuffix(".patch")
    return stem.split("-", 1)[1].replace("-", " ").replace("_", " ") if "-" in stem else stem


def read_entry(path: Path) -> Proposal:
    source = f"queue:{path.name}"
    try:
        return _read_entry(path, source)
    except MalformedEntry as e:
        return Proposal(description=_slug_description(path.name), source=source, malformed=str(e))
    except (OSError, UnicodeError) as e:
        return Proposal(description=_slug_description(path.name), source=source,
                        malformed=f"queue entry {path.name} cannot be read ({type(e).__name__}: {e})")


def _regular_file(f: Path, entry: Path) -> bytes:
    """The bytes of a plain file of the entry; links are refused, never followed."""
    rel = f.relative_to(entry.parent).as_posix()
    if f.is_symlink():
        raise MalformedEntry(f"{rel} is a symlink; a queue entry holds plain files only")
    if not f.is_file():
        raise MalformedEntry(f"{rel} is not a plain file")
    if f.stat().st_size > MAX_ENTRY_BYTES:
        raise MalformedEntry(f"{rel} is larger than {MAX_ENTRY_BYTES // (1024 * 1024)} MB")
    return f.read_bytes()


def _read_entry(path: Path, source: str) -> Proposal:
    if path.is_symlink():
        raise MalformedEntry(f"{path.name} is a symlink; a queue entry holds plain files only")
    if path.is_dir():
        desc_file = path / "description.txt"
        desc = ""
        if desc_file.exists() or desc_file.is_symlink():
            lines = _regular_file(desc_file, path).decode("utf-8", "replace").strip().splitlines()
            desc = lines[0] if lines else ""
        files: dict[str, bytes | None] = {}
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path).as_posix()
            if rel == "description.txt" or (f.is_dir() and not f.is_symlink()):
                continue
            files[rel] = _regular_file(f, path)
        return Proposal(description=desc or _slug_description(path.name), files=files, source=source)
    text = _regular_file(path, path).decode("utf-8", "replace")
    first = text.splitlines()[0].strip() if text.strip() else ""
    is_diff_line = first.startswith(("diff --git", "--- ", "+++ ", "@@", "Index:", "From "))
    desc = first if first and not is_diff_line else _slug_description(path.name)
    return Proposal(description=desc, patch=text, source=source)


class QueueProposer:
    name = "queue"

    def __init__(self, directory: Path):
        self.directory = directory

    def entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.iterdir()
            if ENTRY.match(p.name) and (p.is_dir() or p.name.endswith(".patch"))
        )

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        done = {h.source for h in [*ctx.history, *ctx.in_flight]}  # decided, or running now
        for entry in self.entries():
            if f"queue:{entry.name}" not in done:
                return read_entry(entry)
        return None


def build(options) -> QueueProposer:
    from controller.proposers.registry import ProposerError

    if options.queue_dir is None:
        raise ProposerError("the queue proposer needs --queue DIR")
    return QueueProposer(Path(options.queue_dir))
