"""A proposal: the exact text of the next constitution, checked, diffed, classified and named.

`build_proposal` validates the proposed text fully (the schema, then succession: version = the
version in force + 1 and parent_hash = the hash in force, and never a version at or below the
highest one ever applied), computes the semantic diff against the constitution in force and
classifies its tier. The amendment id is the sha256 of the exact proposed text (UTF-8 bytes), so
ratifying an id ratifies those bytes and nothing else. The lab keeps each proposal as
`amendments/NNNN-<slug>.toml` (`render_file` / `read_file`): the id, who proposed it and why, the
tier and its reasons, the diff in words, the proposed text itself and any immutable file it carries
(a new `prepare.py`): such a file is bound to the id through its sha256 pin in the text, so the
file and its pin are ratified together. Pure: no files, no git.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import tomlkit

from constitution import Constitution, ConstitutionError, check_succession, constitution_hash, parse_text

from constitution.diff import Change, semantic_diff
from amendments.errors import AmendmentRefused
from amendments.tiers import Classification, classify

ID_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_FORMAT = 1


def amendment_id(text: str) -> str:
    """The id of a proposal: sha256 of its exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Proposal:
    id: str
    text: str  # the exact proposed constitution
    rules: Constitution
    hash: str  # canonical hash of the proposed constitution
    parent_version: int
    parent_hash: str
    changes: tuple[Change, ...]
    classification: Classification
    files: dict[str, str] = field(default_factory=dict)  # immutable files it carries, path -> exact text

    @property
    def version(self) -> int:
        return self.rules.meta.version


def file_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_problems(rules: Constitution, parent: Constitution, files: dict[str, str], current: dict[str, str | None]) -> list[str]:
    """Why carried immutable files don't fit `rules` (the proposed constitution): each must be an
    immutable path whose new pin is the file's sha256, and a pin that changes needs its file,
    unless the lab's file (`current`, path -> sha256 or None) already matches it."""
    old = parent.evaluation.immutable
    problems = []
    pins = rules.evaluation.immutable
    for path, text in sorted(files.items()):
        if path not in pins:
            problems.append(f"{path} is not an immutable file of the proposed constitution (evaluation.immutable)")
        elif pins[path] != file_sha256(text):
            problems.append(f'evaluation.immutable."{path}" must be {file_sha256(text)}, the sha256 of the {path} it carries')
    for path, pin in sorted(pins.items()):
        if pin and pin != old.get(path) and path not in files and current.get(path) != pin:
            problems.append(f'evaluation.immutable."{path}" pins a {path} the lab does not have: carry it (--immutable {path}=FILE)')
    return problems


def build_proposal(text: str, parent: Constitution, highest_applied: int = 0, label: str = "proposal",
                   files: dict[str, str] | None = None, current: dict[str, str | None] | None = None) -> Proposal:
    """Check `text` as the successor of `parent` (the constitution in force), with the immutable
    `files` it carries (`current`: the lab's immutable files by path -> sha256); a Proposal, or
    ConstitutionError (one line per problem) / AmendmentRefused (a rollback, no change)."""
    files = dict(files or {})
    rules = parse_text(text, label)
    version = rules.meta.version
    if highest_applied and version <= highest_applied:
        raise AmendmentRefused(
            f"{label}: meta.version {version} is at or below version {highest_applied}, the highest ever applied: "
            f"a rollback is refused; undo a change with a new amendment (version {parent.meta.version + 1})"
        )
    problems = check_succession(parent, rules)
    if current is not None:
        problems += file_problems(rules, parent, files, current)
    if problems:
        raise ConstitutionError([f"{label}: {p}" for p in problems])
    changes = semantic_diff(parent.model_dump(mode="json"), rules.model_dump(mode="json"))
    classification = classify(changes, parent, rules)
    unchanged = [p for p, t in files.items() if (current or {}).get(p) == file_sha256(t)]
    if unchanged:
        raise AmendmentRefused(f"{label}: carries {', '.join(sorted(unchanged))} unchanged (it is the lab's file as it is)")
    if not classification.reasons:
        raise AmendmentRefused(f"{label}: changes no rule of version {parent.meta.version} (only its version and parent hash)")
    return Proposal(
        id=amendment_id(text), text=text, rules=rules, hash=constitution_hash(rules),
        parent_version=parent.meta.version, parent_hash=constitution_hash(parent),
        changes=tuple(changes), classification=classification, files=files,
    )


