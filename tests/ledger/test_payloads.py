"""The event contract: typed payloads round-trip through a real ledger, old bodies still read."""

import dataclasses

import pytest

from ledger import Decision, EventKind, Ledger
from ledger import payloads as P


def test_every_event_kind_has_exactly_one_payload_class():
    assert set(P.PAYLOADS) == set(EventKind)
    for kind, cls in P.PAYLOADS.items():
        assert cls.KIND == kind


def test_payloads_round_trip_through_a_real_ledger(tmp_path):
    written = [
        P.GateTransition("RUN", "THROTTLE", "crash-streak", "crash_streak = 3 (threshold 3)", "controller", False),
        P.HarmRefused([P.RefusalItem("network", "train.py", 3, "import socket", False),
                       P.RefusalItem("no-eval", None, None, "evaluate_bpb", True)], "--- a/train.py\n"),
        P.Decided(decision="keep", reason="better", runs=[1.2, 1.25], improvement=0.05, params={"LR": 0.01}),
        P.AgentCall("anthropic", "m", 2, 100, 20, 5, 7, 0.01, 1.5),
    ]
    with Ledger.open(tmp_path / "l.duckdb") as led:
        for p in written:
            led.record(p, actor="controller", session="s1")
        back = [P.read(e) for e in led.events()]
        assert led.verify().ok
    assert back == written
    # the JSON keys are the contract: a keyword-named field keeps its wire name
    assert P.GateTransition("RUN", "STOP").to_json()["from"] == "RUN"


def test_an_old_body_missing_new_fields_reads_with_defaults_and_unknown_keys_are_ignored():
    old = {"decision": "crash", "reason": "training exited with code 1", "legacy_field": 7}
    d = P.Decided.from_json(old)
    assert d.decision == "crash" and d.refusal_rule is None and d.runs == [] and not d.repair


def test_a_view_shape_naming_a_field_no_writer_writes_fails():
    with pytest.raises(KeyError, match="no field 'diffs'"):
        P.json_shape((P.Committed, ("diffs",)))

    @dataclasses.dataclass(frozen=True)
    class TextNote(P.Payload):  # a key spelled like Note.text but typed as a number
        KIND = EventKind.NOTE
        text: float = 0.0

    with pytest.raises(TypeError, match="two SQL types"):
        P.json_shape((P.Note, ("text",)), (TextNote, ("text",)))
    shape = P.json_shape((P.GateTransition, ("from_state",)), (P.HarmRefused, ("refusals",)))
    assert '"from": "VARCHAR"' in shape and '"line": "BIGINT"' in shape


def test_decision_groups_are_defined_once_on_the_enum():
    assert Decision.group("ran") == ("baseline", "keep", "discard", "crash", "timeout")
    assert Decision.group("failed") == ("crash", "timeout")
    assert not Decision.INTERRUPTED.ran and not Decision.INTERRUPTED.failed
    assert Decision.KEEP.measured and not Decision.CRASH.measured


def test_payload_classes_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.Note("x").text = "y"
