"""The cpu clock: a training budget counted in CPU seconds of the sandboxed tree per CPU it may use.

Real sandboxes run small CPU burners; every assertion is on CPU seconds received (the controller's
count, checked against the run's own `time.process_time()`), never on wall time. Budgets are a
second or two, so the whole file burns well under a minute of one core.
"""

import os
import subprocess
import sys
import time

import pytest

from constitution import default_text, parse_text
from controller.execution import runner as runner_mod
from controller.execution import sandbox
from controller.execution.runner import CPU_WALL_FACTOR, Job, Runner, over_budget, training_kill_seconds, training_wall_cap
from controller.execution.sandbox import SandboxResult, run
from lab_helpers import with_constants
from test_sandbox import LEVELS, lab, make_spec, needs_bwrap  # noqa: F401  (lab is a fixture)

# Burns one thread until SIGTERM, then reports its own CPU time and exits cleanly. It also shows
# what it was told and the CPUs it may run on.
BURNER = """
import os, signal, sys, time
def stop(*_):
    print(f"own cpu {time.process_time():.3f}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("cpus", sorted(os.sched_getaffinity(0)), "budget", os.environ.get("CPU_BUDGET"),
      "threads", os.environ.get("CPU_THREADS"), flush=True)
while True:
    pass
"""


def cpu_spec(lab, code=BURNER, *args, budget=1.5, **kw):
    defaults = dict(stop_after_s=60.0, stop_after_cpu_s=budget, cpu_threads=1, cpu_env="CPU_BUDGET",
                    threads_env="CPU_THREADS", stop_grace_s=5.0, timeout_s=90)
    return make_spec(lab, code, *args, **(defaults | kw))


def own_cpu(result: SandboxResult) -> float:
    """What the run measured of itself when the stop came (its process only, not bwrap's)."""
    line = [ln for ln in result.log_tail.splitlines() if ln.startswith("own cpu ")]
    assert line, result.log_tail
    return float(line[-1].split()[-1])


def assert_stopped_on_cpu(result: SandboxResult, budget: float) -> None:
    assert result.clock == "cpu" and result.stopped and result.stopped_by == "cpu", result
    assert result.returncode == 0 and not result.timed_out, result.log_tail
    # the controller's count, and the run's own: both about the budget, whatever the wall time was
    assert budget <= result.cpu_seconds <= budget + 0.5, result.cpu_seconds
    assert budget - 0.3 <= own_cpu(result) <= budget + 0.3, result.log_tail


@pytest.mark.parametrize("level", LEVELS)
def test_a_run_is_stopped_after_its_cpu_seconds(lab, level):
    result = run(cpu_spec(lab, budget=1.5), level)
    assert_stopped_on_cpu(result, 1.5)
    assert result.limits == sandbox.limits_mechanism() and result.cpu_threads == 1
    # told its CPU budget with the lead over the signal, and how many CPUs it has
    assert f"budget {1.5 + sandbox.STOP_LEAD_S:.3f} threads 1" in result.log_tail


@pytest.mark.parametrize("lead", [0.0, 1.0])
def test_on_stop_comes_its_lead_before_the_stop_or_with_it(lab, lead):
    """The early evaluator's cue: called once, `lead` counted seconds before the stop is due."""
    calls = []

    def on_stop():  # what the run's own CPU count and the sandbox's word were when it came
        calls.append(time.monotonic())

    result = run(cpu_spec(lab, budget=2.0), "none", on_stop=on_stop, stop_lead_s=lead)
    assert_stopped_on_cpu(result, 2.0)
    assert len(calls) == 1
    at = calls[0] - result.started_monotonic
    if lead:
        assert at < result.stop_seconds  # before the signal, on the run's CPU count
    else:
        assert at >= result.stop_seconds  # right after the signal


@pytest.mark.parametrize("level", LEVELS)
def test_the_poll_fallback_also_stops_on_cpu(lab, level, monkeypatch):
    monkeypatch.setattr(sandbox, "CGROUPS", False)
    result = run(cpu_spec(lab, budget=1.5), level)
    assert result.limits == "poll"
    assert_stopped_on_cpu(result, 1.5)


