"""The phases of a run, timed by the controller (issue 15, item 1).

The pure arithmetic on made-up moments; the sandbox's own readings (the marker line, the stop,
the exit) on tiny real scripts, including a run that crashes and one killed after its grace; one
real `Runner` job of a fake trainer and a fake evaluator; and `bench/phases.py` on a ledger
written through the real `Ledger` API with synthetic events and a synthetic clock. Nothing
trains, and no assertion is on how long anything took: only order, presence, non-negative
durations that add up, and exact figures computed from synthetic moments.
"""

import dataclasses
import importlib.util
import json
import sys
import threading
from types import SimpleNamespace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from constitution import default_text, parse_text
from controller.execution import phases
from controller.execution.phases import PHASES, SPANS, RunPhases, durations, from_payloads, seconds
from controller.execution.runner import EVAL_READY_MARKER, TRAIN_STARTUP_MARKER, Job, Runner, run_phases
from controller.execution.sandbox import SandboxResult, _Marker, run
from controller.session.loop import Session
from controller.workspace.lab import Lab
from ledger import Decision, Ledger
from ledger import payloads as P
from lab_helpers import with_constants
from test_sandbox import LEVELS, lab, make_spec  # noqa: F401  (lab is a fixture)

ROOT = Path(__file__).resolve().parents[2]
FULL = RunPhases(sandbox_started=100.0, startup_done=104.0, budget_ended=160.0, saved=161.5, evaluator_started=162.0,
                 evaluator_released=162.0, worker_ready=164.0, scored=173.0, checked=175.0, decided=176.0)


def assert_in_order(p: RunPhases) -> None:
    times = [t for _, t in p.reached()]
    assert times == sorted(times), p.reached()


# -- the pure arithmetic ----------------------------------------------------------------------------

def test_the_phases_of_a_complete_run_are_consecutive_non_negative_and_add_up():
    d = durations(FULL)
    assert list(d) == [ph.name for ph in PHASES]
    assert all(v is not None and v >= 0 for v in d.values()), d
    assert sum(d.values()) == pytest.approx(FULL.decided - FULL.sandbox_started)
    assert d["start-up"] == 4.0 and d["training"] == 56.0 and d["decision"] == 1.0
    # consecutive: each phase starts where the one before ended
    assert all(a.end == b.start for a, b in zip(PHASES, PHASES[1:]))
    # a span is the sum of the phases it covers
    spans = durations(FULL, SPANS)
    assert spans["training sandbox"] == pytest.approx(d["start-up"] + d["training"] + d["saving"])
    assert spans["evaluation"] == pytest.approx(d["worker start"] + d["scoring"])
    assert [name for name, _ in FULL.reached()] == [f.name for f in dataclasses.fields(RunPhases)]


def test_a_phase_the_run_never_reached_is_none_and_nothing_raises():
    # a crash before the start-up marker: it exited (budget end) but never saved, nothing evaluated
    crash = RunPhases(sandbox_started=10.0, budget_ended=12.0, checked=13.0)
    d = durations(crash)
    assert d == {"start-up": None, "training": None, "saving": None, "hand-off": None, "worker start": None,
                 "scoring": None, "post-check": None, "decision": None}
    assert durations(crash, SPANS) == {"training sandbox": None, "evaluation": None, "early start": None, "run": 3.0}
    assert all(v is None for v in durations(RunPhases()).values())
    # today's evaluator prints no worker-ready line: the evaluation span still has its figure
    no_worker = dataclasses.replace(FULL, worker_ready=None)
    assert seconds(no_worker, PHASES[4]) is None and seconds(no_worker, PHASES[5]) is None
    assert seconds(no_worker, SPANS[1]) == 11.0


