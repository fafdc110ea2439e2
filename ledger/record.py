"""What one ledger event is: a `Draft` a writer submits, the `Event` it becomes, and its hash.

A draft carries the kind, actor, session, the typed fields auditors filter on and a JSON payload.
Appending gives it a `seq` and a UTC timestamp and turns it into its *body*: the canonical JSON
(`constitution.canonical`) of the whole event: `seq`, `ts`, `session`, `actor`, `kind`, the typed
fields and the payload. Its hash is `sha256(prev_hash || body)` over the UTF-8 text, with
`prev_hash` the hash of the event before (64 zeros for seq 1), so every event commits to the
whole history before it. The typed columns of the table are copies of body fields, and
`ledger.verify` checks that they still agree with it. The body is built here by writing the
fixed top-level keys in sorted order around canonically encoded values, which is byte-for-byte
`canonical_json(whole event)` (tests hold us to that) at a fraction of its cost.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

from constitution.canonical import canonical_json

from .errors import InvalidEvent
from .events import Decision, EventKind

GENESIS_HASH = "0" * 64
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ts text in every body: UTC, microseconds, always 27 chars
TYPED_FIELDS = ("experiment", "decision", "val_bpb", "gate_state", "rule", "commit_sha")
_INT64 = (-(2**63), 2**63 - 1)
_STRING_FIELDS = ("kind", "actor", "session", "decision", "gate_state", "rule", "commit_sha")

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


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def seal(drafts: Iterable[Draft], first_seq: int, prev_hash: str, ts: datetime) -> list[Event]:
    """Validate drafts and turn them into chained events starting at `first_seq` after `prev_hash`.

    All events of one call share the timestamp `ts` (the time of the append). Raises
    InvalidEvent, naming the draft's position, before anything is written. This loop is the
    ledger's hot path (>= 100k events/s): values that repeat within a batch (actor, kind,
    session...) are checked and encoded once and then looked up.
    """
    ts = ts.astimezone(timezone.utc)
    ts_json = canonical_json(ts.strftime(TS_FORMAT))
    caches: dict[str, dict[Any, tuple[Any, str]]] = {name: {} for name in _STRING_FIELDS}
    kinds, actors, sessions = caches["kind"], caches["actor"], caches["session"]

    def encode(name: str, value: Any) -> tuple[Any, str]:
        """(checked value, canonical JSON) of a string-valued field, each distinct value once."""
        cache = caches[name]
        hit = cache.get(value)
        if hit is None:
            hit = cache[value] = _encode_field(name, value)
        return hit

    events = []
    seq = first_seq
    sha256 = hashlib.sha256
    for index, draft in enumerate(drafts):
        try:
            if type(draft) is not Draft:
                raise InvalidEvent(f"expected a Draft, got {type(draft).__name__}")
            kind, actor, session, payload, experiment, decision, val_bpb, gate_state, rule, commit_sha = draft
            kind, kind_json = kinds.get(kind) or encode("kind", kind)
            actor, actor_json = actors.get(actor) or encode("actor", actor)
            session, session_json = sessions.get(session) or encode("session", session)
            decision, decision_json = (None, "null") if decision is None else encode("decision", decision)
            gate_json = "null" if gate_state is None else encode("gate_state", gate_state)[1]
            rule_json = "null" if rule is None else encode("rule", rule)[1]
            commit_json = "null" if commit_sha is None else encode("commit_sha", commit_sha)[1]
            if experiment is None:
                experiment_json = "null"
            elif type(experiment) is int and _INT64[0] <= experiment <= _INT64[1]:
                experiment_json = str(experiment)
            else:
                raise InvalidEvent(f"experiment must be a 64-bit integer or None, got {experiment!r}")
            if val_bpb is None:
                val_json = "null"
            elif type(val_bpb) in (float, int) and math.isfinite(val_bpb):
                val_bpb = float(val_bpb)
                val_json = repr(val_bpb)
            else:
                raise InvalidEvent(f"val_bpb must be a finite number or None, got {val_bpb!r}")
            if payload is None:
                payload = {}
            elif type(payload) is not dict:
                if not isinstance(payload, Mapping):
                    raise InvalidEvent(f"payload must be a dict, got {type(payload).__name__}")
                payload = dict(payload)
            body = _BODY_TEMPLATE % (
                actor_json, commit_json, decision_json, experiment_json, gate_json, kind_json,
                payload_json(payload), rule_json, seq, session_json, ts_json, val_json,
            )
            digest = sha256((prev_hash + body).encode("utf-8")).hexdigest()
        except InvalidEvent as err:
            raise InvalidEvent(f"event {index} of the batch: {err}") from None
        except (TypeError, ValueError) as err:  # canonical_json: not JSON data, NaN, lone surrogate
            raise InvalidEvent(f"event {index} of the batch cannot be recorded as JSON: {err}") from None
        events.append(Event(seq, ts, kind, actor, session, payload, experiment, decision, val_bpb,
                            gate_state, rule, commit_sha, prev_hash, digest, body))
        prev_hash = digest
        seq += 1
    return events


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
