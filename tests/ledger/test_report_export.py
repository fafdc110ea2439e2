"""The lab notebook (ledger.report) and the exports (ledger.export) match the events."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from ledger.export import ExportError, export_views, results_rows
from ledger.query import open_readonly
from ledger.report import ReportError, diff_summary, progress_points, write_report
from ledger.views import VIEW_DOCS, VIEWS

from audit_fixtures import BASE, C1, C2, C3, S1, S2, build_ledger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory) -> Path:
    return build_ledger(tmp_path_factory.mktemp("report") / "ledger.duckdb")


@pytest.fixture
def con(ledger_path):
    c = open_readonly(ledger_path)
    yield c
    c.close()


# -- report --------------------------------------------------------------------------------------


def test_report_of_a_session(con, tmp_path):
    md, png = write_report(con, tmp_path / "out", session=S1)
    assert md.name == f"report-{S1}.md" and png.name == f"progress-{S1}.png"
    text = md.read_text()
    assert f"![val_bpb per experiment]({png.name})" in text
    assert "baseline val_bpb: **1.5000**" in text and "best val_bpb: **1.4500** (improvement 0.0500)" in text
    keeps = text.split("## Keeps")[1].split("## Discards")[0]
    assert "### Experiment 1: raise LR to 0.04 and deepen" in keeps
    assert "delta -0.0500 vs best before 1.5000" in keeps and "improvement 0.0500" in keeps
    assert "1 file(s) (train.py), +3 -2 lines" in keeps
    assert "+LR = 0.04" in keeps and C1 in keeps
    discards = text.split("## Discards")[1].split("## Crashes")[0]
    assert "| 2 | switch to GeLU | 1.4700 | -0.0200 | worse by 0.0200 |" in discards
    crashes = text.split("## Crashes")[1].split("## Refusals")[0]
    assert "| 3 | crash | widen to 65536 | 7900 | training exited with code 1 |" in crashes
    refusals = text.split("## Refusals")[1].split("## Gate history")[0]
    assert "| 4 | no-eval-in-train | train.py:40 | **yes** | evaluate_bpb(model) |" in refusals
    assert "| 4 | data_access | train.py:12 | no |" in refusals
    gates = text.split("## Gate history")[1].split("## Budgets")[0]
    assert "| RUN | THROTTLE | memory-soft | controller |" in gates
    assert "operator-resume" not in gates  # after the session ended
    budgets = text.split("## Budgets")[1]
    assert "| experiments | 4 | 40 | 10% |" in budgets and "| device_seconds | 251 | 7,200 | 3% |" in budgets
    assert "| disk_mb | not recorded | 20,480 |  |" in budgets


def test_progress_chart_is_a_png(con, tmp_path):
    _, png = write_report(con, tmp_path, session=S1)
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400 and image.shape[2] in (3, 4)
    assert image.std() > 0.01  # not a blank canvas


def test_progress_points():
    exps = [
        {"experiment": 0, "decision": "baseline", "val_bpb": 1.5, "description": "baseline"},
        {"experiment": 1, "decision": "discard", "val_bpb": 1.6, "description": "a"},
        {"experiment": 2, "decision": "keep", "val_bpb": 1.4, "description": "b"},
        {"experiment": 3, "decision": "crash", "val_bpb": None, "description": "c"},
        {"experiment": 4, "decision": "baseline", "val_bpb": 1.45, "description": "repair"},  # a repair run: not a keep
    ]
    pts = progress_points(exps)
    assert [x for x, *_ in pts["kept"]] == [0, 2]
    assert pts["other"] == [(1, 1.6), (4, 1.45)]
    assert pts["failed"] == [(3, "crash")]
    assert [y for _, y in pts["best"]] == [1.5, 1.5, 1.4, 1.4, 1.4]


def test_report_defaults_to_the_latest_session(con, tmp_path):
    md, png = write_report(con, tmp_path)
    assert md.name == f"report-{S2}.md" and png.exists()
    text = md.read_text()
    assert "No experiment was kept." in text and "not ended" in text and "**1.4400**" in text


def test_report_of_an_unknown_session(con, tmp_path):
    with pytest.raises(ReportError, match="no session"):
        write_report(con, tmp_path, session="s-nope")


def test_agent_text_cannot_break_the_markdown(tmp_path):
    from ledger.report import _cell, _fence
    assert _cell("a | b\n<script>`x`") == "a \\| b &lt;script&gt;'x'"
    assert _fence("x ```` y") == "`````"
    assert diff_summary("--- a/x.py\n+++ b/x.py\n-a\n+b\n+c\n") == {"files": ["x.py"], "added": 2, "removed": 1}


# -- export --------------------------------------------------------------------------------------


def counts(con):
    return {v: con.execute(f"SELECT count(*) FROM {v}").fetchall()[0][0] for v in VIEWS}


def test_parquet_export_matches_the_views(con, tmp_path):
    paths = export_views(con, tmp_path, "parquet")
    assert sorted(p.name for p in paths) == sorted(f"{v}.parquet" for v in VIEWS)
    expected = counts(con)
    for view in VIEWS:
        table = pq.read_table(tmp_path / f"{view}.parquet")
        assert table.column_names == list(VIEW_DOCS[view])
        assert table.num_rows == expected[view], view
    exps = pq.read_table(tmp_path / "experiments.parquet").to_pylist()
    assert [(e["session"], e["experiment"], e["decision"]) for e in exps] == [
        (S1, 0, "baseline"), (S1, 1, "keep"), (S1, 2, "discard"), (S1, 3, "crash"), (S1, 4, "refused"), (S2, 0, "baseline")]
    keep = exps[1]
    assert (keep["val_bpb"], keep["candidate_commit"], keep["parent_commit"]) == (1.45, C1, BASE)
    refusals = pq.read_table(tmp_path / "refusals.parquet").to_pylist()
    assert sorted((r["rule"], r["hard"]) for r in refusals) == [("data_access", False), ("no-eval-in-train", True)]


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_exports_match_the_views(con, tmp_path, fmt, delimiter):
    export_views(con, tmp_path, fmt)
    expected = counts(con)
    for view in VIEWS:
        with open(tmp_path / f"{view}.{fmt}", newline="") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
        assert rows[0] == list(VIEW_DOCS[view])
        assert len(rows) - 1 == expected[view], view
    with open(tmp_path / f"experiments.{fmt}", newline="") as f:
        exps = list(csv.DictReader(f, delimiter=delimiter))
    keep = next(e for e in exps if e["decision"] == "keep")
    assert float(keep["val_bpb"]) == 1.45 and keep["candidate_commit"] == C1
    assert keep["diff"].splitlines()[3] == "-LR = 0.02"  # a multi-line diff survives quoting
    with open(tmp_path / f"budgets.{fmt}", newline="") as f:
        budgets = {(b["session"], b["resource"]): b for b in csv.DictReader(f, delimiter=delimiter)}
    assert float(budgets[(S1, "experiments")]["used"]) == 4 and float(budgets[(S1, "experiments")]["limit"]) == 40


def test_export_of_one_session(con, tmp_path):
    export_views(con, tmp_path, "parquet", session=S2)
    assert pq.read_table(tmp_path / "experiments.parquet").column("session").to_pylist() == [S2]
    assert pq.read_table(tmp_path / "refusals.parquet").num_rows == 0


def test_results_tsv_matches_upstream_autoresearch(con, tmp_path):
    export_views(con, tmp_path, "tsv", session=S1)
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert lines == [
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription",
        f"{BASE[:7]}\t1.500000\t1.0\tkeep\tbaseline",
        f"{C1[:7]}\t1.450000\t1.2\tkeep\traise LR to 0.04 and deepen",
        f"{C2[:7]}\t1.470000\t1.1\tdiscard\tswitch to GeLU",
        f"{C3[:7]}\t0.000000\t7.7\tcrash\twiden to 65536",
    ]
    with open(tmp_path / "results.tsv", newline="") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 4
    # with no session given, results.tsv is the latest session's
    assert results_rows(con) == [(C1[:7], "1.440000", "0.9", "keep", "baseline")]


def test_unknown_export_format(con, tmp_path):
    with pytest.raises(ExportError, match="xlsx"):
        export_views(con, tmp_path, "xlsx")
