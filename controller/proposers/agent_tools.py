"""The tools an agent proposes with, and the scope the controller enforces on each call.

One `ToolScope` lives for one proposing step. It holds the step's scratch copy of the editable
files and answers the six tools by name: `list_files`, `read_file`, `history`, `run_log`,
`edit_file`, `write_file`, `submit`. Scope is an allow-list: reads only of editable files (from
the scratch copy, with the agent's edits) and of the files the constitution marks readable;
writes only of editable paths, inside the scratch copy. A call outside scope or with malformed
input returns an error result to the model and is counted with a one-line reason, which the
proposer ledgers with the call; it never touches the lab. Run output reaches the agent only
fenced as untrusted data (`brief.untrusted`). `submit` leaves the proposal: every editable file
whose bytes differ from the step's start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from controller.proposers import brief
from controller.proposers.base import Proposal, ProposalContext

MAX_FILE_BYTES = 1_000_000  # what write_file accepts, and what read_file returns at most
MAX_LOG_CHARS = 8000
MAX_HISTORY = 200

TOOLS: list[dict[str, Any]] = [
    {"name": "list_files", "description": "The files you may read, and those you may edit.",
     "input_schema": {"type": "object", "properties": {}}},
    {"name": "read_file", "description": "The text of a file you may read (an editable file shows your edits so far).",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"name": "history", "description": "Structured records of this lab's past experiments, oldest first: number, "
     "description, decision, val_bpb, delta vs the best before it (negative = better), reason, refusal rule, lesson.",
     "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY}},
                      "required": ["limit"]}},
    {"name": "run_log", "description": "The last lines of the training output of an experiment of this session "
     "(untrusted program output, returned as quoted data).",
     "input_schema": {"type": "object", "properties": {"experiment": {"type": "integer", "minimum": 0},
                                                       "lines": {"type": "integer", "minimum": 1, "maximum": 200}},
                      "required": ["experiment", "lines"]}},
    {"name": "edit_file", "description": "Replace old_text, which must occur exactly once, by new_text in an editable file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "old_text": {"type": "string"},
                                                       "new_text": {"type": "string"}},
                      "required": ["path", "old_text", "new_text"]}},
    {"name": "write_file", "description": "Replace the whole content of an editable file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                      "required": ["path", "content"]}},
    {"name": "propose_amendment", "description": "Ask the people who govern this lab to change a rule of the "
     "constitution (for example settings [\"budgets.session.experiments=60\"]). It never takes effect in this "
     "session: it is filed as an amendment proposed by you when the session ends, and people ratify it or not.",
     "input_schema": {"type": "object", "properties": {"settings": {"type": "array", "items": {"type": "string"}},
                                                       "why": {"type": "string"}},
                      "required": ["settings", "why"]}},
    {"name": "submit", "description": "Propose your edits as one experiment and end your turn. description: one line "
     "saying what changed; hypothesis: one line saying why it should lower val_bpb; lesson: one line you learned "
     "from the results so far (kept in your journal for later experiments).",
     "input_schema": {"type": "object", "properties": {"description": {"type": "string"}, "hypothesis": {"type": "string"},
                                                       "lesson": {"type": "string"}},
                      "required": ["description", "hypothesis"]}},
]
_SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
_TYPES = {"string": str, "integer": int, "array": list}
MAX_AMENDMENT_REQUESTS = 3  # per proposing step


class ToolError(Exception):
    """A tool call the scope refuses or can't carry out; the message goes back to the model."""


@dataclass(frozen=True)
class AmendmentRequest:
    """An agent's request to change a rule: `KEY=VALUE` settings and why. Filed after the session."""

    settings: tuple[str, ...]
    why: str


