"""Benchmark: the auditor's canned queries on a 1M-event ledger.

    .venv/bin/python bench/audit_queries.py [--events 1000000] [--path /tmp/charter-audit-bench.duckdb] [--rebuild]

Builds (once; reused while --events matches) a ledger of realistic sessions written with
`Ledger.append_many` in batches: each session starts, loads the full constitution, runs a
baseline and ~40 experiments (about 75% measured keep/discard, 10% crash, 12% refused by the
harm test, a few gate transitions and agent calls) and ends. Then it opens it the way
`charter ledger query` does (`ledger.query.open_readonly`) and times, median of 5 after one
warm-up, every query behind `charter ledger report` (`ledger.report.CANNED_QUERIES`, for the
latest session) and behind a status view (latest session row, its budgets, last transition),
plus whole-ledger aggregates and a full `write_report`. Target: <= 100 ms per canned query.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tomllib  # noqa: E402

from ledger import Draft, EventKind, Ledger  # noqa: E402
from ledger.query import open_readonly, run_readonly_query  # noqa: E402
from ledger.report import CANNED_QUERIES, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
C = "controller"


def session_drafts(rng: random.Random, n_session: int, rules: dict, experiments: int = 40) -> list[Draft]:
    sid = f"s{20250101000000 + n_session:014d}-{n_session % 65536:04x}"
    commit = f"{n_session:040x}"
    out = [
        Draft(EventKind.SESSION_STARTED, C, sid, {"tag": f"t{n_session}", "branch": f"charter/t{n_session}", "base_commit": commit,
              "isolation": "bubblewrap", "proposer": "offline", "max_experiments": None, "pid": 100 + n_session,
              "constitution_hash": "h" * 64, "constitution_version": 1}, commit_sha=commit, gate_state="RUN"),
        Draft(EventKind.CONSTITUTION_LOADED, C, sid, {"hash": "h" * 64, "version": 1, "rules": rules}),
    ]
    best = 1.5 + rng.random() * 0.1
    parent = commit
    for n in range(experiments + 1):
        desc = "baseline" if n == 0 else f"change {rng.choice(['LR', 'DEPTH', 'WIDTH', 'WARMUP', 'ACT'])} to {rng.random():.3f}"
        out.append(Draft(EventKind.PROPOSED, C, sid, {"description": desc, "hypothesis": "it should help " * 5, "source": "offline",
                         "proposer": "offline", "parent_commit": parent, "params": {"LR": rng.random()}}, experiment=n, commit_sha=parent))
        roll = rng.random()
        if n > 0 and roll < 0.12:
            out.append(Draft(EventKind.HARM_REFUSED, C, sid, {"refusals": [{"rule": "network", "path": "train.py", "line": rng.randint(1, 300),
                             "evidence": "import socket", "hard": False}], "diff": "+import socket\n"}, experiment=n, rule="network"))
            out.append(Draft(EventKind.DECIDED, C, sid, {"decision": "refused", "reason": "harm test: network", "description": desc},
                             experiment=n, decision="refused", commit_sha=parent, gate_state="RUN"))
            continue
        cand = f"{rng.getrandbits(160):040x}" if n else parent
        if n:
            out.append(Draft(EventKind.HARM_PASSED, C, sid, {"files": ["train.py"], "diff_lines": 12}, experiment=n))
            diff = "--- a/train.py\n+++ b/train.py\n@@ -10,6 +10,6 @@\n" + "".join(f"-X{i} = {i}\n+X{i} = {i + 1}\n" for i in range(6))
            out.append(Draft(EventKind.COMMITTED, C, sid, {"parent": parent, "diff": diff}, experiment=n, commit_sha=cand))
        out.append(Draft(EventKind.TRAINING_STARTED, C, sid, {"run_dir": f"/lab/runs/{sid}/{n:04d}-1", "run": 1, "deadline_seconds": 150,
                         "isolation": "bubblewrap"}, experiment=n, commit_sha=cand))
        crashed = n > 0 and roll < 0.22
        out.append(Draft(EventKind.TRAINING_FINISHED, C, sid, {"run": 1, "returncode": 1 if crashed else 0, "timed_out": False,
                         "memory_killed": False, "wall_seconds": 60 + rng.random() * 20, "peak_rss_mb": 900 + rng.random() * 400,
                         "isolation": "bubblewrap", "log_tail_untrusted": "step 500 loss 3.1 lr 0.02\n" * 12, "stats": {"steps": 500}},
                         experiment=n, commit_sha=cand))
        if crashed:
            out.append(Draft(EventKind.DECIDED, C, sid, {"decision": "crash", "reason": "training exited with code 1", "description": desc},
                             experiment=n, decision="crash", commit_sha=cand, gate_state="RUN"))
            continue
        bpb = best + rng.gauss(0.01, 0.02) if n else best
        out.append(Draft(EventKind.EVALUATED, C, sid, {"run": 1, "status": "ok", "reason": "", "wall_seconds": 10 + rng.random(),
                         "result": {"val_bpb": bpb}, "returncode": 0}, experiment=n, commit_sha=cand, val_bpb=bpb))
        if n == 0:
            decision = "baseline"
        elif bpb < best - 0.01:
            decision, best, parent = "keep", bpb, cand
        else:
            decision = "discard"
        out.append(Draft(EventKind.DECIDED, C, sid, {"decision": decision, "reason": f"{decision} at {bpb:.4f}", "description": desc,
                         "improvement": None if n == 0 else best - bpb, "runs": [bpb], "repair": False}, experiment=n,
                         decision=decision, val_bpb=bpb, commit_sha=cand, gate_state="RUN"))
        if rng.random() < 0.02:
            out.append(Draft(EventKind.GATE_TRANSITION, C, sid, {"from": "RUN", "to": "THROTTLE", "rule": "crash-streak",
                             "evidence": "crash_streak = 3 (threshold 3)", "by": C, "held": False}, gate_state="THROTTLE", rule="crash-streak"))
    out.append(Draft(EventKind.SESSION_ENDED, C, sid, {"reason": "budget", "experiments": experiments, "keeps": 0, "baseline_bpb": 1.5,
                     "best_bpb": best, "best_commit": parent, "gate": "RUN", "branch": f"charter/t{n_session}"}, gate_state="RUN"))
    return out


def build(path: Path, total: int) -> None:
    with open(REPO / "constitution" / "default.toml", "rb") as f:
        rules = tomllib.load(f)
    rng = random.Random(0)
    t0 = time.perf_counter()
    written, n_session, batch = 0, 0, []
    with Ledger.open(path) as led:
        while written < total:
            drafts = session_drafts(rng, n_session, rules)
            n_session += 1
            drafts = drafts[: total - written]
            batch += drafts
            written += len(drafts)
            if len(batch) >= 20_000 or written >= total:
                led.append_many(batch)
                batch = []
    print(f"built {written:,} events in {n_session:,} sessions in {time.perf_counter() - t0:.1f} s "
          f"({path.stat().st_size / 1e6:.0f} MB)")


def timeit(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--path", type=Path, default=Path(tempfile.gettempdir()) / "charter-audit-bench.duckdb")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    path = args.path
    if path.exists() and not args.rebuild:
        with Ledger.open(path, read_only=True) as led:
            head = led.head()
        if not head or head[0] != args.events:
            args.rebuild = True
    if args.rebuild or not path.exists():
        path.unlink(missing_ok=True)
        build(path, args.events)

    t = time.perf_counter()
    con = open_readonly(path)
    print(f"open_readonly + install_views: {(time.perf_counter() - t) * 1000:.1f} ms")
    (latest,) = con.execute(CANNED_QUERIES["latest_session"]).fetchall()[0]
    (middle,) = con.execute("SELECT session FROM events WHERE kind = 'session_started' "
                            "ORDER BY seq LIMIT 1 OFFSET (SELECT count(*) / 2 FROM events WHERE kind = 'session_started')").fetchall()[0]

    def run(sql: str, params=None):
        return con.execute(sql, params).fetchall() if params else con.execute(sql).fetchall()

    results: list[tuple[str, float]] = []
    for name, sql in CANNED_QUERIES.items():
        params = {"session": latest} if "$session" in sql else None
        results.append((f"report: {name} (latest session)", timeit(lambda: run(sql, params))))
    for name in ("experiments", "budgets"):
        sql = CANNED_QUERIES[name]
        results.append((f"report: {name} (a middle session)", timeit(lambda: run(sql, {"session": middle}))))
    status = {
        "status: latest session row": f"SELECT * FROM sessions WHERE session = '{latest}'",
        "status: latest session budgets": f"SELECT * FROM budgets WHERE session = '{latest}'",
        "status: last gate transition": "SELECT * FROM gate_transitions ORDER BY seq DESC LIMIT 1",
    }
    for name, sql in status.items():
        results.append((name, timeit(lambda: run(sql))))
    whole = {
        "all: last 10 decisions": "SELECT experiment, decision, val_bpb FROM experiments ORDER BY seq DESC LIMIT 10",
        "all: latest session row by sort": "SELECT * FROM sessions ORDER BY started DESC LIMIT 1",
        "all: decisions per kind": "SELECT decision, count(*) FROM experiments GROUP BY decision",
        "all: sessions": "SELECT count(*), avg(best_bpb) FROM sessions",
        "all: refusals by rule": "SELECT rule, count(*) FROM refusals GROUP BY rule",
        "all: budgets": "SELECT resource, max(used / \"limit\") FROM budgets GROUP BY resource",
        "all: gate transitions": "SELECT to_state, count(*) FROM gate_transitions GROUP BY to_state",
        "all: constitutions": "SELECT count(DISTINCT hash) FROM constitutions",
    }
    for name, sql in whole.items():
        results.append((name, timeit(lambda: run(sql), repeat=3)))
    results.append(("run_readonly_query (checks + 1 canned query)",
                    timeit(lambda: run_readonly_query(con, f"SELECT * FROM experiments WHERE session = '{latest}'"))))
    out = Path(tempfile.mkdtemp(prefix="charter-report-"))
    results.append(("write_report (latest session, md + png)", timeit(lambda: write_report(con, out), repeat=3)))
    width = max(len(n) for n, _ in results)
    for name, ms in results:
        flag = "" if ms <= 100 or name.startswith(("all:", "write_report")) else "  (over 100 ms)"
        print(f"{name:<{width}}  {ms:8.1f} ms{flag}")
    con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
