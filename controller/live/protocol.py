"""The live channel's wire protocol, version 1: what a client and a running controller say to each other.

A connection to the controller's Unix socket carries JSON frames, one per line (UTF-8, `\\n`-
terminated). The client opens with a hello (`{"hello": "charter-live", "version": 1}`); the server
answers with its own hello, or with a one-line error when the versions differ and closes. Then
each request frame (`{"op": ..., fields}`, at most `MAX_REQUEST_BYTES`) gets one reply frame,
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`, except `watch`, which turns the connection
into a stream of `{"type": "events"}` and `{"type": "status"}` frames until the client closes it.
`OPS` is the one table of operations: per op its request class, whether it is read-only (changes
nothing the controller owns) and the `LiveSource` method that answers it; `LiveSource` is what a
controller implements for `controller.live.server.LiveServer` to serve. A change to any frame's
meaning bumps `PROTOCOL_VERSION`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, ClassVar, Protocol

from controller.live.status import StatusSnapshot
from controller.policy.identity import person_refusal
from ledger import Event

PROTOCOL_VERSION = 1
SOCKET_NAME = "control.sock"  # in the lab's .charter/ directory
HELLO = "charter-live"  # the hello's value: says this socket is a Charter controller's
MAX_REQUEST_BYTES = 1 << 20  # one request frame; a longer one is refused and the connection closed
MAX_REPLY_BYTES = 256 << 20  # what a client accepts in one reply (a 10,000-row query fits)
MAX_EVENTS = 1000  # events in one `events` reply or one watch batch
MAX_QUERY_ROWS = 1_000_000  # the largest `limit` a query may ask for
MAX_NOTE_CHARS = 10_000


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ProtocolError(ValueError):
    """A frame that does not follow the protocol; the message is one line for the sender."""


# -- hello ------------------------------------------------------------------------------------------


def hello() -> dict[str, Any]:
    """The hello frame, the same from both sides."""
    return {"hello": HELLO, "version": PROTOCOL_VERSION}


def mismatch_message(controller_version: Any, client_version: Any) -> str:
    """The one line either side gives when the versions of a hello differ."""
    return (f"live protocol version mismatch: the controller speaks version {controller_version}, this client "
            f"version {client_version}; run the same Charter version on both sides (restart the controller with it).")


def check_hello(frame: Any) -> None:
    """Raise ProtocolError unless `frame` is a hello of this version (server side)."""
    if not isinstance(frame, dict) or frame.get("hello") != HELLO:
        raise ProtocolError(f'a connection must start with a hello: {{"hello": "{HELLO}", "version": {PROTOCOL_VERSION}}}')
    if frame.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(mismatch_message(PROTOCOL_VERSION, frame.get("version")))


# -- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """Base of every request; `op` is its wire name (a command class serves three ops)."""

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "op"}}

    @classmethod
    def from_json(cls, op: str, frame: Mapping[str, Any]) -> Request:
        """Check the frame's fields against the class and build it; ProtocolError on any mismatch."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(frame) - names - {"op"})
        if unknown:
            raise ProtocolError(f"op {op!r} has no field {unknown[0]!r}; its fields: {', '.join(sorted(names - {'op'})) or 'none'}")
        kwargs: dict[str, Any] = {"op": op} if "op" in names else {}
        for f in dataclasses.fields(cls):
            if f.name == "op":
                continue
            if f.name not in frame:
                if f.default is dataclasses.MISSING:
                    raise ProtocolError(f"op {op!r} needs the field {f.name!r}")
                continue
            kwargs[f.name] = _checked(op, f.name, frame[f.name], hints[f.name])
        request = cls(**kwargs)
        request.check()
        return request

    def check(self) -> None:
        """Checks of values beyond their types (ranges); raise ProtocolError."""


@dataclass(frozen=True)
class StatusRequest(Request):
    """Reply: `{"ok": true, "status": StatusSnapshot.to_json()}`."""

    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class EventsRequest(Request):
    """Reply: `{"ok": true, "events": [wire event, ...]}`, the first `limit` events with seq > after_seq
    (fewer than `limit` means the client is up to date)."""

    op: ClassVar[str] = "events"
    after_seq: int = 0
    limit: int = MAX_EVENTS

    def check(self) -> None:
        _at_least("events", "after_seq", self.after_seq, 0)
        if not 1 <= self.limit <= MAX_EVENTS:
            raise ProtocolError(f"op 'events': limit must be between 1 and {MAX_EVENTS}, got {self.limit}")


