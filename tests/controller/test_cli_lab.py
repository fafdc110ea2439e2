"""The CLI as a new user meets it: init, notes, verify, tamper and truncation, the first `charter run`."""

import os

import duckdb
import pytest

from controller.workspace.anchor import write_anchor
from controller.workspace.lab import find_lab
from lab_helpers import charter
from ledger import Ledger


def test_init_notes_verify_and_a_tampered_row(tmp_path):
    lab_dir = tmp_path / "lab"
    made = charter("init", lab_dir)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == [".charter", ".git", ".gitignore", "constitution.toml", "prepare.py", "program.md", "train.py"]
    again = charter("init", lab_dir)
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert charter("constitution", "validate", lab_dir / "constitution.toml").returncode == 0
    for who, text in [("alice", "first look"), ("bob", "second look")]:
        r = charter("ledger", "note", "--lab", lab_dir, "--by", who, text)
        assert r.returncode == 0 and r.stdout.startswith("noted as seq")
    ok = charter("ledger", "verify", "--lab", lab_dir)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 3 events, head ")

    con = duckdb.connect(str(lab_dir / ".charter" / "ledger.duckdb"))
    con.execute("DROP TRIGGER IF EXISTS events_no_update ON events")
    con.execute("UPDATE events SET body = replace(body, 'first look', 'nothing to see') WHERE seq = 2")
    con.close()
    bad = charter("ledger", "verify", "--lab", lab_dir)
    assert bad.returncode == 1 and bad.stderr.strip() == "FAILED: seq 2: body does not match hash (edited?)"


def test_truncation_is_caught_by_the_git_anchor(tmp_path):
    lab_dir = tmp_path / "lab"
    assert charter("init", lab_dir).returncode == 0
    for i in range(4):
        charter("ledger", "note", "--lab", lab_dir, "--by", "alice", f"note {i}")
    lab = find_lab(str(lab_dir))
    with Ledger.open(lab.ledger_path) as led:
        head = led.head()
    write_anchor(lab, head, "s-test")
    assert charter("ledger", "verify", "--lab", lab_dir).stdout.endswith(f"(anchor at seq {head[0]} matches)\n")

    con = duckdb.connect(str(lab.ledger_path))
    con.execute("DROP TRIGGER IF EXISTS events_no_delete ON events")
    con.execute("DELETE FROM events WHERE seq >= 4")  # the chain that is left still links up
    con.close()
    bad = charter("ledger", "verify", "--lab", lab_dir)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"FAILED: seq {head[0]}: the ledger ends at seq 3 but the anchor records seq {head[0]} (truncated?)"


def test_missing_lab_and_bad_usage_are_one_line(tmp_path):
    r = charter("status", "--lab", tmp_path / "nowhere")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "charter init" in r.stderr
    r = charter("ledger", "query", "--lab", tmp_path / "nowhere", "select 1")
    assert r.returncode == 1 and "Traceback" not in r.stderr



def test_a_run_usage_mistake_costs_no_lab_and_no_preparation(tmp_path):
    # the queue proposer without --queue: one line, before any lab is created or data prepared
    r = charter("run", "--lab", tmp_path / "fresh", "--proposer", "queue", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "charter: the queue proposer needs --queue DIR"
    assert not (tmp_path / "fresh").exists()
    # a kind that is not installed is refused by the parser, naming what is
    r = charter("run", "--lab", tmp_path / "fresh", "--proposer", "nonesuch", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'nonesuch'" in r.stderr and "'offline'" in r.stderr
    assert not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_first_run_creates_and_prepares_a_lab_in_the_current_directory(tmp_path):
    # the newcomer's command on the shipped defaults: Debian corpus, 60 s budget, compile on
    env = dict(os.environ)
    for key in ("CHARTER_LAB", "CHARTER_NO_COMPILE"):
        env.pop(key, None)
    r = charter("run", "--max-experiments", "0", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "creating" in r.stdout and "val_bpb: baseline" in r.stdout
    lab = find_lab(str(tmp_path / "lab"))
    rules = lab.load_constitution()
    assert rules.evaluation.data_hash and rules.evaluation.tokenizer_hash  # pinned by the first prepare
    status = charter("status", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0 and '"running": false' in status.stdout