def slug(why: str, max_len: int = 40) -> str:
    """A file-name slug from the reason: 'Raise the budget!' -> 'raise-the-budget'."""
    words = re.findall(r"[a-z0-9]+", why.lower())
    out = ""
    for w in words:
        if len(out) + len(w) + (1 if out else 0) > max_len:
            break
        out = f"{out}-{w}" if out else w
    return out or "amendment"


def file_name(number: int, why: str) -> str:
    return f"amendments/{number:04d}-{slug(why)}.toml"


def render_file(p: Proposal, number: int, by: str, why: str, at: str, needed: int) -> str:
    """The readable record of a proposal, as TOML (its `constitution` is the exact text)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Charter amendment {number:04d}: {p.classification.tier.label}, proposed by {by} at {at}."))
    doc.add(tomlkit.comment("`id` is the sha256 of `constitution` exactly: an edit of the proposed text is detected"))
    doc.add(tomlkit.comment("(ratify, apply and `charter ledger verify` recompute it). Ratify it with"))
    doc.add(tomlkit.comment(f"  charter amend ratify {p.id[:12]} --by NAME --key ~/.ssh/id_ed25519"))
    doc.add(tomlkit.nl())
    doc["format"] = FILE_FORMAT
    doc["id"] = p.id
    doc["number"] = number
    doc["proposed_by"] = by
    doc["proposed_at"] = at
    doc["why"] = why
    doc["tier"] = p.classification.tier.label
    doc["ratifications_needed"] = needed
    doc["parent_version"] = p.parent_version
    doc["parent_hash"] = p.parent_hash
    doc["version"] = p.version
    doc["hash"] = p.hash
    changes = tomlkit.array()
    for r in p.classification.reasons:
        changes.append(r.words)
    changes.multiline(True)
    doc["changes"] = changes
    doc["constitution"] = _exact_string(p.text)
    if p.files:
        files = tomlkit.table()
        for path, text in sorted(p.files.items()):
            files[path] = _exact_string(text)
        doc["files"] = files
    return tomlkit.dumps(doc)


def _exact_string(text: str):
    """A TOML string that reads back as exactly `text`: multi-line where that is exact, else one
    line (a multi-line TOML string normalises CR LF line ends)."""
    probe = tomlkit.document()
    probe["s"] = tomlkit.string(text, multiline=True)
    if tomllib.loads(tomlkit.dumps(probe))["s"] == text:
        return tomlkit.string(text, multiline=True)
    return tomlkit.string(text)


@dataclass(frozen=True)
class ProposalFile:
    id: str
    text: str  # the proposed constitution as the file holds it now
    fields: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # the immutable files it carries

    @property
    def content_id(self) -> str:
        return amendment_id(self.text)


def read_file(data: str, label: str) -> ProposalFile:
    """Parse a proposal file; AmendmentRefused with one line if it is not one."""
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as e:
        raise AmendmentRefused(f"{label} is not a readable proposal file ({e})") from None
    pid, text, files = doc.get("id"), doc.get("constitution"), doc.get("files", {})
    if not isinstance(pid, str) or not isinstance(text, str):
        raise AmendmentRefused(f"{label} is not a proposal file (it needs `id` and `constitution` strings)")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise AmendmentRefused(f"{label}: `files` must map immutable paths to their text")
    return ProposalFile(pid, text, doc, files)
