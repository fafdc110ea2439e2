"""Anchors: the ledger's chain head recorded outside DuckDB, so cutting off the tail is evident.

At each session end the controller writes an annotated git tag `charter-anchor/<seq>` in the lab
whose message holds the head's seq and hash. `charter ledger verify` checks the newest anchor:
the ledger must still hold that seq with that hash. Someone who truncates the events table (and
so the chain, which still verifies on its own) is caught by the anchor.
"""

from __future__ import annotations

import re

from controller.workspace.git import GitError

TAG_PREFIX = "charter-anchor/"
MESSAGE = re.compile(r"ledger-anchor seq=(\d+) hash=([0-9a-f]{64})")


def write_anchor(lab, head: tuple[int, str], session: str) -> str:
    seq, digest = head
    name = f"{TAG_PREFIX}{seq:012d}"
    lab.git.tag(name, f"ledger-anchor seq={seq} hash={digest} session={session}")
    return name


def newest_anchor(lab) -> tuple[int, str] | None:
    try:
        out = lab.git.tag_messages(f"{TAG_PREFIX}*")
    except GitError:
        return None
    best = None
    for m in MESSAGE.finditer(out):
        seq, digest = int(m.group(1)), m.group(2)
        if best is None or seq > best[0]:
            best = (seq, digest)
    return best