@dataclass(frozen=True)
class WatchRequest(Request):
    """Stream: `{"type": "events", "events": [...]}` frames (at most MAX_EVENTS each) for events with
    seq > after_seq as they are recorded and, with `with_status`, a `{"type": "status", "status": ...}`
    frame once caught up and after each batch after that. The client ends it by closing the connection."""

    op: ClassVar[str] = "watch"
    after_seq: int = 0
    with_status: bool = False

    def check(self) -> None:
        _at_least("watch", "after_seq", self.after_seq, 0)


@dataclass(frozen=True)
class QueryRequest(Request):
    """Reply: `{"ok": true, "columns", "types", "rows", "truncated"}` (`ledger.query.run_readonly_query`)."""

    op: ClassVar[str] = "query"
    sql: str
    limit: int = 10_000

    def check(self) -> None:
        if not 0 <= self.limit <= MAX_QUERY_ROWS:
            raise ProtocolError(f"op 'query': limit must be between 0 and {MAX_QUERY_ROWS}, got {self.limit}")


@dataclass(frozen=True)
class VerifyRequest(Request):
    """Reply: `{"ok": true, "result": {"ok", "count", "head", "bad_seq", "problem"}}` (`ledger.VerifyResult`)."""

    op: ClassVar[str] = "verify"
    anchor: tuple[int, str] | None = None  # (seq, hash) recorded outside the ledger


@dataclass(frozen=True)
class ReportRequest(Request):
    """Reply: `{"ok": true, "markdown": path, "chart": path}`; the controller writes them under `out`."""

    op: ClassVar[str] = "report"
    out: str
    session: str | None = None

    def check(self) -> None:
        _absolute("report", self.out)


@dataclass(frozen=True)
class ExportRequest(Request):
    """Reply: `{"ok": true, "paths": [path, ...]}`; the controller writes them under `out`."""

    op: ClassVar[str] = "export"
    out: str
    format: str
    session: str | None = None

    def check(self) -> None:
        _absolute("export", self.out)


@dataclass(frozen=True)
class NoteRequest(Request):
    """Reply: `{"ok": true, "seq": n}`, the note's seq in the ledger."""

    op: ClassVar[str] = "note"
    by: str
    text: str

    def check(self) -> None:
        if not self.by.strip() or not self.text.strip():
            raise ProtocolError("op 'note' needs a non-empty `by` and `text`")
        if person_refusal(self.by):
            raise ProtocolError(f"op 'note': {person_refusal(self.by)}")
        if len(self.text) > MAX_NOTE_CHARS:
            raise ProtocolError(f"op 'note': text is longer than {MAX_NOTE_CHARS} characters")


@dataclass(frozen=True)
class CommandRequest(Request):
    """pause / stop / resume. Reply: `{"ok": true, "gate": state}` once the loop applied it, or
    `{"ok": true, "queued": true, "message": ...}` if it had not yet when the controller answered."""

    op: str
    by: str
    reason: str = ""

    def check(self) -> None:
        if not self.by.strip():
            raise ProtocolError(f"op {self.op!r} needs a non-empty `by` (who)")
        if person_refusal(self.by):
            raise ProtocolError(f"op {self.op!r}: {person_refusal(self.by)}")
        if self.op == "resume" and not self.reason.strip():
            raise ProtocolError("op 'resume' needs a reason: only a person with a reason leaves STOP or a pause")


@dataclass(frozen=True)
class OpSpec:
    name: str
    request: type[Request]
    read_only: bool  # True: changes nothing the controller owns (report/export only write files the client names)
    answered_by: str  # the LiveSource method the server answers it with


# The one table of operations. The server parses every request through it and nothing else spells an op.
OPS: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("status", StatusRequest, True, "status"),
    OpSpec("events", EventsRequest, True, "events_after"),
    OpSpec("watch", WatchRequest, True, "wait_for_event"),  # then reads through events_after
    OpSpec("query", QueryRequest, True, "cursor"),
    OpSpec("verify", VerifyRequest, True, "cursor"),
    OpSpec("report", ReportRequest, True, "cursor"),
    OpSpec("export", ExportRequest, True, "cursor"),
    OpSpec("note", NoteRequest, False, "note"),
    OpSpec("pause", CommandRequest, False, "command"),
    OpSpec("stop", CommandRequest, False, "command"),
    OpSpec("resume", CommandRequest, False, "command"),
)}


def parse_request(frame: Any) -> Request:
    """The typed request a frame holds; ProtocolError (one line) for anything else."""
    if not isinstance(frame, dict):
        raise ProtocolError("a request must be a JSON object with an `op`")
    op = frame.get("op")
    spec = OPS.get(op) if isinstance(op, str) else None
    if spec is None:
        raise ProtocolError(f"unknown op {op!r}; ops: {', '.join(OPS)}")
    return spec.request.from_json(op, frame)


