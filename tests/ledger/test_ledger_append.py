"""Appending, reading back, reopening, and refusing bad events."""

from __future__ import annotations

import json
from datetime import timezone

import pytest

from constitution.canonical import canonical_json, sha256_hex
from ledger import GENESIS_HASH, Decision, Draft, EventKind, InvalidEvent, Ledger, LedgerReadOnly

from conftest import sample_drafts


def test_append_then_verify(ledger_path):
    with Ledger.open(ledger_path) as led:
        assert led.head() is None
        assert led.verify().ok
        ev = led.append(EventKind.NOTE, actor="person:alice", payload={"text": "hi"}, val_bpb=1.25,
                        experiment=3, decision=Decision.KEEP, gate_state="RUN", rule="r1", commit_sha="abc")
        assert ev.seq == 1 and ev.prev_hash == GENESIS_HASH
        assert ev.hash == sha256_hex(GENESIS_HASH + ev.body)
        assert ev.ts.tzinfo == timezone.utc
        body = json.loads(ev.body)
        assert ev.body == canonical_json(body)
        assert body == {
            "seq": 1, "ts": ev.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "session": None, "actor": "person:alice",
            "kind": "note", "experiment": 3, "decision": "keep", "val_bpb": 1.25, "gate_state": "RUN",
            "rule": "r1", "commit_sha": "abc", "payload": {"text": "hi"},
        }
        assert led.head() == (1, ev.hash)
        res = led.verify()
        assert res.ok and res.count == 1 and res.head == (1, ev.hash) and res.bad_seq is None
        assert [e.body for e in led.events()] == [ev.body]


def test_append_many_then_verify(ledger_path):
    with Ledger.open(ledger_path) as led:
        first = led.append(EventKind.LAB_CREATED, actor="controller")
        evs = led.append_many(sample_drafts(50))
        assert [e.seq for e in evs] == list(range(2, 52))
        assert evs[0].prev_hash == first.hash
        for before, after in zip(evs, evs[1:]):
            assert after.prev_hash == before.hash
        assert len({e.ts for e in evs}) == 1  # one transaction, one time
        assert led.append_many([]) == []
        assert led.verify().ok and led.verify().count == 51
        back = led.events()
        assert [e.body for e in back] == [first.body] + [e.body for e in evs]
        assert back[5] == evs[4]  # read back equals what append returned, field by field


def test_events_filters(ledger_path):
    with Ledger.open(ledger_path) as led:
        led.append_many(sample_drafts(10))
        assert [e.seq for e in led.events(since_seq=7)] == [8, 9, 10]
        evaluated = led.events(kinds=[EventKind.EVALUATED])
        assert evaluated and all(e.kind is EventKind.EVALUATED for e in evaluated)
        assert [e.seq for e in led.events(since_seq=4, kinds=["note"])] == [5, 7, 9]


def test_reopen_continues_the_chain(ledger_path):
    with Ledger.open(ledger_path) as led:
        led.append_many(sample_drafts(5))
        head = led.head()
    with Ledger.open(ledger_path) as led:
        assert led.head() == head
        ev = led.append(EventKind.NOTE, actor="controller")
        assert ev.seq == head[0] + 1 and ev.prev_hash == head[1]
        assert led.verify().ok
    with Ledger.open(ledger_path, read_only=True) as led:
        assert led.head() == (6, ev.hash)
        assert led.verify().ok
        with pytest.raises(LedgerReadOnly, match="read-only"):
            led.append(EventKind.NOTE, actor="controller")


@pytest.mark.parametrize("bad, words", [
    (dict(kind="no_such_kind"), "unknown event kind"),
    (dict(actor=""), "actor"),
    (dict(actor=None), "actor"),
    (dict(session=5), "session"),
    (dict(actor=["alice"]), "actor must be a non-empty string"),  # unhashable, so no set() shortcut
    (dict(kind=["note"]), "unknown event kind"),
    (dict(rule={"r": 1}), "rule must be a string or None"),
    (dict(decision="maybe"), "unknown decision"),
    (dict(experiment=True), "experiment"),
    (dict(experiment=2**63), "experiment"),
    (dict(val_bpb=float("nan")), "val_bpb"),
    (dict(val_bpb="1.0"), "val_bpb"),
    (dict(payload={"x": float("nan")}), "JSON"),
    (dict(payload={"x": object()}), "JSON"),
    (dict(payload={"x": "\ud800"}), "JSON"),
    (dict(payload=[1, 2]), "payload"),
])
def test_bad_event_is_refused_and_nothing_is_written(ledger_path, bad, words):
    fields = dict(kind=EventKind.NOTE, actor="controller")
    fields.update(bad)
    with Ledger.open(ledger_path) as led:
        led.append(EventKind.NOTE, actor="controller")
        batch = sample_drafts(3) + [Draft(**fields)] + sample_drafts(3)
        with pytest.raises(InvalidEvent, match=words) as err:
            led.append_many(batch)
        assert "event 3 of the batch" in str(err.value)
        assert led.head()[0] == 1 and len(led.events()) == 1
        assert led.append(EventKind.NOTE, actor="controller").seq == 2  # still usable
        assert led.verify().ok


def test_a_batch_item_that_is_not_a_draft_is_refused(ledger_path):
    with Ledger.open(ledger_path) as led:
        with pytest.raises(InvalidEvent, match="event 2 of the batch: expected a Draft, got dict"):
            led.append_many(sample_drafts(2) + [{"kind": "note", "actor": "x"}])
        assert led.head() is None


def test_closed_ledger_refuses_use(ledger_path):
    led = Ledger.open(ledger_path)
    led.close()
    led.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        led.append(EventKind.NOTE, actor="controller")