def test_the_ledger_fields_round_trip_and_old_events_read_as_none(tmp_path):
    assert set(phases.TRAINING) | set(phases.EVALUATION) | {"decided"} == {f.name for f in dataclasses.fields(RunPhases)}
    tf = P.TrainingFinished(run=1, counted_seconds=60.0, **phases.training_fields(FULL))
    ev = P.Evaluated(run=1, status="ok", **phases.evaluation_fields(FULL))
    with Ledger.open(tmp_path / "l.duckdb") as led:   # through a real ledger: the JSON keys are the contract
        led.record(tf, actor="controller", session="s")
        led.record(ev, actor="controller", session="s")
        back = [P.read(e) for e in led.events()]
    assert from_payloads(back[0], back[1], decided=FULL.decided) == FULL
    assert back[0].counted_seconds == 60.0
    # an evaluation-less run keeps its training moments; a body from before these fields reads as None
    assert from_payloads(back[0]) == dataclasses.replace(FULL, evaluator_started=None, evaluator_released=None,
                                                         worker_ready=None, scored=None, decided=None)
    # an evaluation recorded before early starts was released as it started
    old = dataclasses.replace(back[1], evaluator_released_at=None)
    assert from_payloads(back[0], old).evaluator_released == FULL.evaluator_started
    assert from_payloads(P.TrainingFinished.from_json({"run": 1, "wall_seconds": 70.0})) == RunPhases()


def result(**kw) -> SandboxResult:
    base = dict(returncode=0, timed_out=False, memory_killed=False, wall_seconds=70.0, peak_rss_mb=1.0, level="none",
                log_tail="", started_monotonic=1000.0)
    return SandboxResult(**(base | kw))


def test_the_runner_turns_sandbox_readings_into_moments_on_one_clock():
    anchor = 5_000.0   # unix time minus monotonic time
    train = result(marker_seconds=4.0, stopped=True, stop_seconds=60.0, exit_seconds=61.0)
    ev = result(started_monotonic=1062.0, marker_seconds=2.0, exit_seconds=10.0)
    p = run_phases(train, ev, checked=1073.0, anchor=anchor)
    assert p == RunPhases(6000.0, 6004.0, 6060.0, 6061.0, 6062.0, 6062.0, 6064.0, 6072.0, 6073.0)
    # an evaluator started early, at the stop signal, and released once the run was saved
    early = run_phases(train, result(started_monotonic=1060.0, marker_seconds=4.0, exit_seconds=12.0), 1073.0, anchor,
                       released=1061.5)
    assert (early.evaluator_started, early.saved, early.evaluator_released, early.worker_ready) == \
        (6060.0, 6061.0, 6061.5, 6064.0)
    assert durations(early)["hand-off"] == 0.5 and durations(early, SPANS)["early start"] == 1.5
    # exited before the stop: the exit ends the budget
    assert run_phases(result(exit_seconds=30.0), None, None, anchor).budget_ended == 6030.0
    # a crash: exited with an error, never saved, never evaluated
    crash = run_phases(result(returncode=1, exit_seconds=3.0), None, 1004.0, anchor)
    assert (crash.budget_ended, crash.saved, crash.evaluator_started, crash.checked) == (6003.0, None, None, 6004.0)
    # killed after its grace: the stop ended the budget, it never exited or saved
    killed = run_phases(result(returncode=None, timed_out=True, stopped=True, stop_seconds=60.0), None, 1070.0, anchor)
    assert (killed.budget_ended, killed.saved) == (6060.0, None)
    # a start-up marker printed after the stop is not a start-up done within the budget
    late = run_phases(result(marker_seconds=62.0, stopped=True, stop_seconds=60.0, exit_seconds=63.0), None, None, anchor)
    assert late.startup_done is None and late.budget_ended == 6060.0
    # a sandbox that never started, or no readings at all: every moment None
    assert run_phases(result(started_monotonic=None, exit_seconds=1.0), None, None, anchor).saved is None
    for p in (run_phases(train, ev, 1073.0, anchor), crash, killed, late):
        assert_in_order(p)


