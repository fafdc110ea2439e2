"""Where a session's wall time goes, phase by phase, from the controller's own timings in the ledger.

Reads a lab's ledger read-only (`ledger.query.open_readonly`: run it after the session, or on a
copy; a running controller holds the file) and, for one session (default: the last), prints one
Markdown table: for each phase of a run (`controller.execution.phases`: start-up, training,
saving, hand-off, worker start, scoring, post-check, decision; then the time between one run's
last moment and the next one's start; then the spans training sandbox, evaluation and run) the number of runs that reached both of its ends, the median and the spread
[min, max] in seconds. Above it: the session's wall span (its `session_started` to its last
event), the training its runs' budgets counted (`counted_seconds`: CPU seconds per CPU on the cpu
clock, wall seconds on the wall clock) and that as a share of the span, the wall time the budgets
lasted (sandbox start to budget end) and its share, and the wall time outside counted training
per experiment and per run. `--json` prints the same as one JSON object. Nothing is run.

    python bench/phases.py --lab DIR [--session ID] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution.phases import PHASES, SPANS, Phase, RunPhases, from_payloads, seconds  # noqa: E402
from controller.workspace.lab import LabError, find_lab  # noqa: E402
from ledger import Decision, EventKind, LedgerError  # noqa: E402
from ledger import payloads as P  # noqa: E402
from ledger.query import open_readonly  # noqa: E402


BUDGET = Phase("budget", "sandbox_started", "budget_ended", "the wall time a run's budget lasted")
TRAINING = next(ph for ph in PHASES if ph.name == "training")  # start-up marker to the budget's end


class Row(NamedTuple):
    """One ledger event, as far as this bench needs it (ts in unix seconds)."""

    seq: int
    ts: float
    session: str | None
    kind: str
    experiment: int | None
    decision: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class SessionRuns:
    """A session's runs with their phases and counted training, and its wall span."""

    session: str
    started: float  # its `session_started` event (unix seconds)
    last: float  # its last event
    runs: tuple[RunPhases, ...]
    counted: tuple[float | None, ...]  # each run's counted_seconds (None in ledgers from before them)
    experiments: int  # its decisions that ran (Decision.group("ran"))


class BenchError(Exception):
    """No such session, or nothing to read; the message is one line."""


# -- pure: events -> runs -> summary ---------------------------------------------------------------

def session_runs(rows: list[Row], session: str | None = None) -> SessionRuns:
    """The runs of `session` (default: the last one started), in seq order. A run is a
    `training_finished` event; the `evaluated` event of the same experiment and run index right
    after it is its evaluation, and a `decided` event of its experiment right after it makes it
    the experiment's last run."""
    starts = [r for r in rows if r.kind == EventKind.SESSION_STARTED]
    if session is None:
        if not starts:
            raise BenchError("the ledger has no session")
        session = starts[-1].session
    mine = [r for r in rows if r.session == session]
    started = [r for r in mine if r.kind == EventKind.SESSION_STARTED]
    if not started:
        raise BenchError(f"the ledger has no session {session!r}")
    runs: list[list] = []  # [experiment, TrainingFinished, Evaluated | None, decided ts | None]
    experiments = 0
    for r in mine:
        if r.kind == EventKind.TRAINING_FINISHED:
            runs.append([r.experiment, P.TrainingFinished.from_json(r.payload), None, None])
        elif r.kind == EventKind.EVALUATED and runs and runs[-1][0] == r.experiment and runs[-1][2] is None:
            ev = P.Evaluated.from_json(r.payload)
            if ev.run == runs[-1][1].run:
                runs[-1][2] = ev
        elif r.kind == EventKind.DECIDED:
            experiments += r.decision in Decision.group("ran")
            if runs and runs[-1][0] == r.experiment and runs[-1][3] is None:
                runs[-1][3] = r.ts
    return SessionRuns(
        session=session, started=started[0].ts, last=mine[-1].ts,
        runs=tuple(from_payloads(tf, ev, decided) for _, tf, ev, decided in runs),
        counted=tuple(tf.counted_seconds for _, tf, _, _ in runs), experiments=experiments,
    )


def between_runs(runs: tuple[RunPhases, ...]) -> list[float | None]:
    """For each run after the first, the seconds from the last moment the run before reached (its
    decision, else its post-checks...) to this one's sandbox start: what the loop did in between."""
    out = []
    for before, run in zip(runs, runs[1:]):
        reached = before.reached()
        out.append(None if not reached or run.sandbox_started is None else run.sandbox_started - reached[-1][1])
    return out


