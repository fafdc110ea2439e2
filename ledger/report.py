"""A session's lab notebook, written from the ledger: Markdown plus a progress chart.

`write_report(con, out_dir, session=None)` reads the auditor views (`ledger.views`) on `con`
(read-only is enough) and writes `report-<session>.md` and `progress-<session>.png`: baseline,
best, each keep with its diff summary and delta, discards, crashes, refusals, the gate history
and the budgets, and a chart of val_bpb per experiment with the kept ones highlighted and the
running best as a step line (the shape of upstream autoresearch's progress plot). The default
session is the latest one started. Every number comes from a query in `CANNED_QUERIES`, which
`bench/audit_queries.py` times on a large ledger. Descriptions, hypotheses and diffs are agent
text: they are escaped for Markdown, never interpreted.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .errors import LedgerError
from .events import Decision
from .views import ensure_views

CANNED_QUERIES: dict[str, str] = {
    "latest_session": "SELECT session FROM events WHERE kind = 'session_started' ORDER BY seq DESC LIMIT 1",
    "session": "SELECT * FROM sessions WHERE session = $session",
    "experiments": "SELECT * FROM experiments WHERE session = $session ORDER BY seq",
    "refusals": "SELECT * FROM refusals WHERE session = $session ORDER BY seq, rule",
    "gate_history": (
        "SELECT g.* FROM gate_transitions g, (SELECT started, ended FROM sessions WHERE session = $session) s "
        "WHERE g.session = $session OR (g.session IS NULL AND g.ts >= s.started AND g.ts <= coalesce(s.ended, g.ts)) "
        "ORDER BY g.seq"
    ),
    "budgets": "SELECT * FROM budgets WHERE session = $session",
    "decision_counts": "SELECT decision, count(*) AS n FROM experiments WHERE session = $session GROUP BY decision ORDER BY decision",
}

# the section of runs that did not finish: failed ones (the change's fault) and interrupted ones
UNFINISHED = (*Decision.group("failed"), Decision.INTERRUPTED.value)


class ReportError(LedgerError):
    """There is nothing to report (no session, or the session is unknown)."""


def rows(con: Any, name: str, session: str | None = None) -> list[dict[str, Any]]:
    """Run one canned query and return its rows as dicts."""
    sql = CANNED_QUERIES[name]
    params = {"session": session} if "$session" in sql else None
    cur = con.execute(sql, params) if params else con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def latest_session(con: Any) -> str | None:
    found = rows(con, "latest_session")
    return found[0]["session"] if found else None


def collect(con: Any, session: str | None = None) -> dict[str, Any]:
    """Everything the notebook shows about one session, as plain data."""
    ensure_views(con)
    session = session or latest_session(con)
    if session is None:
        raise ReportError("the ledger has no session yet; run `charter run` first.")
    info = rows(con, "session", session)
    if not info:
        raise ReportError(f"no session {session!r} in the ledger.")
    return {
        "session": info[0],
        "experiments": rows(con, "experiments", session),
        "refusals": rows(con, "refusals", session),
        "gates": rows(con, "gate_history", session),
        "budgets": rows(con, "budgets", session),
    }


# -- the chart ----------------------------------------------------------------------------------


def progress_points(experiments: list[dict[str, Any]]) -> dict[str, list]:
    """x/y series of the chart: measured non-keeps, keeps (baseline included), failures and the
    running best after each experiment (None until the first measured keep or baseline)."""
    out: dict[str, list] = {"other": [], "kept": [], "failed": [], "best": []}
    best = None
    for i, e in enumerate(experiments):
        bpb, decision = e["val_bpb"], e["decision"]
        if decision in ("keep", "baseline") and bpb is not None and not (decision == "baseline" and e["experiment"] != 0):
            out["kept"].append((i, bpb, e["description"] or decision))
            best = bpb if best is None or decision == "keep" or bpb < best else best
        elif bpb is not None:
            out["other"].append((i, bpb))
        else:
            out["failed"].append((i, decision))
        out["best"].append((i, best))
    return out


def write_chart(experiments: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The progress chart as a PNG (matplotlib's Agg canvas; no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    pts = progress_points(experiments)
    fig = Figure(figsize=(11, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if pts["other"]:
        xs, ys = zip(*pts["other"])
        ax.scatter(xs, ys, s=18, color="#b0b0b0", label="discarded", zorder=2)
    if pts["kept"]:
        xs, ys, labels = zip(*pts["kept"])
        ax.scatter(xs, ys, s=46, color="#2ca02c", edgecolors="black", linewidths=0.6, label="kept", zorder=4)
        for x, y, label in zip(xs, ys, labels):
            text = str(label).replace("\n", " ")
            ax.annotate(text[:40] + ("..." if len(text) > 40 else ""), (x, y), textcoords="offset points",
                        xytext=(4, 6), fontsize=7, rotation=20, color="#1a661a")
    steps = [(x, y) for x, y in pts["best"] if y is not None]
    if steps:
        xs, ys = zip(*steps)
        ax.step(xs, ys, where="post", color="#2ca02c", linewidth=1.4, label="running best", zorder=3)
    if pts["failed"]:
        xs = [x for x, _ in pts["failed"]]
        ax.scatter(xs, [0.02] * len(xs), transform=ax.get_xaxis_transform(), marker="x", s=30,
                   color="#d62728", label="crash / timeout / refused", zorder=5)
    if not (pts["other"] or pts["kept"]):
        ax.text(0.5, 0.5, "no measured experiments yet", transform=ax.transAxes, ha="center", va="center")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment (in decision order)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# -- the Markdown -------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """Untrusted text made safe for one Markdown table cell."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def _bpb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def diff_summary(diff: str | None) -> dict[str, Any]:
    """Files touched and lines added/removed in a unified diff."""
    files, added, removed = [], 0, 0
    for line in (diff or "").splitlines():
        if line.startswith("+++ "):
            name = line[4:].strip()
            files.append(name[2:] if name.startswith("b/") else name)
        elif line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return {"files": files, "added": added, "removed": removed}


