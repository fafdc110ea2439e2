"""Property tests: any JSON payload and any field values round-trip and verify."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constitution.canonical import canonical_json
from ledger import Decision, Draft, EventKind, Ledger
from ledger.record import payload_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)
payloads = st.dictionaries(st.text(), json_values, max_size=6)
optional_text = st.none() | st.text()

drafts = st.builds(
    Draft,
    kind=st.sampled_from(list(EventKind)),
    actor=st.text(min_size=1),
    session=optional_text,
    payload=payloads,
    experiment=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    decision=st.none() | st.sampled_from(list(Decision)),
    val_bpb=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    gate_state=optional_text,
    rule=optional_text,
    commit_sha=optional_text,
)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_payload_encoder_is_canonical_json(payload):
    assert payload_json(payload) == canonical_json(payload)


def test_random_events_round_trip_and_verify(tmp_path):
    with Ledger.open(tmp_path / "ledger.duckdb") as led:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(drafts, min_size=1, max_size=5))
        def check(batch):
            appended = led.append_many(batch)
            back = led.events(since_seq=appended[0].seq - 1)
            assert back == appended
            for draft, event in zip(batch, back):
                assert event.body == canonical_json(json.loads(event.body))
                assert event.payload == draft.payload
                assert (event.kind, event.actor, event.session) == (draft.kind, draft.actor, draft.session)
                assert (event.experiment, event.decision, event.gate_state, event.rule, event.commit_sha) == (
                    draft.experiment, draft.decision, draft.gate_state, draft.rule, draft.commit_sha)
                assert event.val_bpb == draft.val_bpb
            res = led.verify()
            assert res.ok, res.problem

        check()
