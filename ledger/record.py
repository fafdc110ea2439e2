"""What one ledger event is: a `Draft` a writer submits, the `Event` it becomes, and its hash.

A draft carries the kind, actor, session, the typed fields auditors filter on and a JSON payload.
Appending gives it a `seq` and a UTC timestamp and turns it into its *body*: the canonical JSON
(`constitution.canonical`) of the whole event: `seq`, `ts`, `session`, `actor`, `kind`, the typed
fields and the payload. Its hash is `sha256(prev_hash || body)` over the UTF-8 text, with
`prev_hash` the hash of the event before (64 zeros for seq 1), so every event commits to the
whole history before it. The typed columns of the table are copies of body fields, and
`ledger.verify` checks that they still agree with it. The body is built here by writing the
fixed top-level keys in sorted order around canonically encoded values, which is byte-for-byte
`canonical_json(whole event)` (tests hold us to that) at a fraction of its cost. `seal_batch`
seals a whole batch a column at a time (`SealedBatch`), which is how the ledger appends.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import repeat
from typing import Any, NamedTuple

from constitution.canonical import canonical_json

from .errors import InvalidEvent
from .events import Decision, EventKind

GENESIS_HASH = "0" * 64
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ts text in every body: UTC, microseconds, always 27 chars
_INT64 = (-(2**63), 2**63 - 1)

# The body's top-level keys in sorted order, as canonical_json writes them.
_BODY_TEMPLATE = (
    '{"actor":%s,"commit_sha":%s,"decision":%s,"experiment":%s,"gate_state":%s,"kind":%s,'
    '"payload":%s,"rule":%s,"seq":%s,"session":%s,"ts":%s,"val_bpb":%s}'
)


class Draft(NamedTuple):
    """An event to append: everything but seq, ts and the hashes."""

    kind: EventKind | str
    actor: str
    session: str | None = None
    payload: Mapping[str, Any] | None = None
    experiment: int | None = None
    decision: Decision | str | None = None
    val_bpb: float | None = None
    gate_state: str | None = None
    rule: str | None = None
    commit_sha: str | None = None


class Event(NamedTuple):
    """One recorded event, as appended or as read back."""

    seq: int
    ts: datetime  # timezone-aware, UTC, microsecond precision
    kind: EventKind | str  # a plain str only for a kind this code does not know
    actor: str
    session: str | None
    payload: dict[str, Any]
    experiment: int | None
    decision: Decision | str | None
    val_bpb: float | None
    gate_state: str | None
    rule: str | None
    commit_sha: str | None
    prev_hash: str
    hash: str
    body: str


def _make_payload_encoder():
    """A reusable encoder that writes exactly what `canonical_json` writes.

    `canonical_json` builds a fresh JSON encoder on every call; for a small payload that setup is
    two thirds of its cost, and the payload is encoded once per event on the hot path. This is
    the same C encoder with the same settings (sorted keys, compact separators, UTF-8 text, NaN
    refused), built once; tests check it against `canonical_json` on random payloads. Without
    the C accelerator it simply is `canonical_json`.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:
        return canonical_json
    default = json.JSONEncoder().default  # raises TypeError for anything that is not JSON data
    encoder = c_make_encoder({}, default, json.encoder.encode_basestring, None, ":", ",", True, False, False)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


payload_json = _make_payload_encoder()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def ts_text(ts: datetime) -> str:
    """The body's spelling of a UTC timestamp."""
    return ts.astimezone(timezone.utc).strftime(TS_FORMAT)


class SealedBatch(NamedTuple):
    """Sealed events a column at a time (as the ledger inserts them): one list per field."""

    seq: range
    ts: datetime  # shared by the whole batch
    kind: list[EventKind]
    actor: list[str]
    session: list[str | None]
    payload: Sequence[dict[str, Any]]
    experiment: Sequence[int | None]
    decision: list[Decision | None]
    val_bpb: Sequence[float | None]
    gate_state: list[str | None]
    rule: list[str | None]
    commit_sha: list[str | None]
    prev_hash: list[str]
    hash: list[str]
    body: list[str]

    def events(self) -> list[Event]:
        columns = (self.seq, repeat(self.ts), *self[2:])
        with _gc_paused():
            return list(map(Event._make, zip(*columns)))