def render_markdown(data: dict[str, Any], chart_name: str, diff_lines: int = 80) -> str:
    s = data["session"]
    exps = data["experiments"]
    sid = s["session"]
    counts: dict[str, int] = {}
    for e in exps:
        counts[e["decision"]] = counts.get(e["decision"], 0) + 1
    out = [f"# Lab notebook: session `{_cell(sid)}`", ""]
    state = f"ended {s['ended']:%Y-%m-%d %H:%M:%S} UTC: {_cell(s['end_reason'])}" if s["ended"] else "not ended (running, or the controller died)"
    out += [
        f"- tag `{_cell(s['tag'])}`, branch `{_cell(s['branch'])}`, proposer `{_cell(s['proposer'])}`, isolation `{_cell(s['isolation'])}`",
        f"- started {s['started']:%Y-%m-%d %H:%M:%S} UTC; {state}",
        f"- constitution `{_cell(s['constitution_hash'])}`; gate at the end: **{_cell(s['final_gate'])}**",
        "",
        "## Result",
        "",
    ]
    base, best = s["baseline_bpb"], s["best_bpb"]
    gain = f" (improvement {base - best:.4f})" if base is not None and best is not None else ""
    out += [
        f"- baseline val_bpb: **{_bpb(base)}**",
        f"- best val_bpb: **{_bpb(best)}**{gain}",
        f"- experiments: {s['experiments']} after the baseline; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        "",
        f"![val_bpb per experiment]({chart_name})",
        "",
    ]
    # keeps, with their delta against the best before them
    out += ["## Keeps", ""]
    running = None
    keeps = []
    for e in exps:
        if e["decision"] == "baseline" and e["experiment"] == 0 and e["val_bpb"] is not None:
            running = e["val_bpb"]
        elif e["decision"] == "keep":
            keeps.append((e, running))
            running = e["val_bpb"]
    if not keeps:
        out += ["No experiment was kept.", ""]
    for e, before in keeps:
        d = diff_summary(e["diff"])
        delta = e["val_bpb"] - before if (e["val_bpb"] is not None and before is not None) else None
        delta_text = f"{delta:+.4f}" if delta is not None else "n/a"
        improvement = f"{e['improvement']:.4f}" if e["improvement"] is not None else "n/a"
        out += [
            f"### Experiment {e['experiment']}: {_cell(e['description'])}",
            "",
            f"- val_bpb **{_bpb(e['val_bpb'])}** (delta {delta_text} vs best before {_bpb(before)}; improvement {improvement})",
            f"- commit `{_cell(e['candidate_commit'])}` on `{_cell(e['parent_commit'])}`; {e['runs']} run(s)",
            f"- diff: {len(d['files'])} file(s) ({_cell(', '.join(d['files']))}), +{d['added']} -{d['removed']} lines",
        ]
        if e["hypothesis"]:
            out.append(f"- hypothesis (agent text): {_cell(e['hypothesis'])}")
        out.append(f"- reason: {_cell(e['reason'])}")
        if e["diff"]:
            lines = e["diff"].splitlines()
            shown = "\n".join(lines[:diff_lines]) + (f"\n... ({len(lines) - diff_lines} more lines)" if len(lines) > diff_lines else "")
            fence = _fence(shown)
            out += ["", f"{fence}diff", shown, fence]
        out.append("")
    out += _table("Discards", "| exp | description | val_bpb | improvement | reason |", "|---:|---|---:|---:|---|",
                  [_discard_row(e) for e in exps if e["decision"] == "discard"], "None.")
    out += _table("Crashes, timeouts and interruptions", "| exp | decision | description | peak RSS MB | reason |",
                  "|---:|---|---|---:|---|", [_failed_row(e) for e in exps if e["decision"] in UNFINISHED], "None.")
    out += _table("Refusals (harm test)", "| exp | rule | where | hard | evidence |", "|---:|---|---|---|---|",
                  [_refusal_row(r) for r in data["refusals"]], "None.")
    out += _table("Gate history", "| seq | time (UTC) | from | to | rule | by | evidence |", "|---:|---|---|---|---|---|---|",
                  [_gate_row(g) for g in data["gates"]], "No transition: the gate stayed where it was.")
    # budgets
    out += ["## Budgets (session limits of the constitution in force)", "", "| resource | used | limit | share |", "|---|---:|---:|---:|"]
    for b in data["budgets"]:
        used, limit = b["used"], b["limit"]
        share = f"{used / limit:.0%}" if used is not None and limit else ""
        out.append(f"| {b['resource']} | {_num(used)} | {_num(limit)} | {share} |")
    out += ["", "_Written from the ledger's events by `charter ledger report`; agent text is quoted, not trusted._", ""]
    return "\n".join(out)