# Does all its work in short-lived children, started one after another, each burning CHILD_CPU
# seconds of CPU (much less than a poll) and reporting its own process_time; on SIGTERM it stops
# starting them and reports their total, how many there were, and its own CPU.
CHILD_CPU = 0.07
FORKER = """
import os, signal, subprocess, sys, time
METHOD, BURN = sys.argv[1], float(sys.argv[2])
CHILD = f"import time\\nwhile time.process_time() < {BURN}: pass\\nprint(time.process_time())"
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
def by_fork():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(r)
        while time.process_time() < BURN:
            pass
        os.write(w, f"{time.process_time()}".encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read()
    os.waitpid(pid, 0)
    return float(report) if report else 0.0
def by_subprocess():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True).stdout
    return float(out) if out.strip() else 0.0
children, total = 0, 0.0
while not stopping:
    total += by_fork() if METHOD == "fork" else by_subprocess()
    children += 1
print(f"children {children} cpu {total:.3f}", flush=True)
print(f"own cpu {time.process_time():.3f}", flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "subprocess"])
@pytest.mark.parametrize("level", LEVELS)
def test_the_poll_counts_the_cpu_of_short_lived_children(lab, level, method, monkeypatch):
    """Each child lives less than a poll, so only its parent's cutime/cstime shows what it used:
    the run is still stopped at about its budget, not at the wall cap with several times it."""
    monkeypatch.setattr(sandbox, "CGROUPS", False)
    budget = 1.5
    result = run(cpu_spec(lab, FORKER, method, str(CHILD_CPU), budget=budget, stop_after_s=30.0), level)
    assert result.limits == "poll"
    assert result.stopped_by == "cpu" and result.returncode == 0, result
    line = [ln for ln in result.log_tail.splitlines() if ln.startswith("children ")]
    assert line, result.log_tail
    children, in_children = int(line[-1].split()[1]), float(line[-1].split()[-1])
    received = in_children + own_cpu(result)        # what the run itself measured it was given
    # the work really was in many short-lived children ...
    assert children >= 10 and in_children >= 0.6 * budget, result.log_tail
    # ... and it got about its budget: the controller's count, and the run's own
    assert budget <= result.cpu_seconds <= budget + 0.5, result.cpu_seconds
    assert budget - 0.3 <= received <= budget + 0.4, result.log_tail
    assert received <= result.cpu_seconds + 0.05, (received, result.cpu_seconds)


@pytest.mark.skipif(sandbox.limits_mechanism() == "poll", reason="needs a cgroup")
@pytest.mark.parametrize("level", LEVELS)
def test_a_failed_cgroup_read_does_not_freeze_the_cpu_clock(lab, level, monkeypatch):
    """The cgroup's counter can't be read once the run has used 0.3 s: the poll carries the count on
    from there, so the stop still comes from the cpu clock at about the budget."""
    real, failed = sandbox._Cgroup.cpu_seconds, []

    def failing(self):
        seconds = real(self)
        if seconds is None or seconds >= 0.3:
            failed.append(seconds)
            return None
        return seconds

    monkeypatch.setattr(sandbox._Cgroup, "cpu_seconds", failing)
    probe = sandbox._make_cgroup(16, 16, "charter-probe")
    if probe is None or not probe.has_cpu:
        pytest.skip("no cpuacct counter here")
    probe.remove()
    result = run(cpu_spec(lab, budget=1.5, stop_after_s=30.0), level)
    assert result.limits != "poll" and failed       # it had a cgroup, and its reads did fail
    assert_stopped_on_cpu(result, 1.5)


@pytest.fixture
def load_on_first_cpu():
    """Two processes outside the sandbox burning the CPU a cpu_threads=1 run gets (the first one
    we may use), each in its own session (its own autogroup, like unrelated work)."""
    cpu = sandbox.run_cpus(1)[0]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                             preexec_fn=lambda: os.sched_setaffinity(0, {cpu})) for _ in range(2)]
    try:
        yield cpu
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@needs_bwrap
def test_under_load_the_cpu_clock_still_gives_the_full_budget_and_the_wall_clock_does_not(lab, load_on_first_cpu):
    cpu, budget = load_on_first_cpu, 2.0
    on_cpu = run(cpu_spec(lab, budget=budget), "bubblewrap")
    on_wall = run(cpu_spec(lab, stop_after_s=budget, stop_after_cpu_s=None, cpu_env=None), "bubblewrap")
    for r in (on_cpu, on_wall):                     # both ran on the loaded CPU only
        assert f"cpus [{cpu}]" in r.log_tail, r.log_tail
    assert on_cpu.stopped_by == "cpu" and own_cpu(on_cpu) >= 0.9 * budget
    assert on_wall.clock == "wall" and on_wall.stopped_by == "wall"
    # the same budget on the wall clock bought about a third of the CPU: the load took the rest
    assert own_cpu(on_wall) < 0.7 * budget and on_wall.cpu_seconds < 0.7 * budget, on_wall


@pytest.mark.parametrize("level", LEVELS)
def test_the_wall_cap_stops_a_run_that_gets_no_cpu(lab, level):
    code = BURNER.replace("while True:\n    pass", "while True:\n    time.sleep(0.05)")
    result = run(cpu_spec(lab, code, budget=5.0, stop_after_s=1.0), level)
    assert result.clock == "cpu" and result.stopped and result.stopped_by == "wall"
    assert result.returncode == 0 and result.cpu_seconds < 1.0


@pytest.mark.parametrize("level", LEVELS)
def test_the_kill_comes_the_grace_after_a_cpu_stop_not_at_the_timeout(lab, level):
    code = BURNER.replace("signal.signal(signal.SIGTERM, stop)", "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    result = run(cpu_spec(lab, code, budget=1.0, stop_grace_s=0.5, timeout_s=30), level)
    assert result.stopped_by == "cpu" and result.timed_out and result.returncode is None
    # it kept burning through the grace only: the timeout would have let it burn ~29 s more
    assert 1.0 <= result.cpu_seconds < 3.0


AFFINITY = "import os; print('affinity', len(os.sched_getaffinity(0)), os.environ.get('CPU_THREADS'))"


@needs_bwrap
@pytest.mark.parametrize("threads", [1, 0])
def test_the_run_may_use_only_its_cpus(lab, threads):
    result = run(cpu_spec(lab, AFFINITY, cpu_threads=threads), "bubblewrap")
    n = 1 if threads else len(os.sched_getaffinity(0))
    assert result.returncode == 0 and f"affinity {n} {n}" in result.log_tail, result.log_tail
    assert result.cpu_threads == n


WIDENER = """
import hashlib, os, signal, sys, threading, time
signal.signal(signal.SIGTERM, lambda *_: (print(f"own cpu {time.process_time():.3f}", flush=True), os._exit(0)))
os.sched_setaffinity(0, range(os.cpu_count()))     # needs no privilege; a cpuset narrows it again
print("widened to", len(os.sched_getaffinity(0)), flush=True)
def burn():                                        # hashing a large buffer releases the GIL
    data = b"x" * (1 << 20)
    while True:
        hashlib.sha256(data).digest()
