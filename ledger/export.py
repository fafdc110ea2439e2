"""Export the auditor views to files: Parquet, CSV or TSV, one file per view.

`export_views(con, out_dir, fmt, session=None)` writes `<view>.<fmt>` for every view in
`ledger.views.VIEWS` (rows in the view's order: seq, or session then resource), optionally only
one session's rows. Rows are fetched as Arrow and written by pyarrow, never by DuckDB's COPY, so
it works on the query-only connection (`ledger.query.open_readonly`), which has file access
disabled. The TSV export also writes `results.tsv` in upstream autoresearch's format:

    commit	val_bpb	memory_gb	status	description

one row per experiment that ran (baseline and keep -> keep, discard -> discard, crash, timeout
and interrupted -> crash; refused proposals never ran and are left out), commit as 7 characters,
val_bpb with 6 decimals (0.000000 when nothing was measured), peak memory in GB with 1 decimal
(0.0 when unknown; upstream records GPU memory, Charter records the training process's peak RSS),
tabs and newlines in descriptions replaced by spaces. It covers `session`, or the latest session
when none is given, since upstream keeps one results.tsv per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import LedgerError
from .report import latest_session
from .views import VIEWS, ensure_views

FORMATS = ("parquet", "csv", "tsv")
RESULTS_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
_STATUS = {"baseline": "keep", "keep": "keep", "discard": "discard", "crash": "crash", "timeout": "crash", "interrupted": "crash"}


class ExportError(LedgerError):
    """The export was asked for something it cannot write (unknown format...)."""


def view_table(con: Any, view: str, session: str | None = None) -> pa.Table:
    """One view's rows as an Arrow table, optionally only one session's."""
    if view not in VIEWS:
        raise ExportError(f"unknown view {view!r}; views: {', '.join(VIEWS)}.")
    where = " WHERE session = $session" if session is not None else ""
    # budgets is already ordered by session and resource; the others by seq (sessions by start)
    order = {"budgets": "", "sessions": " ORDER BY started, session"}.get(view, " ORDER BY seq")
    sql = f"SELECT * FROM {view}{where}{order}"
    rel = con.sql(sql, params={"session": session} if session is not None else None)
    return rel.to_arrow_table()


def export_views(con: Any, out_dir: str | Path, fmt: str, session: str | None = None) -> list[Path]:
    """Write every auditor view to `out_dir` as `<view>.<fmt>`; returns the paths written.

    `fmt` is parquet, csv or tsv; tsv also writes `results.tsv` (see the module docstring).
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    ensure_views(con)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for view in VIEWS:
        table = view_table(con, view, session)
        path = out / f"{view}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            options = pacsv.WriteOptions(include_header=True, delimiter="\t" if fmt == "tsv" else ",")
            pacsv.write_csv(table, path, write_options=options)
        written.append(path)
    if fmt == "tsv":
        written.append(write_results_tsv(con, out / "results.tsv", session))
    return written


def results_rows(con: Any, session: str | None = None) -> list[tuple[str, str, str, str, str]]:
    """The rows of upstream's results.tsv for one session (default: the latest)."""
    ensure_views(con)
    session = session or latest_session(con)
    if session is None:
        return []
    found = con.execute(
        "SELECT candidate_commit, val_bpb, peak_rss_mb, decision, description FROM experiments "
        "WHERE session = $session ORDER BY seq",
        {"session": session},
    ).fetchall()
    out = []
    for commit, bpb, rss, decision, description in found:
        status = _STATUS.get(decision)
        if status is None:  # refused: it never ran
            continue
        if status == "crash":
            bpb = None
        out.append((
            (commit or "")[:7] or "-------",
            f"{bpb if bpb is not None else 0.0:.6f}",
            f"{(rss or 0.0) / 1024:.1f}",
            status,
            " ".join(str(description or decision).split()),
        ))
    return out


def write_results_tsv(con: Any, path: str | Path, session: str | None = None) -> Path:
    path = Path(path)
    lines = ["\t".join(RESULTS_COLUMNS)] + ["\t".join(r) for r in results_rows(con, session)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
