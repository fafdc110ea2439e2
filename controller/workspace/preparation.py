"""Preparing a lab's data and tokenizer, and pinning their hashes in its constitution.

`charter prepare` checks the lab's prepare.py against its pin, runs it (idempotent: the cache is
reused), asks it to re-hash every artifact (`prepare.py verify --json`) and fills the
constitution's empty `data_hash` / `tokenizer_hash` pins, committing that change. A pin that is
already set and no longer matches is an error, never silently updated.
"""

from __future__ import annotations

import os
import subprocess
import sys

import constitution
from controller.workspace.lab import Lab, LabError, file_sha256, set_pins
from controller.execution.runner import base_env, verify_data
from ledger import EventKind, Ledger, payloads


def prepare_lab(lab: Lab, actor: str = "operator", quiet: bool = False, source: str | None = None) -> dict:
    rules = lab.load_constitution()
    pin = rules.evaluation.immutable.get("prepare.py")
    if pin and file_sha256(lab.root / "prepare.py") != pin:
        raise LabError("prepare.py does not match its pin in constitution.toml; restore it with `git checkout main -- prepare.py`")
    env = dict(os.environ, **{k: v for k, v in base_env(rules).items() if k.startswith(("CHARTER_", "HF_"))})
    env.pop("CHARTER_TIME_BUDGET", None)
    proc = subprocess.run(
        [sys.executable, "prepare.py", *(["--source", source] if source else [])], cwd=lab.root, env=env,
        stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE if quiet else None, text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()
        raise LabError(f"prepare.py failed (exit {proc.returncode}){': ' + tail[-1] if tail else ''}")
    data = verify_data(lab.root, rules)

    text = lab.constitution_path.read_text()
    pinned = {}
    for key in ("data_hash", "tokenizer_hash"):
        want, have = getattr(rules.evaluation, key), data.get(key)
        if not isinstance(have, str):
            raise LabError(f"prepare.py verify reported no {key}")
        if want and want != have:
            raise LabError(f"the prepared {key.split('_')[0]} ({have[:12]}) does not match evaluation.{key} ({want[:12]}) in constitution.toml")
        if not want:
            pinned[key] = have
    if pinned:
        with Ledger.open(lab.ledger_path, read_only=True, wait_s=5) as led:
            if led.events(kinds=[EventKind.SESSION_STARTED], limit=1):
                # after the first session the constitution in force is the ledger's; a pin is a change
                raise LabError(f"constitution.toml has an empty {' and '.join(pinned)} after the lab's first session; "
                               "restore it with git checkout (pins are set by charter prepare only before the first session)")
        text = set_pins(text, {("evaluation", key): digest for key, digest in pinned.items()})
        new_rules = constitution.parse_text(text, "constitution.toml")
        lab.constitution_path.write_text(text)
        commit = lab.git.commit_all("charter: pin prepared data and tokenizer hashes")
        with Ledger.open(lab.ledger_path, wait_s=5) as led:
            led.record(payloads.ConstitutionLoaded(
                hash=constitution.constitution_hash(new_rules), version=new_rules.meta.version,
                reason="data and tokenizer hashes pinned by charter prepare", pinned=pinned,
            ), actor=actor, commit_sha=commit)
    return {**data, "pinned": sorted(pinned)}
