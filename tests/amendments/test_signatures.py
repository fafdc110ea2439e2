"""ssh-keygen signatures over amendment ids, with real ed25519 keys: the three ways one is refused."""

from __future__ import annotations

import subprocess

import pytest

from constitution.schema import Ratifier, ssh_fingerprint
from amendments.signatures import NAMESPACE, SignatureError, allowed_signers, read_signature, sign, verify

ID = "ab" * 32
OTHER_ID = "cd" * 32


@pytest.fixture
def listed(keys):
    return [Ratifier(name=n, key=keys[n].line) for n in ("alice", "bob")]


def test_a_signature_verifies_for_its_signer(keys, listed):
    sig = sign(ID, keys["alice"].private)
    got = verify(ID, sig, "alice", listed)
    assert got.fingerprint == ssh_fingerprint(keys["alice"].line)
    # the same fingerprint ssh-keygen itself prints
    assert got.fingerprint in subprocess.run(["ssh-keygen", "-l", "-f", keys["alice"].public], capture_output=True, text=True).stdout


def test_a_key_that_is_not_listed_is_refused(keys, listed):
    with pytest.raises(SignatureError, match=r"made with key SHA256:\S+, which amendment.ratifiers does not list"):
        verify(ID, sign(ID, keys["mallory"].private), "alice", listed)


def test_another_ratifiers_key_is_refused(keys, listed):
    with pytest.raises(SignatureError, match="made with bob's key .* not alice's"):
        verify(ID, sign(ID, keys["bob"].private), "alice", listed)


def test_a_signature_over_another_id_is_refused(keys, listed):
    with pytest.raises(SignatureError, match=f"does not verify for amendment {ID[:12]}"):
        verify(ID, sign(OTHER_ID, keys["alice"].private), "alice", listed)


def test_a_signature_in_another_namespace_is_refused(keys, listed, tmp_path):
    msg = tmp_path / "id"
    msg.write_text(ID)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", keys["alice"].private, "-n", "git", msg], check=True, capture_output=True)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(ID, (tmp_path / "id.sig").read_text(), "alice", listed)


def test_a_signature_made_elsewhere_with_the_documented_command_verifies(keys, listed, tmp_path):
    msg = tmp_path / "id"
    subprocess.run(f"printf %s {ID} > {msg} && ssh-keygen -Y sign -f {keys['bob'].private} -n {NAMESPACE} {msg}",
                   shell=True, check=True, capture_output=True)
    assert verify(ID, read_signature(tmp_path / "id.sig"), "bob", listed).by == "bob"


def test_a_file_that_is_no_signature_is_refused(tmp_path, keys):
    (tmp_path / "x.sig").write_text("hello")
    with pytest.raises(SignatureError, match="is not an SSH signature"):
        read_signature(tmp_path / "x.sig")
    with pytest.raises(SignatureError, match="no private key at"):
        sign(ID, tmp_path / "missing")
    (tmp_path / "not-a-key").write_text("hello")
    with pytest.raises(SignatureError, match="could not sign"):
        sign(ID, tmp_path / "not-a-key")


def test_allowed_signers_lists_only_keys_in_our_namespace(keys):
    text = allowed_signers([Ratifier(name="alice", key=keys["alice"].line), Ratifier(name="nokey")])
    assert text == f'alice namespaces="{NAMESPACE}" {keys["alice"].line}\n'
