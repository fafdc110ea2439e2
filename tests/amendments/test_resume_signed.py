"""The ratifiers' keys also lift a STOP: in a lab that requires signatures, `charter resume` from
STOP is signed over the STOP it lifts, by a listed ratifier, with real ssh-keygen keys."""

from ledger import EventKind, Ledger


def operator_commands(lab):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return [(e.actor, e.payload) for e in led.events(kinds=[EventKind.OPERATOR_COMMAND])]


def gate(lab):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return [e.gate_state for e in led.events(kinds=[EventKind.GATE_TRANSITION])][-1]


def test_a_resume_from_stop_is_signed_by_a_listed_ratifier(lab, keys, charter):
    assert charter("stop", "--lab", lab.root, "--by", "carol").code == 0
    assert gate(lab) == "STOP"

    unsigned = charter("resume", "--lab", lab.root, "--by", "alice", "--reason", "checked")
    assert unsigned.code == 1 and "needs a ratifier's signature" in unsigned.err and "-n charter-resume" in unsigned.err
    stranger = charter("resume", "--lab", lab.root, "--by", "mallory", "--reason", "let me", "--key", keys["mallory"].private)
    assert stranger.code == 1 and "does not list" in stranger.err
    borrowed = charter("resume", "--lab", lab.root, "--by", "carol", "--reason", "with alice's key", "--key", keys["alice"].private)
    assert borrowed.code == 1 and "alice's key" in borrowed.err
    agent = charter("resume", "--lab", lab.root, "--by", "agent:claude", "--reason", "done", "--key", keys["alice"].private)
    assert agent.code == 2 and "agent" in agent.err
    assert gate(lab) == "STOP" and [p["command"] for _, p in operator_commands(lab)] == ["stop"]

    signed = charter("resume", "--lab", lab.root, "--by", "alice", "--reason", "checked the crash", "--key", keys["alice"].private)
    assert signed.code == 0, signed.err
    assert gate(lab) == "RUN"
    actor, payload = operator_commands(lab)[-1]
    assert actor == "person:alice" and payload["command"] == "resume" and payload["signed_by"].startswith("SHA256:")


def test_a_signature_lifts_only_the_stop_it_was_made_for(lab, keys, charter, tmp_path):
    from amendments import signatures
    from controller.operators import RESUME_NAMESPACE, resume_message

    charter("stop", "--lab", lab.root, "--by", "carol")
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        first_stop = [e for e in led.events(kinds=[EventKind.GATE_TRANSITION]) if e.gate_state == "STOP"][-1].hash
    sig = tmp_path / "resume.sig"
    sig.write_text(signatures.sign(resume_message(first_stop), keys["bob"].private, RESUME_NAMESPACE))
    assert charter("resume", "--lab", lab.root, "--by", "bob", "--reason", "ok", "--signature", sig).code == 0
    charter("stop", "--lab", lab.root, "--by", "carol")  # a new STOP: the old signature is spent
    replay = charter("resume", "--lab", lab.root, "--by", "bob", "--reason", "again", "--signature", sig)
    assert replay.code == 1 and "does not verify" in replay.err and gate(lab) == "STOP"


def test_a_pause_needs_no_signature(lab, charter):
    assert charter("pause", "--lab", lab.root, "--by", "carol").code == 0
    assert charter("resume", "--lab", lab.root, "--by", "carol", "--reason", "back").code == 0
    assert gate(lab) == "RUN"