def seal(drafts: Iterable[Draft], first_seq: int, prev_hash: str, ts: datetime) -> list[Event]:
    """Validate drafts and turn them into chained events starting at `first_seq` after `prev_hash`.

    All events of one call share the timestamp `ts` (the time of the append). Raises
    InvalidEvent, naming the draft's position in the batch, before anything is written.
    """
    return seal_batch(drafts, first_seq, prev_hash, ts).events()


def seal_batch(drafts: Iterable[Draft], first_seq: int, prev_hash: str, ts: datetime) -> SealedBatch:
    """`seal`, giving the events as columns. This is the ledger's hot path (docs/benchmarks.md
    has its rate and where the time goes), so it works a column at a time: fields whose values repeat within a batch (kind, actor,
    session...) are checked and encoded once per distinct value, and the per-event work left is
    the payload's JSON, the body template and the sequential hash chain. When anything in the
    batch is wrong, the drafts are sealed again one by one to name the first bad one.
    """
    drafts = drafts if type(drafts) is list else list(drafts)
    ts = ts.astimezone(timezone.utc)
    try:
        with _gc_paused():
            return _seal_columns(drafts, first_seq, prev_hash, ts)
    except (InvalidEvent, TypeError, ValueError, OverflowError):
        pass
    for index, draft in enumerate(drafts):
        try:
            _seal_columns([draft], first_seq, prev_hash, ts)
        except InvalidEvent as err:
            raise InvalidEvent(f"event {index} of the batch: {err}") from None
        except (TypeError, ValueError, OverflowError) as err:  # not JSON data, NaN, lone surrogate
            raise InvalidEvent(f"event {index} of the batch cannot be recorded as JSON: {err}") from None
    # Only objects whose equality or hashing lies (two "equal" values encoding differently) get here.
    raise InvalidEvent("the batch cannot be recorded, though each of its events can alone")


def _seal_columns(drafts: list[Draft], first_seq: int, prev_hash: str, ts: datetime) -> SealedBatch:
    """`seal_batch` proper; raises on the first problem without saying which draft has it."""
    n = len(drafts)
    if set(map(type, drafts)) - {Draft}:
        bad = next(type(d).__name__ for d in drafts if type(d) is not Draft)
        raise InvalidEvent(f"expected a Draft, got {bad}")
    kinds, actors, sessions, payloads, experiments, decisions, vals, gates, rules, commits = (
        zip(*drafts) if n else ((),) * len(Draft._fields))

    # Typed string fields: (checked values, their JSON) per event, via one check per distinct value.
    kinds, kind_json = _checked_column("kind", kinds)
    actors, actor_json = _checked_column("actor", actors)
    sessions, session_json = _checked_column("session", sessions)
    decisions, decision_json = _checked_column("decision", decisions)
    gates, gate_json = _checked_column("gate_state", gates)
    rules, rule_json = _checked_column("rule", rules)
    commits, commit_json = _checked_column("commit_sha", commits)

    if not set(map(type, experiments)) <= _INT_TYPES:
        bad = next(x for x in experiments if type(x) not in _INT_TYPES)
        raise InvalidEvent(f"experiment must be a 64-bit integer or None, got {bad!r}")
    numbers = [x for x in experiments if x is not None]
    if numbers and (min(numbers) < _INT64[0] or max(numbers) > _INT64[1]):
        bad = next(x for x in numbers if not _INT64[0] <= x <= _INT64[1])
        raise InvalidEvent(f"experiment must be a 64-bit integer or None, got {bad!r}")
    experiment_json = ["null" if x is None else str(x) for x in experiments]

    val_types = set(map(type, vals))
    if not val_types <= _NUMBER_TYPES:
        bad = next(x for x in vals if type(x) not in _NUMBER_TYPES)
        raise InvalidEvent(f"val_bpb must be a finite number or None, got {bad!r}")
    if int in val_types:
        try:
            vals = tuple(x if x is None else float(x) for x in vals)
        except OverflowError:
            raise InvalidEvent("val_bpb must be a finite number or None, got an int too large for a float") from None
    if not all(map(math.isfinite, (x for x in vals if x is not None))):
        bad = next(x for x in vals if x is not None and not math.isfinite(x))
        raise InvalidEvent(f"val_bpb must be a finite number or None, got {bad!r}")
    val_json = ["null" if x is None else repr(x) for x in vals]

    if set(map(type, payloads)) - {dict}:
        payloads = tuple(map(_checked_payload, payloads))

    seqs = range(first_seq, first_seq + n)
    bodies = list(map(_BODY_TEMPLATE.__mod__, zip(
        actor_json, commit_json, decision_json, experiment_json, gate_json, kind_json,
        map(payload_json, payloads), rule_json, seqs, session_json, repeat(canonical_json(ts.strftime(TS_FORMAT))),
        val_json,
    )))
    prev_hashes = [prev_hash]
    sha256 = hashlib.sha256
    for body in bodies:  # the one step that cannot be done a column at a time
        prev_hash = sha256((prev_hash + body).encode("utf-8")).hexdigest()
        prev_hashes.append(prev_hash)
    hashes = prev_hashes[1:]
    del prev_hashes[-1]
    return SealedBatch(seqs, ts, kinds, actors, sessions, payloads, experiments, decisions, vals, gates,
                       rules, commits, prev_hashes, hashes, bodies)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is sealed. Sealing allocates a few
    small objects per event, none of them in a cycle, and every allocation counts towards a
    collection that can find nothing to free: pausing it saves ~15% of the sealing time.
    Reference counting still frees everything as usual."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_INT_TYPES = frozenset({int, type(None)})  # exact types: a bool is not an experiment number
