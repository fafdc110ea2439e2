"""Ratification signatures: `ssh-keygen -Y sign` / `-Y verify` over an amendment id.

A ratification signs the amendment id (its 64 hex characters, no newline) in the namespace
`charter-amendment`. Verification builds an allowed-signers file (git's format) from the
ratifiers a constitution lists, finds which listed key made the signature (`-Y find-principals`),
and verifies it for the person who claims it (`-Y verify`), so three different refusals can be
told apart: a key that is not listed, another ratifier's key, and a signature that does not
verify for this id. This module is the edge to OpenSSH; everything runs in a private temporary
directory with no terminal input, so a key with a passphrase fails instead of waiting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from constitution.schema import Ratifier, ssh_fingerprint

NAMESPACE = "charter-amendment"
TIMEOUT_S = 30
MAX_SIGNATURE_BYTES = 64 * 1024
_FINGERPRINT_RE = re.compile(r"(SHA256:[A-Za-z0-9+/]+)")


class SignatureError(Exception):
    """A signature that can't be made or accepted; the message is one line for a person."""


@dataclass(frozen=True)
class Verified:
    by: str
    key: str  # the public key line that verified it
    fingerprint: str


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise SignatureError("ssh-keygen is not installed (OpenSSH's client tools); signatures need it")
    return exe


def _run(args: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([_ssh_keygen(), *args], cwd=cwd, input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=TIMEOUT_S, env={**os.environ, "SSH_ASKPASS": "", "DISPLAY": ""},
                              start_new_session=True)  # no controlling terminal: a passphrase prompt fails fast
    except subprocess.TimeoutExpired:
        raise SignatureError(f"ssh-keygen did not answer within {TIMEOUT_S} s") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def sign(amendment_id: str, private_key: Path, namespace: str = NAMESPACE) -> str:
    """The armored signature of `amendment_id` made with `private_key` (ssh-keygen -Y sign)."""
    key = Path(private_key)
    if not key.is_file():
        raise SignatureError(f"no private key at {key}")
    with tempfile.TemporaryDirectory(prefix="charter-sign-") as tmp:
        msg = Path(tmp) / "amendment-id"
        msg.write_text(amendment_id)
        proc = _run(["-Y", "sign", "-q", "-f", str(key.absolute()), "-n", namespace, str(msg)], Path(tmp))
        sig = msg.with_name("amendment-id.sig")
        if proc.returncode != 0 or not sig.is_file():
            raise SignatureError(f"ssh-keygen could not sign with {key}: {_last_line(proc)}")
        return sig.read_text()


def read_signature(path: Path) -> str:
    """A signature file's text; SignatureError if it is not an SSH signature."""
    try:
        data = Path(path).read_bytes()[: MAX_SIGNATURE_BYTES + 1]
    except OSError as e:
        raise SignatureError(f"can't read the signature file {path} ({e.strerror})") from None
    text = data.decode("utf-8", "replace")
    if len(data) > MAX_SIGNATURE_BYTES or "-----BEGIN SSH SIGNATURE-----" not in text:
        raise SignatureError(f"{path} is not an SSH signature (make one with ssh-keygen -Y sign -n {NAMESPACE})")
    return text


def allowed_signers(ratifiers: list[Ratifier], namespace: str = NAMESPACE) -> str:
    """git's allowed-signers text for the ratifiers that have a key, restricted to one namespace."""
    return "".join(f'{r.name} namespaces="{namespace}" {r.key}\n' for r in ratifiers if r.key)


def signer_fingerprint(amendment_id: str, signature: str, namespace: str = NAMESPACE) -> str:
    """The fingerprint of the key that made `signature` (checked against the id, trusting no key)."""
    with tempfile.TemporaryDirectory(prefix="charter-verify-") as tmp:
        sig = Path(tmp) / "sig"
        sig.write_text(signature)
        proc = _run(["-Y", "check-novalidate", "-n", namespace, "-s", str(sig)], Path(tmp), amendment_id.encode())
        m = _FINGERPRINT_RE.search((proc.stdout + proc.stderr).decode("utf-8", "replace"))
        if proc.returncode != 0 or not m:
            raise SignatureError(f"the signature does not verify for amendment {amendment_id[:12]} "
                                 f"(not made over this id in namespace {namespace}: {_last_line(proc)})")
        return m.group(1)


def verify(amendment_id: str, signature: str, by: str, ratifiers: list[Ratifier], namespace: str = NAMESPACE) -> Verified:
    """Check that `signature` is `by`'s, over `amendment_id`, with a key `ratifiers` lists."""
    fingerprint = signer_fingerprint(amendment_id, signature, namespace)
    owner = next((r for r in ratifiers if r.key and ssh_fingerprint(r.key) == fingerprint), None)
    if owner is None:
        raise SignatureError(f"the signature was made with key {fingerprint}, which amendment.ratifiers does not list")
    if owner.name != by:
        raise SignatureError(f"the signature was made with {owner.name}'s key ({fingerprint}), not {by}'s")
    with tempfile.TemporaryDirectory(prefix="charter-verify-") as tmp:
        allowed, sig = Path(tmp) / "allowed_signers", Path(tmp) / "sig"
        allowed.write_text(allowed_signers(ratifiers, namespace))
        sig.write_text(signature)
        proc = _run(["-Y", "verify", "-f", str(allowed), "-I", by, "-n", namespace, "-s", str(sig)], Path(tmp),
                    amendment_id.encode())
        if proc.returncode != 0:
            raise SignatureError(f"{by}'s signature does not verify for amendment {amendment_id[:12]}: {_last_line(proc)}")
    return Verified(by, owner.key, fingerprint)