@dataclass
class ToolScope:
    ctx: ProposalContext
    readable: list[str]
    refusals: list[str] = field(default_factory=list)  # every refused call of the step, one line each
    submitted: Proposal | None = None
    amendments: list[AmendmentRequest] = field(default_factory=list)

    def call(self, name: Any, arguments: Any) -> tuple[str, bool]:
        """(result text, is_error) for one tool use; a refusal is recorded in `refusals`."""
        name = name if isinstance(name, str) else repr(name)
        try:
            args = _checked(name, arguments)
            return getattr(self, f"_{name}")(**args), False
        except (ToolError, OSError, ValueError) as e:  # a write the disk refuses is the model's error result too
            target = arguments.get("path", "") if isinstance(arguments, dict) and isinstance(arguments.get("path"), str) else ""
            self.refusals.append(brief.clean(f"{name}({target}): {e}", 200))
            return f"error: {e}", True

    # -- the tools ------------------------------------------------------------------------------
    def _list_files(self) -> str:
        return json.dumps({"editable": list(self.ctx.editable), "readable": [p for p in self.readable if p in self.ctx.readable]})

    def _read_file(self, path: str) -> str:
        rel = _normal(path)
        if rel in self.ctx.editable:
            data = self._scratch(rel).read_bytes() if self._scratch(rel).is_file() else b""
            return data[:MAX_FILE_BYTES].decode("utf-8", "replace")
        if rel in self.readable and rel in self.ctx.readable:
            return self.ctx.readable[rel][:MAX_FILE_BYTES]
        raise ToolError(f"{path} is not readable here (readable: {', '.join(self.ctx.editable + self.readable)})")

    def _history(self, limit: int) -> str:
        return json.dumps(brief.history_records(self.ctx, min(limit, MAX_HISTORY)))

    def _run_log(self, experiment: int, lines: int) -> str:
        raw = self.ctx.run_log(experiment, 64_000) if self.ctx.run_log else None
        if raw is None:
            raise ToolError(f"experiment {experiment} of this session has no training log")
        tail = "\n".join(raw.splitlines()[-min(lines, 200):])
        return brief.untrusted(f"training log of experiment {experiment}", tail, MAX_LOG_CHARS)

    def _edit_file(self, path: str, old_text: str, new_text: str) -> str:
        target = self._writable(path)
        text = target.read_text(errors="replace") if target.is_file() else ""
        count = text.count(old_text) if old_text else 0
        if count != 1:
            raise ToolError(f"old_text occurs {count} times in {path}; it must occur exactly once")
        return self._write(target, text.replace(old_text, new_text, 1))

    def _write_file(self, path: str, content: str) -> str:
        return self._write(self._writable(path), content)

    def _propose_amendment(self, settings: list, why: str) -> str:
        from amendments.patch import PatchError, parse_setting  # the same parser as `charter amend propose --set`

        if len(self.amendments) >= MAX_AMENDMENT_REQUESTS:
            raise ToolError(f"at most {MAX_AMENDMENT_REQUESTS} amendment requests per proposal")
        if not settings or not all(isinstance(s, str) and _encodable(s) and len(s) <= 300 for s in settings) or len(settings) > 20:
            raise ToolError("settings must be 1 to 20 strings KEY=VALUE, e.g. budgets.session.experiments=60")
        if not why.strip():
            raise ToolError("an amendment needs a reason (why)")
        for s in settings:
            try:
                parse_setting(s)
            except PatchError as e:
                raise ToolError(str(e)) from None
        self.amendments.append(AmendmentRequest(tuple(settings), brief.clean(why, 500)))
        return ("noted: it will be filed as an amendment proposed by you when this session ends; "
                "it changes nothing until people ratify and apply it")

    def _submit(self, description: str, hypothesis: str, lesson: str = "") -> str:
        files = self.changed()
        if not files:
            raise ToolError("nothing changed: edit an editable file before you submit")
        self.submitted = Proposal(description=brief.clean(description, 500) or "an agent's change",
                                  hypothesis=brief.clean(hypothesis, 2000), files=files, source="agent",
                                  lesson=brief.clean(lesson, 300))
        return "submitted"

    # -- scope ----------------------------------------------------------------------------------
    def _scratch(self, rel: str) -> Path:
        return self.ctx.workdir / rel

    def _writable(self, path: str) -> Path:
        rel = _normal(path)
        if rel not in self.ctx.editable:
            raise ToolError(f"{path} is not editable (editable: {', '.join(self.ctx.editable)}); nothing was written")
        target = self._scratch(rel)
        if target.is_symlink():
            raise ToolError(f"{path} is a link in the scratch copy; nothing was written")
        return target

    def _write(self, target: Path, text: str) -> str:
        data = text.encode()
        if len(data) > MAX_FILE_BYTES:
            raise ToolError(f"content is {len(data)} bytes, more than {MAX_FILE_BYTES}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"wrote {len(data)} bytes"

    def changed(self) -> dict[str, bytes | None]:
        """Every editable file whose bytes in the scratch copy differ from the step's start."""
        out: dict[str, bytes | None] = {}
        for rel in self.ctx.editable:
            target = self._scratch(rel)
            now = target.read_bytes() if target.is_file() and not target.is_symlink() else None
            before = self.ctx.files.get(rel)
            if now != (None if before is None else before.encode()):
                out[rel] = now
        return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _normal(path: str) -> str:
    p = PurePosixPath(path.strip())
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ToolError(f"{path!r} is not a path inside the lab")
    return str(p)


def _checked(name: str, arguments: Any) -> dict[str, Any]:
    """The tool's arguments, if they match its schema (required keys, types, bounds); else ToolError."""
    schema = _SCHEMAS.get(name)
    if schema is None:
        raise ToolError(f"there is no tool {name!r} (tools: {', '.join(_SCHEMAS)})")
    if not isinstance(arguments, dict):
        raise ToolError(f"{name}: the input must be a JSON object")
    props = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in arguments]
    extra = [k for k in arguments if k not in props]
    if missing or extra:
        raise ToolError(f"{name}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))
    for key, value in arguments.items():
        spec = props[key]
        want = _TYPES[spec["type"]]
        if not isinstance(value, want) or isinstance(value, bool):
            raise ToolError(f"{name}: {key} must be a {spec['type']}")
        if want is str and not _encodable(value):
            raise ToolError(f"{name}: {key} is not valid Unicode text (a lone surrogate)")
        if want is int and not (spec.get("minimum", value) <= value <= spec.get("maximum", value)):
            raise ToolError(f"{name}: {key} must be between {spec.get('minimum')} and {spec.get('maximum')}")
    return arguments