for _ in range(2):
    threading.Thread(target=burn, daemon=True).start()
while True:
    time.sleep(0.01)
"""


@needs_bwrap
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_run_that_widens_its_affinity_is_held_by_its_cpuset_or_charged_for_all_its_cpu(lab):
    result = run(cpu_spec(lab, WIDENER, budget=1.0), "bubblewrap")
    assert result.cpuset == sandbox.cpuset_available()
    assert result.stopped_by == "cpu" and own_cpu(result) <= result.cpu_seconds + 0.05
    if result.cpuset:  # the kernel keeps it on its one CPU: its neighbour's stays free
        assert "widened to 1" in result.log_tail, result.log_tail
        assert 1.0 <= result.cpu_seconds <= 1.3
    else:  # charged for every CPU second of both threads: it only spent its one-CPU budget sooner
        assert f"widened to {os.cpu_count()}" in result.log_tail, result.log_tail
        assert 1.0 <= result.cpu_seconds <= 1.6


def test_this_machine_holds_runs_by_cpuset_where_it_has_the_controller():
    """The reference machines mount cgroup v1's cpuset for us: the cpuset branch above must be the
    one that runs there (a machine without the controller is shown by the poll and v2 paths)."""
    mounted = any(line.split(" - ")[1].split()[0] == "cgroup" and "cpuset" in line.split(" - ")[1].split()[2].split(",")
                  for line in open("/proc/self/mountinfo") if " - " in line)
    if mounted and sandbox.limits_mechanism() == "cgroup-v1":
        assert sandbox.cpuset_available()


# ---------------------------------------------------------------------------
# the runner: what it asks the sandbox for under each clock

def rules_with(**values):
    """The default constitution with these keys (each set once in it) given these TOML values."""
    return parse_text(with_constants(default_text(), **values))


def spec_for(rules, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    seen = []
    monkeypatch.setattr(runner_mod.sandbox, "run", lambda spec, level, on_start=None, on_stop=None, **kw: seen.append(spec))
    data = {"train_dir": str(tmp_path / "d" / "train"), "tokenizer_dir": str(tmp_path / "tok"),
            "val_dir": str(tmp_path / "d" / "val")}
    Runner(tmp_path / "state", rules, "none").train(tmp_path, tmp_path / "run", data)
    return seen[0]


def test_the_runner_asks_for_the_cpu_clock_by_default(tmp_path, monkeypatch):
    rules = rules_with(cpu_threads="1")
    b = rules.budgets.experiment
    assert b.clock == "cpu"
    spec = spec_for(rules, tmp_path, monkeypatch)
    assert spec.stop_after_cpu_s == b.training_seconds and spec.cpu_threads == 1
    assert spec.stop_after_s == CPU_WALL_FACTOR * b.training_seconds == training_wall_cap(rules)
    assert spec.timeout_s == training_wall_cap(rules) + b.grace_seconds == training_kill_seconds(rules)
    assert spec.stop_grace_s == b.grace_seconds
    assert (spec.stop_env, spec.cpu_env, spec.threads_env) == ("CHARTER_DEADLINE", "CHARTER_CPU_BUDGET", "CHARTER_CPU_THREADS")
    assert spec.env["OMP_WAIT_POLICY"] == "PASSIVE"  # spinning threads would be charged for waiting


def test_an_operators_spin_count_passes_through_to_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")  # a lab that owns its machine may trade fairness for wall time
    spec = spec_for(rules_with(cpu_threads="1"), tmp_path, monkeypatch)
    assert spec.env["GOMP_SPINCOUNT"] == "10000"


def test_the_runner_on_the_wall_clock_is_as_before(tmp_path, monkeypatch):
    rules = rules_with(clock='"wall"')
    spec = spec_for(rules, tmp_path, monkeypatch)
    assert spec.stop_after_cpu_s is None and spec.cpu_env is None and spec.threads_env is None
    assert "OMP_WAIT_POLICY" not in spec.env
    assert spec.stop_after_s == rules.budgets.experiment.training_seconds
    assert spec.timeout_s == rules.experiment_deadline_seconds == training_kill_seconds(rules)


def test_over_budget_names_the_clock_that_stopped_the_run():
    def result(**kw):
        base = dict(returncode=-15, timed_out=False, memory_killed=False, wall_seconds=60.0, peak_rss_mb=1.0,
                    level="none", log_tail="", stopped=True, clock="cpu")
        return SandboxResult(**(base | kw))

    assert over_budget(result(stopped_by="cpu"), 60, 5).startswith("over budget: stopped at 60 CPU s per CPU")
    assert "the wall cap of 180 s" in over_budget(result(stopped_by="wall", returncode=None, timed_out=True), 60, 5)
    assert over_budget(result(returncode=0, stopped_by="cpu"), 60, 5) is None


def test_repeated_runs_of_a_commit_are_told_other_seeds(tmp_path, monkeypatch):
    rules = rules_with(clock='"wall"')
    seen = []
    monkeypatch.setattr(runner_mod.sandbox, "run", lambda spec, level, on_start=None, on_stop=None, **kw: seen.append(spec))
    data = {"train_dir": str(tmp_path / "d" / "train"), "tokenizer_dir": str(tmp_path / "tok"),
            "val_dir": str(tmp_path / "d" / "val")}
    runner = Runner(tmp_path / "state", rules, "none")
    for offset in (0, 2):
        runner.train(tmp_path, tmp_path / f"run{offset}", data, seed_offset=offset)
    assert [s.env["CHARTER_SEED_OFFSET"] for s in seen] == ["0", "2"]
    monkeypatch.setattr(Runner, "train", lambda self, *a, **kw: (_ for _ in ()).throw(RuntimeError(a[-1])))
    with pytest.raises(RuntimeError, match="^5$"):      # the job's offset reaches the run
        runner.run(Job(1, 3, "c0ffee", tmp_path, tmp_path / "run3", seed_offset=5), data)