def test_the_marker_is_the_first_line_starting_with_it_across_chunks():
    m = _Marker(b"profile: ")
    m.feed(b"flash attention 3 unavailable; using SDPA\nnot a profile: line\npro", 1.0)
    assert m.seconds is None                      # "profile: " inside a line is not the marker
    m.feed(b"file: cpu, device: cpu\n", 2.0)      # completed by the next chunk
    assert m.seconds == 2.0
    m.feed(b"profile: again\n", 3.0)
    assert m.seconds == 2.0                       # the first one counts
    none = _Marker(None)
    none.feed(b"profile: x\n", 1.0)
    assert none.seconds is None


# -- the sandbox's readings on real processes -------------------------------------------------------

# Prints some output, then the marker in two writes, then waits for the stop signal and exits 0.
WAITS_FOR_STOP = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("loading", flush=True)
sys.stdout.write("READ"); sys.stdout.flush(); time.sleep(0.05)
print("Y: start-up done", flush=True)
while not stop:
    time.sleep(0.01)
"""


@pytest.mark.parametrize("level", LEVELS)
def test_the_sandbox_times_the_marker_the_stop_and_the_exit(lab, level):
    r = run(make_spec(lab, WAITS_FOR_STOP, marker=b"READY: ", stop_after_s=3.0, stop_grace_s=5.0), level)
    assert r.returncode == 0 and r.stopped and r.started_monotonic is not None, r.log_tail
    assert 0 < r.marker_seconds <= r.stop_seconds <= r.exit_seconds <= r.wall_seconds
    assert r.counted_seconds == r.stop_seconds    # on the wall clock the budget counts wall seconds
    p = run_phases(r, None, None, 0.0)
    assert None not in (p.sandbox_started, p.startup_done, p.budget_ended, p.saved)
    assert_in_order(p)


@pytest.mark.parametrize("level", LEVELS)
def test_a_crash_and_a_kill_leave_what_they_never_reached_as_none(lab, level):
    crash = run(make_spec(lab, "print('starting', flush=True); raise SystemExit(1)", marker=b"READY: ",
                          stop_after_s=5.0, stop_grace_s=5.0), level)
    assert crash.returncode == 1 and not crash.stopped
    assert crash.marker_seconds is None and crash.stop_seconds is None
    assert crash.counted_seconds == crash.exit_seconds    # ended inside its budget: all of it counted
    p = run_phases(crash, None, None, 0.0)
    assert p.startup_done is None and p.saved is None and p.budget_ended is not None
    # ignores the stop signal: killed after the grace, never exited by itself, never saved
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    killed = run(make_spec(lab, stubborn, marker=b"READY: ", stop_after_s=3.0, stop_grace_s=0.3), level)
    assert killed.timed_out and killed.stopped and killed.exit_seconds is None
    k = run_phases(killed, None, None, 0.0)
    assert k.budget_ended is not None and k.saved is None and k.startup_done is None
    # no stop in the spec (the evaluator's): nothing counted
    plain = run(make_spec(lab, "print('READY: now', flush=True)", marker=b"READY: "), level)
    assert plain.counted_seconds is None and plain.stop_seconds is None and plain.marker_seconds is not None


# -- one real Runner job of a fake trainer and a fake evaluator ---------------------------------------

FAKE_TRAIN = f"""
import json, os, signal, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("{TRAIN_STARTUP_MARKER.decode()}fake, device: cpu", flush=True)
if os.path.exists("CRASH"):  # the lab (its cwd) says so
    raise SystemExit(1)
while not stop:
    time.sleep(0.01)
with open(os.path.join(os.environ["RUN_DIR"], "stats.json"), "w") as f:
    json.dump({{"steps": 1}}, f)
"""
FAKE_PREPARE = f"""
import json, sys
if sys.argv[1] == "verify":
    print(json.dumps({{"profile": "cpu"}}))
