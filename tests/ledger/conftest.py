"""Shared helpers for the ledger tests: a filled ledger and raw (attacker's) access to the file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import pytest

from ledger import Decision, Draft, EventKind, Ledger

REPO_ROOT = Path(__file__).resolve().parents[2]


def sample_drafts(n: int, start: int = 0) -> list[Draft]:
    """n varied drafts: every typed column gets a value in some of them."""
    drafts = []
    for i in range(start, start + n):
        drafts.append(Draft(
            kind=EventKind.EVALUATED if i % 2 else EventKind.NOTE,
            actor="controller" if i % 3 else "person:alice",
            session=f"s{i // 4}",
            payload={"text": f"hello {i} ü", "i": i, "nested": {"list": [i, 1.5, None, True]}},
            experiment=i,
            decision=Decision.KEEP if i % 2 else None,
            val_bpb=1.0 + i / 100,
            gate_state="RUN",
            rule=f"rule-{i}",
            commit_sha=f"{i:040x}",
        ))
    return drafts


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "lab" / ".charter" / "ledger.duckdb"


@pytest.fixture
def filled(ledger_path: Path) -> Path:
    """A closed ledger file holding 12 events (seq 1..12)."""
    with Ledger.open(ledger_path) as led:
        led.append(EventKind.LAB_CREATED, actor="person:alice", payload={"lab": "x"})
        led.append_many(sample_drafts(11))
    return ledger_path


def raw(path: Path) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection with the guard triggers dropped, as an attacker would."""
    con = duckdb.connect(str(path))
    con.execute("DROP TRIGGER IF EXISTS events_no_update ON events")
    con.execute("DROP TRIGGER IF EXISTS events_no_delete ON events")
    return con


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
