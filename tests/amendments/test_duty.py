"""Separation of duty, thresholds and cooling as pure decisions over a history folded from a real
ledger's events (written here directly, as the process would write them)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from amendments import duty, history
from ledger import Ledger, payloads

ID = "ab" * 32
PARENT = "cd" * 32


@pytest.fixture
def led(tmp_path):
    with Ledger.open(tmp_path / "ledger.duckdb") as led:
        yield led


def proposed(led, by="carol", tier="major", needed=1, cooling=0.0, actor=None):
    led.record(payloads.AmendmentProposed(amendment_id=ID, by=by, tier=tier, needed=needed, version=2, parent_version=1,
                                          parent_hash=PARENT, ratifiers={"alice": "fp-a", "bob": "fp-b"}, cooling_hours=cooling),
               actor=actor or f"person:{by}")


def record(led):
    return history.fold(led.events())[ID]


def test_who_may_ratify(led):
    proposed(led, by="alice")
    rec = record(led)
    assert "separation of duty" in duty.ratify_refusal(rec, "alice")
    assert "agent's identity" in duty.ratify_refusal(rec, "agent:claude")
    assert "controller's own identity" in duty.ratify_refusal(rec, "controller")
    assert "dave is not a ratifier" in duty.ratify_refusal(rec, "dave")
    assert duty.ratify_refusal(rec, "bob") is None
    led.record(payloads.AmendmentRatified(amendment_id=ID, by="bob", signed=True), actor="person:bob")
    assert "bob has already ratified" in duty.ratify_refusal(record(led), "bob")


def test_a_refused_attempt_does_not_count(led):
    proposed(led)
    led.record(payloads.AmendmentRatified(amendment_id=ID, by="alice", refused="bad signature"), actor="person:alice")
    rec = record(led)
    assert (rec.status, rec.ratified_by, [a.why for a in rec.refused]) == ("pending", [], ["bad signature"])
    assert duty.ratify_refusal(rec, "alice") is None  # a failed attempt is not a ratification


def test_threshold_staleness_and_cooling(led):
    proposed(led, tier="constitutional", needed=2, cooling=24)
    led.record(payloads.AmendmentRatified(amendment_id=ID, by="alice", signed=True), actor="person:alice")
    rec = record(led)
    assert "has 1 of the 2 ratifications it needs; may still ratify: bob" in duty.apply_refusal(rec, PARENT, 1, 0, rec.ts)
    led.record(payloads.AmendmentRatified(amendment_id=ID, by="bob", signed=True), actor="person:bob")
    rec = record(led)
    assert rec.status == "ratified"
    assert "proposed against version 1" in duty.apply_refusal(rec, "ef" * 32, 2, 2, rec.ts)
    assert "is cooling: cooling_hours = 24" in duty.apply_refusal(rec, PARENT, 1, 0, rec.ts + timedelta(hours=23))
    assert duty.apply_refusal(rec, PARENT, 1, 0, rec.ts + timedelta(hours=24)) is None


def test_rejection_closes_it_and_only_a_ratifier_or_the_proposer_may_reject(led):
    proposed(led)
    rec = record(led)
    assert "neither a ratifier" in duty.reject_refusal(rec, "dave")
    assert duty.reject_refusal(rec, "carol") is None  # its proposer withdrawing it
    led.record(payloads.AmendmentRejected(amendment_id=ID, by="bob", reason="no"), actor="person:bob")
    rec = record(led)
    assert rec.status == "rejected" and "was rejected by bob (no)" in duty.ratify_refusal(rec, "alice")


def test_resolve_takes_a_unique_prefix(led):
    proposed(led)
    records = history.fold(led.events())
    assert history.resolve(records, ID[:6].upper()).id == ID
    with pytest.raises(Exception, match="not an amendment id"):
        history.resolve(records, "ab")