elif sys.argv[1] == "evaluate":
    print("{EVAL_READY_MARKER.decode()}", flush=True)
    with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
        json.dump({{"status": "ok", "val_bpb": 1.5}}, f)
"""


@pytest.fixture
def fake_lab(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    (root / "train.py").write_text(FAKE_TRAIN)
    (root / "prepare.py").write_text(FAKE_PREPARE)
    (root / "program.md").write_text("brief\n")
    data = {"train_dir": str(tmp_path / "d" / "train"), "tokenizer_dir": str(tmp_path / "tok"),
            "val_dir": str(tmp_path / "d" / "val")}
    rules = parse_text(with_constants(default_text(), clock='"wall"', training_seconds="1"))
    return root, data, Runner(root / ".charter", rules, "none")


def test_a_runner_job_records_every_phase_in_order(fake_lab):
    root, data, runner = fake_lab
    out = runner.run(Job(1, 1, "c0ffee", root, root / ".charter" / "runs" / "r1"), data)
    assert out.status == "ok" and out.val_bpb == 1.5, (out.reason, out.train.log_tail)
    p = out.phases
    assert [name for name, _ in p.reached()] == [f.name for f in dataclasses.fields(RunPhases)][:-1]  # all but decided
    assert_in_order(p)
    d = durations(p)
    assert all(v >= 0 for k, v in d.items() if k != "decision") and d["decision"] is None
    assert sum(v for k, v in d.items() if k != "decision") == pytest.approx(p.checked - p.sandbox_started)
    assert out.train.counted_seconds == out.train.stop_seconds   # stopped by the wall clock at its budget


def test_a_runner_job_that_crashes_leaves_the_phases_after_it_none(fake_lab):
    root, data, runner = fake_lab
    (root / "CRASH").write_text("")
    out = runner.run(Job(1, 1, "c0ffee", root, root / ".charter" / "runs" / "r1"), data)
    assert out.status == "crash" and out.evaluation is None, out.reason
    p = out.phases
    assert p.startup_done is not None and p.budget_ended is not None and p.checked is not None
    assert (p.saved, p.evaluator_started, p.worker_ready, p.scored) == (None, None, None, None)
    assert_in_order(p)


# A trainer that takes a while to save after the stop signal (or crashes then), and an evaluator
# that can start early: it notes what of the run it could see at its start and at the word.
SLOW_SAVE_TRAIN = FAKE_TRAIN.replace("with open(", """time.sleep(0.5)  # saving
if os.path.exists("CRASH_AFTER_STOP"):
    raise SystemExit(1)