_NUMBER_TYPES = frozenset({float, int, type(None)})


def _checked_payload(payload: Any) -> dict:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"payload must be a dict, got {type(payload).__name__}")
    return dict(payload)


def _checked_column(name: str, column: tuple) -> tuple[list, Iterable[str]]:
    """(checked values, canonical JSON of each) for one string-valued field of a batch."""
    try:
        distinct = set(column)
    except TypeError:  # an unhashable value, which no valid one is: let the check name it
        distinct = column
    encoded = {value: _encode_field(name, value) for value in distinct}
    if len(encoded) == 1:
        [(value, text)] = encoded.values()
        return [value] * len(column), repeat(text)
    values = {key: checked for key, (checked, _) in encoded.items()}
    texts = {key: text for key, (_, text) in encoded.items()}
    return list(map(values.__getitem__, column)), map(texts.__getitem__, column)


def _encode_field(name: str, value: Any) -> tuple[Any, str]:
    """Check one string-valued field; returns (the value to keep, its canonical JSON)."""
    if name == "kind":
        try:
            value = EventKind(value)
        except ValueError:
            raise InvalidEvent(f"unknown event kind {value!r}") from None
        return value, canonical_json(value.value)
    if value is None:
        if name == "actor":
            raise InvalidEvent("actor must be a non-empty string")
        return None, "null"
    if name == "decision":
        try:
            value = Decision(value)
        except ValueError:
            raise InvalidEvent(f"unknown decision {value!r}") from None
        return value, canonical_json(value.value)
    if not isinstance(value, str) or (name == "actor" and not value):
        what = "a non-empty string" if name == "actor" else "a string or None"
        raise InvalidEvent(f"{name} must be {what}, got {value!r}")
    return value, canonical_json(str(value))


def _known(enum: type, value: str | None):
    """The enum member for `value`, or the plain string if this code does not know it."""
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        return value


def from_body(body: str, prev_hash: str, digest: str) -> Event:
    """Rebuild an Event from a stored body (the body is the whole event)."""
    fields = json.loads(body)
    return Event(
        seq=fields["seq"],
        ts=datetime.fromisoformat(fields["ts"]),
        kind=_known(EventKind, fields["kind"]),
        actor=fields["actor"],
        session=fields["session"],
        payload=fields["payload"],
        experiment=fields["experiment"],
        decision=_known(Decision, fields["decision"]),
        val_bpb=fields["val_bpb"],
        gate_state=fields["gate_state"],
        rule=fields["rule"],
        commit_sha=fields["commit_sha"],
        prev_hash=prev_hash,
        hash=digest,
        body=body,
    )
