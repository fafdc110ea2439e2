"""The queue proposer: proposals a person (or a test) puts in a directory, taken in name order.

Each entry is either a unified diff `NNN-slug.patch` (its first line, if it is not part of the
diff, or else the slug, is the description) or a folder `NNN-slug/` holding replacement files at
their lab-relative paths (optional `description.txt`). Entries already proposed (the ledger's
history names their source) are skipped, so a resumed session continues where it stopped; the
session ends when the queue is empty.
"""

from __future__ import annotations

import re
from pathlib import Path

from controller.proposers.base import Proposal, ProposalContext

ENTRY = re.compile(r"^\d+-[\w.-]+$")


def _slug_description(name: str) -> str:
    stem = name.removesuffix(".patch")
    return stem.split("-", 1)[1].replace("-", " ").replace("_", " ") if "-" in stem else stem


def read_entry(path: Path) -> Proposal:
    source = f"queue:{path.name}"
    if path.is_dir():
        desc_file = path / "description.txt"
        desc = desc_file.read_text(errors="replace").strip().splitlines()[0] if desc_file.is_file() else ""
        files: dict[str, bytes | None] = {}
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path).as_posix()
            if rel == "description.txt" or f.is_dir():
                continue
            files[rel] = f.read_bytes()
        return Proposal(description=desc or _slug_description(path.name), files=files, source=source)
    text = path.read_text(errors="replace")
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
        done = {h.source for h in ctx.history}
        for entry in self.entries():
            if f"queue:{entry.name}" not in done:
                return read_entry(entry)
        return None
