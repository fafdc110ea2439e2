"""The auditor views say what the events say (ledger.views)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ledger import EventKind, Ledger
from ledger.query import open_readonly
from ledger.views import VIEW_DOCS, VIEWS, install_views, render_docs, views_installed

from audit_fixtures import (
    BASE, C1, C2, C3, KEEP_DIFF, S1, S2, S3, build_ledger, build_resumed_ledger, default_rules, live_cursor,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory) -> Path:
    return build_ledger(tmp_path_factory.mktemp("audit") / "ledger.duckdb")


@pytest.fixture(scope="module")
def resumed_path(tmp_path_factory) -> Path:
    return build_resumed_ledger(tmp_path_factory.mktemp("audit") / "resumed.duckdb")


@pytest.fixture
def con(ledger_path):
    c = open_readonly(ledger_path)
    yield c
    c.close()


def dicts(con, sql, params=None):
    cur = con.execute(sql, params) if params else con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def test_every_view_has_exactly_the_documented_columns(con):
    for view in VIEWS:
        cols = [d[0] for d in con.execute(f"SELECT * FROM {view} LIMIT 0").description]
        assert cols == list(VIEW_DOCS[view]), view


def test_every_column_is_documented_in_one_sentence_and_in_docs_auditing():
    for view, columns in VIEW_DOCS.items():
        for col, text in columns.items():
            assert text.strip() and text.endswith("."), (view, col)
    doc = (REPO / "docs" / "auditing.md").read_text()
    assert render_docs() in doc, "docs/auditing.md is out of date: paste ledger.views.render_docs() into it"


def test_sessions(con):
    rows = {r["session"]: r for r in dicts(con, "SELECT * FROM sessions")}
    assert set(rows) == {S1, S2}
    s1 = rows[S1]
    assert (s1["tag"], s1["branch"], s1["proposer"], s1["isolation"]) == ("t1", "charter/t1", "offline", "none")
    assert s1["constitution_hash"] == "h2"
    assert s1["end_reason"] == "reached --max-experiments 4"
    assert (s1["experiments"], s1["keeps"]) == (4, 1)
    assert (s1["baseline_bpb"], s1["best_bpb"]) == (1.5, 1.45)
    assert s1["final_gate"] == "THROTTLE"
    assert s1["ended"] is not None and s1["ended"] >= s1["started"]
    s2 = rows[S2]
    assert s2["ended"] is None and s2["end_reason"] is None
    assert (s2["baseline_bpb"], s2["best_bpb"], s2["keeps"], s2["final_gate"]) == (1.44, 1.44, 0, "RUN")
    assert s2["isolation"] == "bubblewrap"


def test_experiments_one_row_per_decided_event(ledger_path):
    with Ledger.open(ledger_path, read_only=True) as led:
        decided = led.events(kinds=[EventKind.DECIDED])
    with open_readonly(ledger_path) as c:
        rows = dicts(c, "SELECT * FROM experiments")
    assert [r["seq"] for r in rows] == [e.seq for e in decided]
    for r, e in zip(rows, decided):
        assert (r["session"], r["experiment"], r["decision"], r["val_bpb"]) == (e.session, e.experiment, str(e.decision), e.val_bpb)
        assert r["reason"] == e.payload["reason"]


def test_experiment_details_join_the_step_events(con):
    by = {r["experiment"]: r for r in dicts(con, "SELECT * FROM experiments WHERE session = ?", [S1])}
    assert {n: r["decision"] for n, r in by.items()} == {0: "baseline", 1: "keep", 2: "discard", 3: "crash", 4: "refused"}
    base, keep, disc, crash, refused = (by[n] for n in range(5))
    assert (base["candidate_commit"], base["parent_commit"], base["source"], base["hypothesis"]) == (BASE, BASE, "baseline", None)
    assert keep["description"] == "raise LR to 0.04 and deepen"
    assert keep["hypothesis"] == "a larger LR converges faster in 60 s"
    assert (keep["parent_commit"], keep["candidate_commit"], keep["diff"]) == (BASE, C1, KEEP_DIFF)
    assert keep["improvement"] == pytest.approx(0.05)
    assert (keep["train_seconds"], keep["eval_seconds"], keep["peak_rss_mb"], keep["runs"]) == (71.0, 11.0, 1200.0, 1)
    assert (disc["candidate_commit"], disc["val_bpb"], disc["improvement"]) == (C2, 1.47, pytest.approx(-0.02))
    assert (crash["candidate_commit"], crash["val_bpb"], crash["eval_seconds"], crash["peak_rss_mb"]) == (C3, None, None, 7900.0)
    assert (refused["candidate_commit"], refused["diff"], refused["runs"], refused["parent_commit"]) == (None, None, 0, C1)
    assert refused["reason"].startswith("harm test: data_access")
    assert all(r["gate_state"] == "RUN" for r in by.values())


def test_a_reused_experiment_number_is_not_mixed_up(resumed_path):
    with open_readonly(resumed_path) as c:
        rows = dicts(c, "SELECT * FROM experiments WHERE experiment = 1 ORDER BY seq")
    assert [(r["description"], r["decision"]) for r in rows] == [("first try", "interrupted"), ("second try", "keep")]
    first, second = rows
    assert (first["diff"], first["runs"], first["train_seconds"], first["candidate_commit"]) == ("first", 0, None, C1)
    assert (second["diff"], second["runs"], second["train_seconds"], second["candidate_commit"]) == ("second", 1, 61.0, C2)


def test_refusals_one_row_per_listed_refusal(con, resumed_path):
    rows = dicts(con, "SELECT * FROM refusals ORDER BY line")
    assert [(r["session"], r["experiment"], r["rule"], r["path"], r["line"], r["evidence"], r["hard"]) for r in rows] == [
        (S1, 4, "data_access", "train.py", 12, "open('val.bin')", False),
        (S1, 4, "no-eval-in-train", "train.py", 40, "evaluate_bpb(model)", True),
    ]
    assert rows[0]["seq"] == rows[1]["seq"]
    with open_readonly(resumed_path) as c:
        (malformed,) = dicts(c, "SELECT * FROM refusals")
    assert (malformed["rule"], malformed["path"], malformed["line"], malformed["hard"]) == ("malformed", None, None, False)


def test_gate_transitions(con):
    rows = dicts(con, "SELECT * FROM gate_transitions ORDER BY seq")
    assert [(r["session"], r["from_state"], r["to_state"], r["rule"], r["who"]) for r in rows] == [
        (S1, "RUN", "THROTTLE", "memory-soft", "controller"),
        (None, "THROTTLE", "RUN", "operator-resume", "person:bob"),
    ]
    assert rows[0]["evidence"] == "memory_soft_exceeded = 2 (threshold 2)"


def test_budgets_count_like_the_controller(con):
    limits = default_rules()["budgets"]["session"]
    rows = {r["resource"]: r for r in dicts(con, "SELECT * FROM budgets WHERE session = ?", [S1])}
    assert list(rows) == ["experiments", "device_seconds", "wall_hours", "agent_tokens", "agent_dollars", "disk_mb"]
    assert rows["experiments"]["used"] == 4  # baseline, keep, discard, crash; the refusal never ran
    assert rows["device_seconds"]["used"] == pytest.approx(70 + 10 + 71 + 11 + 72 + 12 + 5)
    assert rows["agent_tokens"]["used"] == 1500 and rows["agent_dollars"]["used"] == pytest.approx(0.25)
    assert rows["disk_mb"]["used"] is None
    for name, row in rows.items():
        assert row["limit"] == limits[name], name
    (start, end) = con.execute(
        "SELECT min(ts) FILTER (WHERE kind = 'session_started'), max(ts) FILTER (WHERE kind = 'session_ended') FROM events WHERE session = ?",
        [S1]).fetchone()
    assert rows["wall_hours"]["used"] == pytest.approx((end - start).total_seconds() / 3600)


def test_budget_limits_follow_the_constitution_in_force_and_skip_repairs(resumed_path):
    with open_readonly(resumed_path) as c:
        rows = {r["resource"]: r for r in dicts(c, "SELECT * FROM budgets")}
    assert rows["experiments"]["limit"] == 7
    assert rows["experiments"]["used"] == 2  # baseline + keep; interrupted, the repair and the refusal are not counted
    assert rows["device_seconds"]["used"] == pytest.approx(60 + 10 + 61 + 10 + 62 + 10)


def test_constitutions(con):
    rows = dicts(con, "SELECT * FROM constitutions ORDER BY seq")
    assert [(r["session"], r["version"], r["hash"], r["reason"]) for r in rows] == [
        (None, 1, "h1", "lab created"),
        (None, 1, "h2", "data and tokenizer hashes pinned by charter prepare"),
        (S1, 1, "h2", "loaded at session start"),
        (S2, 1, "h2", "loaded at session start"),
    ]


def test_views_on_a_cursor_of_the_live_writer(tmp_path):
    path = build_ledger(tmp_path / "live.duckdb")
    with Ledger.open(path) as led:
        cur = live_cursor(led)
        install_views(cur)
        install_views(cur)  # idempotent: CREATE OR REPLACE
        assert views_installed(cur)
        before = cur.execute("SELECT count(*) FROM experiments").fetchone()[0]
        # the writer keeps appending; the cursor's views see it; the writer's own connection has no views
        led.append(EventKind.DECIDED, actor="controller", session=S2, experiment=1, decision="discard", val_bpb=1.46,
                   payload={"decision": "discard", "reason": "worse"})
        assert cur.execute("SELECT count(*) FROM experiments").fetchone()[0] == before + 1
        with pytest.raises(duckdb.CatalogException):
            led._con.execute("SELECT * FROM experiments")
        cur.close()
        assert led.verify().ok


def test_views_write_nothing_to_the_file(tmp_path):
    path = build_ledger(tmp_path / "plain.duckdb")
    with open_readonly(path) as c:
        assert views_installed(c)
    plain = duckdb.connect(str(path), read_only=True)
    try:
        names = {r[0] for r in plain.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    finally:
        plain.close()
    assert not names & set(VIEWS)