def _table(title: str, header: str, rule: str, rows: list[str], empty: str) -> list[str]:
    """A notebook section: a heading, then a Markdown table of `rows` or the `empty` sentence."""
    return [f"## {title}", "", *([header, rule, *rows] if rows else [empty]), ""]


def _discard_row(e: dict[str, Any]) -> str:
    imp = f"{e['improvement']:+.4f}" if e["improvement"] is not None else ""
    return f"| {e['experiment']} | {_cell(e['description'])} | {_bpb(e['val_bpb'])} | {imp} | {_cell(e['reason'])} |"


def _failed_row(e: dict[str, Any]) -> str:
    rss = f"{e['peak_rss_mb']:.0f}" if e["peak_rss_mb"] is not None else ""
    return f"| {e['experiment']} | {e['decision']} | {_cell(e['description'])} | {rss} | {_cell(e['reason'])} |"


def _refusal_row(r: dict[str, Any]) -> str:
    where = f"{r['path']}:{r['line']}" if r["path"] and r["line"] is not None else (r["path"] or "")
    return f"| {r['experiment']} | {_cell(r['rule'])} | {_cell(where)} | {'**yes**' if r['hard'] else 'no'} | {_cell(r['evidence'])} |"


def _gate_row(g: dict[str, Any]) -> str:
    return (f"| {g['seq']} | {g['ts']:%Y-%m-%d %H:%M:%S} | {_cell(g['from_state'])} | {_cell(g['to_state'])} | "
            f"{_cell(g['rule'])} | {_cell(g['who'])} | {_cell(g['evidence'])} |")


def _num(value: float | None) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}"


def write_report(con: Any, out_dir: str | Path, session: str | None = None) -> tuple[Path, Path]:
    """Write the session's notebook (Markdown) and progress chart (PNG) into `out_dir`.

    `con` is a connection or cursor on the ledger (read-only is enough); `session` defaults to
    the latest session started. Returns (markdown path, png path).
    """
    data = collect(con, session)
    sid = data["session"]["session"]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"progress-{safe}.png"
    md = out / f"report-{safe}.md"
    kept = sum(e["decision"] == "keep" for e in data["experiments"])
    write_chart(data["experiments"], png, f"session {sid}: {len(data['experiments'])} decisions, {kept} kept")
    md.write_text(render_markdown(data, png.name), encoding="utf-8")
    return md, png
