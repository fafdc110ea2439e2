"""Several experiments in flight on a real local Ray cluster (issue 17).

Tiny labs, the queue proposer, 2 workers: the runs are real (bubblewrap, the evaluator), Ray is
real (`ray.init` by the session, 2 CPUs), and so are git worktrees and the ledger. What is
checked is order and outcome, never how long anything took.
"""

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from lab_helpers import charter, queue_folder, with_constants
from controller.execution import ray_pool
from controller.proposers.queue import QueueProposer
from controller.session.loop import Session, SessionRefused
from controller.workspace.worktrees import worktrees_dir
from ledger import EventKind, Ledger

pytest.importorskip("ray", reason="pip install -e '.[ray]'")  # the README's test command installs it


def events(lab, kind=None):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return led.events(kinds=[kind] if kind else None)


def alive(procs):
    """Those of the recorded (pid, start time) that still run."""
    return [p for p in procs if ray_pool.running(p["pid"], p["start"])]


class RayWatch:
    """Reads the session's record of its local cluster's processes the first time a run starts."""

    def __init__(self, lab):
        self.path, self.procs = lab.state_dir / ray_pool.PIDS_FILE, None

    def on_event(self, e):
        if self.procs is None and e.kind == EventKind.TRAINING_STARTED and self.path.exists():
            self.procs = json.loads(self.path.read_text())


def test_two_workers_overlap_decide_and_judge_against_the_newer_best(make_lab, tmp_path):
    lab = make_lab(train={"LEARNING_RATE": "1e-5"})  # a baseline that barely learns
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_folder(queue, "001-lr-up", {"train.py": with_constants(base, LEARNING_RATE="1e-2")}, "raise the learning rate")
    queue_folder(queue, "002-lr-down", {"train.py": with_constants(base, LEARNING_RATE="1e-7")}, "lower the learning rate")
    queue_folder(queue, "003-lr-mid", {"train.py": with_constants(base, LEARNING_RATE="3e-3")}, "a middling learning rate")
    session = Session(lab, QueueProposer(queue), tag="par", workers=2)
    watch = RayWatch(lab)
    session.listeners.append(watch.on_event)

    summary = session.run()

    evs = events(lab)
    assert [e.payload["workers"] for e in evs if e.kind == EventKind.SESSION_STARTED] == [2]
    decided = {e.experiment: e for e in evs if e.kind == EventKind.DECIDED}
    said = "; ".join(f"{n}: {d.payload['decision']} ({d.payload['reason'][:160]})" for n, d in sorted(decided.items()))
    assert sorted(decided) == [0, 1, 2, 3] and "nothing more" in summary["reason"], f"{summary['reason']}; {said}"
    started = {}
    for e in evs:
        if e.kind == EventKind.TRAINING_STARTED:
            started.setdefault(e.experiment, e.seq)
    # two in flight at once: the second candidate trained before the first was decided
    assert started[2] < decided[1].seq
    assert all(decided[n].payload["decision"] in ("keep", "discard") for n in (1, 2, 3)), \
        said
    # experiment 2 was proposed from the baseline; experiment 1's keep came while it ran, so it was
    # judged against that newer best
    proposed = {e.experiment: e for e in evs if e.kind == EventKind.PROPOSED}
    assert proposed[2].payload["parent_commit"] == decided[0].commit_sha
    # a candidate decided after a keep that came while it ran (proposed from an older incumbent) was
    # judged against that newer best, its runs and mean, and says so; the others against their parent
    best, newer = decided[0], 0
    for e in sorted((decided[n] for n in (1, 2, 3)), key=lambda e: e.seq):
        p = e.payload
        assert p["incumbent_runs"] == pytest.approx(best.payload["runs"]), (e.experiment, p)
        assert p["best_before"] == pytest.approx(best.val_bpb), (e.experiment, p)
        if proposed[e.experiment].payload["parent_commit"] != best.commit_sha:
            newer += 1
            assert f"judged against {best.commit_sha[:10]}" in p["reason"], p["reason"]
        if p["decision"] == "keep":
            best = e
    assert best.experiment != 0 and newer >= 1   # the learning rate raised was kept, while another ran
    # the work tree is the best commit; every candidate's worktree is gone; the chain verifies
    best = summary["best_commit"]
    assert lab.git.head() == best and lab.git.dirty_paths() == []
    assert not worktrees_dir(lab).exists() or list(worktrees_dir(lab).iterdir()) == []
    assert "worktree" not in subprocess.run(["git", "worktree", "list"], cwd=lab.root, capture_output=True,
                                            text=True).stdout.split("\n", 1)[1]
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert led.verify().ok
    # the local cluster's processes, as recorded while it ran, are all gone
    assert watch.procs, "the session recorded no Ray process"
    assert alive(watch.procs) == []


def test_more_workers_without_ray_is_refused_in_one_line(make_lab, tmp_path):
    lab = make_lab()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "no-ray"))
    (tmp_path / "no-ray").mkdir()
    (tmp_path / "no-ray" / "ray.py").write_text("raise ImportError('no ray here')\n")
    # Ray as a Python without it sees it: `import ray` fails
    r = charter("run", "--lab", lab.root, "--workers", "2", "--max-experiments", "1", env=env)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and "Ray" in lines[0] and "charter[ray]" in lines[0], r.stderr
    assert events(lab, EventKind.SESSION_STARTED) == []
    # the local backend runs one at a time
    text = lab.constitution_path.read_text().replace('backend = "ray"', 'backend = "local"')
    lab.constitution_path.write_text(text)
    lab.git.commit_all("local backend")
    with pytest.raises(SessionRefused, match='needs scale.backend = "ray"'):
        Session(lab, QueueProposer(tmp_path / "empty"), workers=2).run()