def _checked(op: str, name: str, value: Any, hint: Any) -> Any:
    """`value` if it has the field's type (a tuple arrives as a JSON list), else ProtocolError."""
    for tp in _options(hint):
        if _fits(value, tp):
            return tuple(value) if typing.get_origin(tp) is tuple else value
    raise ProtocolError(f"op {op!r}: field {name!r} must be {_type_name(hint)}, got {value!r:.80}")


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _fits(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, str):
        return isinstance(value, tp) and not isinstance(value, bool)  # JSON true is not the integer 1
    if typing.get_origin(tp) is tuple:
        parts = typing.get_args(tp)
        return isinstance(value, list) and len(value) == len(parts) and all(map(_fits, value, parts))
    raise TypeError(f"no wire check for {tp!r}")


def _type_name(hint: Any) -> str:
    names = {int: "an integer", str: "a string", bool: "true or false", type(None): "null"}
    return " or ".join(names.get(tp, "a [seq, hash] pair") for tp in _options(hint))


def _at_least(op: str, name: str, value: int, low: int) -> None:
    if value < low:
        raise ProtocolError(f"op {op!r}: {name} must be {low} or more, got {value}")


def _absolute(op: str, out: str) -> None:
    # the controller's working directory is not the client's: a relative path would land elsewhere
    if not PurePath(out).is_absolute():
        raise ProtocolError(f"op {op!r}: out must be an absolute path, got {out!r}")


# -- events and frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireEvent:
    """A ledger event as the live channel sends it: the typed columns, the hash and the payload
    (no body or prev_hash: a client that needs the chain verifies it with `verify`). It has `kind`
    and `payload`, so `ledger.payloads.read(wire_event)` gives its typed payload."""

    seq: int
    ts: datetime
    kind: str
    actor: str
    session: str | None
    experiment: int | None
    decision: str | None
    val_bpb: float | None
    gate_state: str | None
    rule: str | None
    commit_sha: str | None
    hash: str
    payload: dict[str, Any]

    @classmethod
    def from_event(cls, ev: Event) -> WireEvent:
        return cls(ev.seq, ev.ts, str(ev.kind), ev.actor, ev.session, ev.experiment,
                   None if ev.decision is None else str(ev.decision), ev.val_bpb, ev.gate_state, ev.rule,
                   ev.commit_sha, ev.hash, ev.payload)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["ts"] = self.ts.isoformat()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WireEvent:
        fields = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        fields["ts"] = datetime.fromisoformat(data["ts"])
        fields["payload"] = dict(data.get("payload") or {})
        return cls(**fields)


@dataclass(frozen=True)
class EventsFrame:
    """One batch of a watch."""

    events: list[WireEvent]

    def to_json(self) -> dict[str, Any]:
        return {"type": "events", "events": [e.to_json() for e in self.events]}


@dataclass(frozen=True)
class StatusFrame:
    """The controller's status, sent by a watch with `with_status`."""

    status: StatusSnapshot

    def to_json(self) -> dict[str, Any]:
        return {"type": "status", "status": self.status.to_json()}


WatchFrame = EventsFrame | StatusFrame


def parse_watch_frame(frame: Mapping[str, Any]) -> WatchFrame:
    kind = frame.get("type")
    if kind == "events":
        return EventsFrame([WireEvent.from_json(e) for e in frame["events"]])
    if kind == "status":
        return StatusFrame(StatusSnapshot.from_json(frame["status"]))
    raise ProtocolError(f"unknown watch frame type {kind!r}")


@dataclass(frozen=True)
class CommandReply:
    """What a pause / stop / resume came to: the gate it left, or that it is queued for the loop."""

    gate: str | None = None
    queued: bool = False
    message: str | None = None


# -- what a controller implements -------------------------------------------------------------------


class LiveSource(Protocol):
    """What the server needs from a running controller. Every method is called on a server
    thread, concurrently with the loop; none may hold a lock of the loop after it returns."""

    def status(self) -> StatusSnapshot:
        """The controller's status now."""

    def events_after(self, seq: int, limit: int) -> list[Event]:
        """At most `limit` ledger events with seq > `seq`, in seq order."""

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        """Block until the ledger's head seq is > `after_seq` or `timeout` s passed; return the head seq."""

    def cursor(self) -> Any:
        """A DuckDB cursor on the controller's own ledger connection, for read-only work; the caller closes it."""

    def note(self, by: str, text: str) -> int:
        """Record a person's note; return its seq."""

    def command(self, op: str, by: str, reason: str) -> dict[str, Any]:
        """Apply pause / stop / resume: `{"ok": True, "gate": state}`, `{"ok": False, "error": ...}`,
        or `{"ok": True, "queued": True, "message": ...}` when the loop will apply it later."""


assert all(callable(getattr(LiveSource, spec.answered_by, None)) for spec in OPS.values()), "OPS names a method LiveSource lacks"
