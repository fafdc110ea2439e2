"""The full cycle on a real lab, as a user types it: a first session puts version 1 in force;
propose, two signed ratifications, apply; the next `charter run` runs under version 2 and
records it; a hand edit of constitution.toml is refused at the next session start. Real training
with the tiny rules the controller tests use (seconds per run), real git, DuckDB and ssh-keygen."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.workspace.lab import RatifierChoice, init_lab
from controller.workspace.preparation import prepare_lab
from ledger import Ledger, payloads

# the controller tests' tiny rules and corpus, from their conftest (not importable by name)
_spec = importlib.util.spec_from_file_location("controller_test_setup", Path(__file__).parents[1] / "controller" / "conftest.py")
setup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup)


@pytest.fixture
def env(tmp_path):
    cache = tmp_path / "cache"
    return {**os.environ, "CHARTER_CACHE_DIR": str(cache), "CHARTER_NO_COMPILE": "1", "HF_HUB_OFFLINE": "1"}


def charter(*args, env):
    return subprocess.run([sys.executable, "-m", "controller.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_propose_ratify_twice_apply_and_the_next_session_runs_under_version_2(short_dir, keys, env, monkeypatch):
    monkeypatch.setenv("CHARTER_CACHE_DIR", env["CHARTER_CACHE_DIR"])
    corpus = setup.make_corpus(short_dir / "corpus")
    lab = init_lab(short_dir / "lab", ratifiers=[RatifierChoice(n, keys[n].line) for n in ("alice", "bob")])
    # a major amendment needs both ratifiers in this lab (set by hand before its first session)
    setup.edit_lab(lab, {**setup.TINY_RULES, "major = 1 ": "major = 2 "}, setup.TINY_TRAIN)
    prepare_lab(lab, quiet=True, source=str(corpus))

    first = charter("run", "--lab", lab.root, "--max-experiments", "0", "--tag", "one", env=env)
    assert first.returncode == 0, first.stderr

    proposed = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--set", "budgets.session.experiments=60",
                       "--why", "raise the session's experiment budget", env=env)
    assert proposed.returncode == 0, proposed.stderr
    aid = proposed.stdout.splitlines()[0]
    assert "major (needs 2 ratification(s))" in proposed.stdout

    assert charter("amend", "ratify", "--lab", lab.root, aid[:12], "--by", "alice", "--key", keys["alice"].private, env=env).returncode == 0
    early = charter("amend", "apply", "--lab", lab.root, aid, env=env)
    assert early.returncode == 1 and "has 1 of the 2 ratifications it needs; may still ratify: bob" in early.stderr
    assert charter("amend", "ratify", "--lab", lab.root, aid[:12], "--by", "bob", "--key", keys["bob"].private, env=env).returncode == 0
    applied = charter("amend", "apply", "--lab", lab.root, aid, env=env)
    assert applied.returncode == 0, applied.stderr
    assert "constitution version 1 -> 2" in applied.stdout and "stays on charter/one" in applied.stdout

    second = charter("run", "--lab", lab.root, "--max-experiments", "0", "--tag", "two", env=env)
    assert second.returncode == 0, second.stderr
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        evs = led.events()
    [started] = [payloads.read(e) for e in evs if e.kind == "session_started" and payloads.read(e).tag == "two"]
    session = [e.session for e in evs if e.kind == "session_started"][-1]
    [loaded] = [payloads.read(e) for e in evs if e.kind == "constitution_loaded" and e.session == session]
    [applied_ev] = [payloads.read(e) for e in evs if e.kind == "amendment_applied"]
    assert (started.constitution_version, started.constitution_hash) == (2, applied_ev.hash)
    assert loaded.version == 2 and loaded.rules["meta"]["amendment_id"] == aid
    assert loaded.rules["budgets"]["session"]["experiments"] == 60

    verified = charter("ledger", "verify", "--lab", lab.root, env=env)
    assert verified.returncode == 0 and verified.stdout.startswith("ok: "), verified.stderr
    log = json.loads(charter("amend", "log", "--lab", lab.root, "--json", env=env).stdout)
    assert [r["event"] for r in log] == ["proposed", "ratified (signed)", "ratified (signed)", "applied"]
    view = json.loads(charter("ledger", "query", "--lab", lab.root, "--json",
                              "select status, ratifications, applied_version from amendments", env=env).stdout)
    assert view == [{"status": "applied", "ratifications": 2, "applied_version": 2}]

    # a hand edit after the amendment: refused at session start, in one line naming the legal path
    text = lab.constitution_path.read_text().replace("experiments = 60 ", "experiments = 61 ")
    lab.constitution_path.write_text(text)
    lab.git.commit_all("hand edit")
    refused = charter("run", "--lab", lab.root, "--max-experiments", "0", "--tag", "three", env=env)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "budgets.session.experiments: 60 -> 61" in refused.stderr and "only a ratified amendment may change it" in refused.stderr