def summarise(sr: SessionRuns) -> dict[str, Any]:
    """Median and spread of each phase over the runs that reached both its ends, and the share of
    the session's wall span its runs' budgets counted as training."""
    wall = sr.last - sr.started
    counted = sum(c for c in sr.counted if c is not None)
    # on the cpu clock a budget's wall time is more than it counts (a single-threaded start-up
    # counts half on 2 CPUs; contention slows it): both are shown
    in_budget = sum(s for s in (seconds(p, BUDGET) for p in sr.runs) if s is not None)
    rows = [(ph.name, ph.what, ph in SPANS, [seconds(p, ph) for p in sr.runs]) for ph in PHASES]
    rows.append(("between runs", "the run before's last moment to this sandbox start (proposal, harm test, commit)",
                 False, between_runs(sr.runs)))
    rows += [(ph.name, ph.what, True, [seconds(p, ph) for p in sr.runs]) for ph in SPANS]
    phases = []
    for name, what, span, found in rows:
        values = [v for v in found if v is not None]
        phases.append({
            "phase": name, "what": what, "span": span, "runs": len(values),
            "median_s": statistics.median(values) if values else None,
            "min_s": min(values) if values else None, "max_s": max(values) if values else None,
        })
    # the share of each run's budget (its wall time) spent past start-up, in the training loop
    in_loop = [t / b for t, b in ((seconds(p, TRAINING), seconds(p, BUDGET)) for p in sr.runs)
               if t is not None and b]
    return {
        "session": sr.session, "runs": len(sr.runs), "experiments": sr.experiments,
        "runs_per_hour": 3600 * len(sr.runs) / wall if wall > 0 else None,
        "experiments_per_hour": 3600 * sr.experiments / wall if wall > 0 else None,
        "loop_share_median": statistics.median(in_loop) if in_loop else None,
        "loop_share_min": min(in_loop) if in_loop else None,
        "runs_without_count": sum(c is None for c in sr.counted),
        "wall_seconds": wall, "counted_training_seconds": counted,
        "counted_share": counted / wall if wall > 0 else None,
        "budget_wall_seconds": in_budget, "budget_wall_share": in_budget / wall if wall > 0 else None,
        "outside_per_experiment_s": (wall - counted) / sr.experiments if sr.experiments else None,
        "outside_per_run_s": (wall - counted) / len(sr.runs) if sr.runs else None,
        "phases": phases,
    }


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a heading line and one Markdown table."""
    share = summary["counted_share"]
    lines = [
        f"Session `{summary['session']}`: {summary['runs']} runs in {summary['experiments']} experiments over "
        f"{summary['wall_seconds']:.1f} s of wall time; counted training {summary['counted_training_seconds']:.1f} s"
        + ("" if share is None else f" = {share:.1%} of it")
        + ("" if summary["budget_wall_share"] is None
           else f" (the budgets lasted {summary['budget_wall_seconds']:.1f} s of wall time = {summary['budget_wall_share']:.1%})")
        + ("" if summary["outside_per_experiment_s"] is None
           else f"; outside counted training {summary['outside_per_experiment_s']:.1f} s per experiment, "
                f"{summary['outside_per_run_s']:.1f} s per run")
        + (f" ({summary['runs_without_count']} runs recorded no count)" if summary["runs_without_count"] else "")
        + ".",
        "",
        f"Per hour: {_rate(summary['runs_per_hour'])} runs, {_rate(summary['experiments_per_hour'])} experiments. "
        + ("" if summary["loop_share_median"] is None else
           f"Of each run's budget, the training loop (after start-up) had {summary['loop_share_median']:.1%} "
           f"(median; least {summary['loop_share_min']:.1%})."),
        "",
        "| phase | from → to | runs | median s | spread [min, max] s |",
        "|---|---|---|---|---|",
    ]
    for ph in summary["phases"]:
        name = f"{ph['phase']} (span)" if ph["span"] else ph["phase"]
        spread = "–" if ph["min_s"] is None else f"[{_s(ph['min_s'])}, {_s(ph['max_s'])}]"
        lines.append(f"| {name} | {ph['what']} | {ph['runs']} | {_s(ph['median_s'])} | {spread} |")
    return "\n".join(lines)


# -- IO ----------------------------------------------------------------------------------------------

_KINDS = (EventKind.SESSION_STARTED, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.DECIDED)


def read_rows(ledger_path: Path) -> list[Row]:
    """The events this bench reads, plus each session's last event (its wall span's end)."""
    con = open_readonly(ledger_path)
    try:
        kinds = ", ".join(f"'{k.value}'" for k in _KINDS)
        found = con.execute(
            "SELECT seq, ts, session, kind, experiment, decision, body FROM events "
            f"WHERE kind IN ({kinds}) OR seq IN (SELECT max(seq) FROM events GROUP BY session) ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    # ts is a naive UTC TIMESTAMP; the payloads' moments are unix seconds
    return [Row(seq, ts.replace(tzinfo=timezone.utc).timestamp() if isinstance(ts, datetime) else float(ts),
                session, kind, experiment, decision, json.loads(body).get("payload") or {})
            for seq, ts, session, kind, experiment, decision, body in found]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", help="the lab (default: $CHARTER_LAB, then ./lab)")
    ap.add_argument("--session", help="session id (default: the last session started)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    try:
        lab = find_lab(args.lab)
        summary = summarise(session_runs(read_rows(lab.ledger_path), args.session))
    except (LabError, LedgerError, BenchError) as e:
        print(f"bench/phases.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1) if args.json else markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