with open(""", 1)
EARLY_PREPARE = f"""
import json, os, sys, time
if sys.argv[1] == "verify":
    print(json.dumps({{"profile": "cpu"}}))
elif sys.argv[1:] == ["evaluate", "--help"]:
    print("usage: prepare.py evaluate run_dir [--out OUT] [--go FILE]")
elif sys.argv[1] == "evaluate":
    run_dir, out, go = sys.argv[2], sys.argv[sys.argv.index("--out") + 1], sys.argv[sys.argv.index("--go") + 1]
    with open(os.path.join(os.path.dirname(out), "pid"), "w") as f:
        f.write(str(os.getpid()))
    saved_at_start = os.path.exists(os.path.join(run_dir, "stats.json"))
    while not os.path.exists(go):
        time.sleep(0.01)
    if open(go).read() != "go":
        sys.exit(4)
    print("{EVAL_READY_MARKER.decode()}", flush=True)
    with open(out, "w") as f:
        json.dump({{"status": "ok", "val_bpb": 1.5, "saved_at_start": saved_at_start,
                   "saved_at_go": os.path.exists(os.path.join(run_dir, "stats.json"))}}, f)
"""


def test_an_evaluator_started_before_the_stop_reads_the_run_only_once_it_is_saved(fake_lab):
    root, data, runner = fake_lab
    (root / "train.py").write_text(SLOW_SAVE_TRAIN)
    (root / "prepare.py").write_text(EARLY_PREPARE)
    published, go = [], root / ".charter" / "runs" / "r1.eval" / "go"

    def on_start(pid):  # what the session sees, and whether the evaluator had its word by then
        published.append(pid)
        words.append(go.read_text() if go.exists() else None)
    words = []
    out = runner.run(Job(1, 1, "c0ffee", root, root / ".charter" / "runs" / "r1"), data, on_start=on_start)
    assert out.status == "ok" and out.val_bpb == 1.5, (out.reason, out.train.log_tail, out.evaluation)
    assert words == [None, "go"]   # the evaluator's pid reached the session only once it was released
    assert out.eval_result["saved_at_start"] is False and out.eval_result["saved_at_go"] is True
    p = out.phases
    # started its lead before the stop (this budget is shorter than the lead: at once), released after the save
    assert p.sandbox_started <= p.evaluator_started < p.budget_ended < p.saved <= p.evaluator_released < p.worker_ready <= p.scored
    assert durations(p, SPANS)["early start"] > 0
    # the session saw the training's pid, and the evaluator's only at its release
    evaluator = int((root / ".charter" / "runs" / "r1.eval" / "pid").read_text())
    assert len(published) == 2 and published[1] == evaluator


def test_an_early_evaluator_is_called_off_when_the_run_does_not_save(fake_lab):
    root, data, runner = fake_lab
    (root / "train.py").write_text(SLOW_SAVE_TRAIN)
    (root / "prepare.py").write_text(EARLY_PREPARE)
    (root / "CRASH_AFTER_STOP").write_text("")
    published = []
    out = runner.run(Job(1, 1, "c0ffee", root, root / ".charter" / "runs" / "r1"), data, on_start=published.append)
    assert out.status == "timeout" and "did not save" in out.reason and out.evaluation is None, out.reason
    eval_dir = root / ".charter" / "runs" / "r1.eval"
    assert (eval_dir / "go").read_text() == "cancel"
    evaluator = int((eval_dir / "pid").read_text())     # it had started, and is gone without a result
    assert not Path(f"/proc/{evaluator}").exists() and not (eval_dir / "evaluation.json").exists()
    assert len(published) == 1                            # only the training's pid ever reached the session
    assert out.phases.evaluator_started is None


# -- bench/phases.py on a synthetic ledger ---------------------------------------------------------

def load_bench():
    spec = importlib.util.spec_from_file_location("bench_phases", ROOT / "bench" / "phases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_phases"] = module
    spec.loader.exec_module(module)
    return module


T0 = 1_700_000_000.0


def write_session(tmp_path, monkeypatch) -> Path:
    """A lab dir whose ledger holds an old session (no phase fields) and a later one: a baseline of
    two runs (the second's clock counted 55 s in 60 s of wall time), a crash, a keep whose evaluator
    printed its worker-ready line. Event times come from a synthetic clock; the moments are offsets
    from T0 (seconds)."""
    root = tmp_path / "lab"
    (root / ".charter").mkdir(parents=True)
    (root / "constitution.toml").write_text("")
    clock = [T0]
    monkeypatch.setattr("ledger.store.utc_now", lambda: datetime.fromtimestamp(clock[0], timezone.utc))

    def at(t):
        clock[0] = T0 + t

    def run(led, sid, n, counted, tr, ev=None, index=1):
        at(tr["checked"])
        led.record(P.TrainingFinished(run=index, counted_seconds=counted,
                                      **{f"{k}_at": T0 + v for k, v in tr.items()}),
                   actor="controller", session=sid, experiment=n)
        if ev:
            led.record(P.Evaluated(run=index, status="ok", **{f"{k}_at": T0 + v for k, v in ev.items()}),
                       actor="controller", session=sid, experiment=n)

    def decide(led, sid, n, t, decision):
        at(t)
        led.record(P.Decided(decision=decision.value), actor="controller", session=sid, experiment=n,
                   decision=decision)

    with Ledger.open(root / ".charter" / "ledger.duckdb") as led:
        at(-1000)
        led.record(P.SessionStarted(tag="old"), actor="controller", session="s0")
        at(-900)
        led.record(P.TrainingFinished(run=1, wall_seconds=70.0), actor="controller", session="s0", experiment=0)
        decide(led, "s0", 0, -899, Decision.BASELINE)
        at(0)
        led.record(P.SessionStarted(tag="new"), actor="controller", session="s1")
        run(led, "s1", 0, 60.0, dict(sandbox_started=1, startup_done=5, budget_ended=61, saved=62, checked=76),
            dict(evaluator_started=62.5, scored=74.5))
        run(led, "s1", 0, 55.0, dict(sandbox_started=77, startup_done=80, budget_ended=137, saved=139, checked=152),
            dict(evaluator_started=139.25, scored=150.25), index=2)
        decide(led, "s1", 0, 153, Decision.BASELINE)
        run(led, "s1", 1, 10.0, dict(sandbox_started=160, budget_ended=170, checked=172))   # crashed before start-up
        decide(led, "s1", 1, 173, Decision.CRASH)
        run(led, "s1", 2, 60.0, dict(sandbox_started=180, startup_done=184, budget_ended=240, saved=241, checked=251),
            dict(evaluator_started=241.5, worker_ready=243.5, scored=250))
        decide(led, "s1", 2, 253, Decision.KEEP)
        at(260)
        led.record(P.SessionEnded(reason="done"), actor="controller", session="s1")
    return root


def test_bench_phases_summarises_the_last_session(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    lab_dir = write_session(tmp_path, monkeypatch)
    assert bench.main(["--lab", str(lab_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["session"], s["runs"], s["experiments"], s["runs_without_count"]) == ("s1", 4, 3, 0)
    assert s["wall_seconds"] == 260.0 and s["counted_training_seconds"] == 185.0
    assert s["counted_share"] == pytest.approx(185 / 260)
    assert s["budget_wall_seconds"] == 190.0 and s["budget_wall_share"] == pytest.approx(190 / 260)
    assert s["outside_per_experiment_s"] == pytest.approx(75 / 3) and s["outside_per_run_s"] == pytest.approx(75 / 4)
    assert s["runs_per_hour"] == pytest.approx(3600 * 4 / 260) and s["experiments_per_hour"] == pytest.approx(3600 * 3 / 260)
    # start-up marker to budget end over sandbox start to budget end; the crash never printed its marker
    assert s["loop_share_median"] == pytest.approx(56 / 60) and s["loop_share_min"] == pytest.approx(56 / 60)
    by = {ph["phase"]: ph for ph in s["phases"]}
    assert list(by) == [ph.name for ph in PHASES] + ["between runs"] + [ph.name for ph in SPANS]
    assert (by["start-up"]["runs"], by["start-up"]["median_s"], by["start-up"]["min_s"], by["start-up"]["max_s"]) == (3, 4, 3, 4)
    assert (by["training"]["median_s"], by["saving"]["median_s"], by["saving"]["max_s"]) == (56, 1, 2)
    assert by["worker start"]["runs"] == 1 and by["worker start"]["median_s"] == 2.0   # only the keep's evaluator said
    assert by["post-check"]["runs"] == 3                                               # the crash was never scored
    # the decision: each experiment's last run only (the baseline's second run, the crash, the keep)
    assert (by["decision"]["runs"], by["decision"]["median_s"], by["decision"]["max_s"]) == (3, 1, 2)
    assert by["evaluation"]["runs"] == 3 and by["evaluation"]["median_s"] == 11.0
    assert by["run"]["runs"] == 4 and by["run"]["min_s"] == 12 and by["run"]["max_s"] == 75
    # from the run before's last moment (the baseline's first run: its post-checks; then decisions)
    assert (by["between runs"]["runs"], by["between runs"]["median_s"], by["between runs"]["min_s"]) == (3, 7, 1)

    assert bench.main(["--lab", str(lab_dir)]) == 0
    table = capsys.readouterr().out
    assert ("Session `s1`: 4 runs in 3 experiments over 260.0 s of wall time; counted training 185.0 s = 71.2% of it "
            "(the budgets lasted 190.0 s of wall time = 73.1%); outside counted training 25.0 s per experiment, "
            "18.8 s per run.") in table
    assert "Per hour: 55.4 runs, 41.5 experiments. Of each run's budget, the training loop (after start-up) had 93.3% (median; least 93.3%)." in table
    assert "| start-up | sandbox start to the trainer's start-up marker | 3 | 4.00 | [3.00, 4.00] |" in table
    assert "| scoring | worker ready to the evaluator's exit | 1 | 6.50 | [6.50, 6.50] |" in table
    assert "| evaluation (span) |" in table


def test_bench_phases_reads_an_older_session_and_refuses_an_unknown_one(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    lab_dir = write_session(tmp_path, monkeypatch)
    assert bench.main(["--lab", str(lab_dir), "--session", "s0", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["runs"], s["experiments"], s["runs_without_count"], s["counted_training_seconds"]) == (1, 1, 1, 0)
    assert all(ph["runs"] == 0 and ph["median_s"] is None for ph in s["phases"])   # nothing recorded: nothing made up
    assert bench.main(["--lab", str(lab_dir), "--session", "nope"]) == 1
    assert capsys.readouterr().err.strip() == "bench/phases.py: the ledger has no session 'nope'"


def test_the_session_records_a_runner_jobs_phases_and_the_bench_reads_them_back(fake_lab, monkeypatch, capsys):
    """`Session.run_job` itself, on a stand-in for the session's state (a real Session needs a
    prepared lab), recording into a real ledger; then a decision, and bench/phases.py reads it."""
    root, data, runner = fake_lab
    led = Ledger.open(root / ".charter" / "ledger.duckdb")
    try:
        def record(payload, actor="controller", **typed):
            return led.record(payload, actor=actor, session="s1", **typed)
        me = SimpleNamespace(lab=Lab(root), state=SimpleNamespace(id="s1"), rules=runner.rules, level="none", data=data,
                             stop_requested=threading.Event(), stops=0, inflight=None, record=record, pool=None,
                             flights={}, recorder=SimpleNamespace(publish=lambda: None))
        for name in ("start_job", "finish_job", "set_flight", "set_inflight"):  # the session's own steps, on me
            setattr(me, name, getattr(Session, name).__get__(me))
        record(P.SessionStarted(tag="t"))
        out = Session.run_job(me, 0, "c0ffee", 1, "baseline")
        record(P.Decided(decision="baseline"), experiment=0, decision=Decision.BASELINE, val_bpb=out.val_bpb)
        events = {e.kind: P.read(e) for e in led.events()}
    finally:
        led.close()
    tf, ev = events["training_finished"], events["evaluated"]
    assert from_payloads(tf, ev) == dataclasses.replace(out.phases, **{   # as recorded: to the millisecond
        f.name: round(getattr(out.phases, f.name), 3) for f in dataclasses.fields(RunPhases) if f.name != "decided"})
    assert tf.counted_seconds == round(out.train.counted_seconds, 3)
    (root / "constitution.toml").write_text("")
    assert load_bench().main(["--lab", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["runs"], s["experiments"], s["counted_training_seconds"]) == (1, 1, tf.counted_seconds)
    by = {ph["phase"]: ph for ph in s["phases"]}
    assert all(by[ph.name]["runs"] == 1 and by[ph.name]["min_s"] >= 0 for ph in PHASES + SPANS), by
    assert by["between runs"]["runs"] == 0   # one run: nothing before it