def test_a_recorded_process_killed_unreaped_counts_as_gone_and_the_reap_collects_ours(tmp_path):
    """A child of ours that exited stays a zombie until we wait for it: it no longer runs, and
    `reap_leftovers` must not leave one behind."""
    zombie = subprocess.Popen(["sleep", "60"])
    start = ray_pool._start_time(zombie.pid)
    assert start is not None and ray_pool.running(zombie.pid, start)
    os.kill(zombie.pid, signal.SIGKILL)
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        pass  # the kill lands at once; only our wait would collect it
    assert not ray_pool.running(zombie.pid, start)
    zombie.wait()

    left = subprocess.Popen(["sleep", "60"])
    (tmp_path / ray_pool.PIDS_FILE).write_text(json.dumps([{"pid": left.pid, "start": ray_pool._start_time(left.pid)}]))
    assert ray_pool.reap_leftovers(tmp_path) == 1
    assert not Path(f"/proc/{left.pid}").exists()  # killed and collected: not even a zombie is left
    assert not (tmp_path / ray_pool.PIDS_FILE).exists()


def ray_task_processes():
    """Pids of Ray worker processes running a job now (their title names the task's function)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"_run_on_worker" in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.slow   # about a minute on 2 cores
def test_a_killed_worker_is_an_interrupted_experiment_and_the_session_goes_on(make_lab, tmp_path):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for i, wd in enumerate(("0.2", "0.3", "0.4"), start=1):
        queue_folder(queue, f"00{i}-warmdown", {"train.py": with_constants(base, WARMDOWN_RATIO=wd)}, f"warm-down {wd}")
    session = Session(lab, QueueProposer(queue), tag="lost", workers=2)
    killed = []

    def kill_a_worker():
        while not killed:
            pids = ray_task_processes()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            else:
                threading.Event().wait(0.1)

    def on_event(e):  # once the first candidate trains: kill the Ray worker running a job
        if e.kind == EventKind.TRAINING_STARTED and e.experiment == 1 and not killed:
            threading.Thread(target=kill_a_worker, daemon=True).start()
    session.listeners.append(on_event)

    summary = session.run()

    decided = {e.experiment: e.payload for e in events(lab, EventKind.DECIDED)}
    assert killed and sorted(decided) == [0, 1, 2, 3], decided
    lost = [n for n, d in decided.items() if d["decision"] == "interrupted"]
    assert len(lost) == 1 and "Ray worker running it was lost" in decided[lost[0]]["reason"], decided
    assert all(decided[n]["decision"] in ("keep", "discard") for n in (1, 2, 3) if n not in lost), decided
    assert "nothing more" in summary["reason"] and lab.git.dirty_paths() == []


@pytest.mark.slow   # two sessions' start-up and runs: about a minute and a half
def test_kill_9_with_two_in_flight_then_resume(make_lab, tmp_path):
    lab = make_lab()
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for i, wd in enumerate(("0.2", "0.3", "0.4"), start=1):
        queue_folder(queue, f"00{i}-warmdown", {"train.py": with_constants(base, WARMDOWN_RATIO=wd)})
    args = ["run", "--lab", lab.root, "--proposer", "queue", "--queue", queue, "--tag", "crashy", "--workers", "2"]

    # killed right after the first candidate's training is recorded: the other one is in flight
    died = charter(*args, env=dict(os.environ, CHARTER_FAULT_AFTER="training_finished:2"))
    assert died.returncode == -signal.SIGKILL, died.stderr
    procs = json.loads((lab.state_dir / ray_pool.PIDS_FILE).read_text())
    assert alive(procs), "nothing of the killed controller's cluster outlived it: the reap goes unchecked"
    before = events(lab)
    in_flight = {e.experiment for e in before if e.kind == EventKind.PROPOSED} - \
        {e.experiment for e in before if e.kind == EventKind.DECIDED}
    assert in_flight == {1, 2}
    assert worktrees_dir(lab).is_dir() and len(list(worktrees_dir(lab).iterdir())) == 2

    resumed = charter(*args)
    assert resumed.returncode == 0, resumed.stderr
    after = events(lab)
    assert [e.hash for e in after[: len(before)]] == [e.hash for e in before]
    decided = {e.experiment: e.payload for e in after if e.kind == EventKind.DECIDED}
    assert decided[1]["decision"] == decided[2]["decision"] == "interrupted"
    resumed_ev = [e for e in after if e.kind == EventKind.SESSION_RESUMED][0]
    assert sorted(resumed_ev.payload["interrupted"]) == [1, 2]
    assert alive(procs) == [] and ray_task_processes() == []   # nothing of the first cluster runs
    assert not worktrees_dir(lab).exists() or list(worktrees_dir(lab).iterdir()) == []
    assert lab.git.dirty_paths() == []
    verify = charter("ledger", "verify", "--lab", lab.root)
    assert verify.returncode == 0 and verify.stdout.startswith(f"ok: {len(after)} events")
