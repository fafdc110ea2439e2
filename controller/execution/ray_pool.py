"""Jobs on a Ray cluster: each job (commit, work dir, device) -> `RunOutcome` as one Ray task.

The task only trains and evaluates, through the same `Runner` and sandbox as a run in the
controller's process; everything that decides stays with the controller. A task asks for its
worker's devices (num_cpus on a cpu lab, num_gpus on a gpu lab). On a gpu lab the run's sandbox
shows only the task's GPUs (their device nodes, named by UUID in CUDA_VISIBLE_DEVICES) and the
controller samples only their memory. On a local cluster each worker slot also gets CPUs of
its own (the task's affinity, which the sandbox narrows further), so two runs never share a core
and the cpu clock stays fair. Ray never retries a task (max_retries=0): a worker or node lost
mid-run comes back as an interrupted run with Ray's reason, never as a silent second run. A
person's stop cancels every task with force, which kills its worker process and with it the
run's tree (bwrap's --die-with-parent, the sandbox's parent-death signal). A local cluster is
started for the session and shut down at its end; the pids of its processes are kept in the
lab's state dir so that after a controller killed with -9, `reap_leftovers` (at the resume)
leaves none of them running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitution import Constitution
from constitution.schema import Scale
from controller.execution import gpu
from controller.execution.runner import Job, RunOutcome, Runner
from controller.execution.sandbox import SandboxResult

PIDS_FILE = "ray-processes.json"


def ray_refusal(scale: Scale, profile: str = "cpu", memory_mb: int = 0,
                gpu_names: tuple[str, ...] | None = None) -> str | None:
    """Why this constitution's [scale] can't run here (one line), or None. On a local cluster every
    worker needs CPUs (a cpu lab) or GPUs (a gpu lab; `gpu_names`: this machine's, None to probe)
    of its own and room for its run's memory limit. A gpu lab's workers need NVML, which tells the
    controller each worker's GPUs apart (device node, UUID, memory)."""
    if scale.workers == 1:
        return None
    if scale.backend == "local":
        return (f'scale.workers = {scale.workers} needs scale.backend = "ray": the local backend runs one '
                "experiment at a time")
    need = scale.workers * scale.devices_per_worker
    if profile == "gpu" and importlib.util.find_spec("pynvml") is None:
        return (f"{scale.workers} workers on a gpu lab need NVML to give each run its own GPUs: "
                "pip install 'charter[gpu]'")
    if scale.ray_address is None and profile == "gpu":
        have = len(gpu.probe().names if gpu_names is None else gpu_names)
        if need > have:
            return (f"{scale.workers} workers x {scale.devices_per_worker} GPU(s) need {need} GPUs of their own; "
                    f"this machine has {have}")
    elif scale.ray_address is None:
        have = len(os.sched_getaffinity(0))
        if need > have:
            return (f"{scale.workers} workers x {scale.devices_per_worker} CPU(s) need {need} CPUs of their own; "
                    f"this machine has {have}")
    if scale.ray_address is None:
        total = _memory_mb()
        if memory_mb and total and scale.workers * memory_mb > total:
            return (f"{scale.workers} workers x budgets.experiment.memory_hard_mb = {memory_mb} MB is more than "
                    f"this machine's {total} MB")
    try:
        import ray
    except ImportError:
        return f"{scale.workers} workers need Ray, which is not installed: pip install 'charter[ray]'"
    del ray  # imported only to know it can be
    return None


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def slot_cpus(slot: int, per_worker: int, allowed: list[int]) -> list[int] | None:
    """The CPUs worker slot `slot` may use on a local cluster: its own `per_worker` of `allowed`,
    or None (all of them) when there are not enough (ray_refusal refuses that on a local cluster)."""
    start = slot * per_worker
    if start + per_worker > len(allowed):
        return None
    return allowed[start:start + per_worker]


def worker_gpus() -> tuple[gpu.GpuDevice, ...]:
    """The GPUs Ray gave the task running this (its ids, read as NVML indices), from NVML."""
    import ray
    return gpu.assigned(ray.get_gpu_ids())


def _run_on_worker(state_dir: Path, rules: Constitution, level: str, job: Job, data: dict,
                   cpus: list[int] | None, on_gpus: bool = False) -> RunOutcome:
    """The body of one Ray task (on the worker): the job's run, as `Runner.run` does it anywhere,
    on a gpu lab with only the task's GPUs shown to the run and sampled for its memory.
    The affinity is set every time: Ray reuses a worker process, and the last task's would stay."""
    os.sched_setaffinity(0, cpus or range(os.cpu_count() or 1))
    return Runner(state_dir, rules, level, gpus=worker_gpus() if on_gpus else None).run(job, data)


def lost_outcome(level: str, why: str, seconds: float = 0.0) -> RunOutcome:
    """A run whose worker went away (killed, its node lost, cancelled by a stop): interrupted. It
    ran for `seconds` (since it was submitted): device time all the same."""
    t = SandboxResult(returncode=None, timed_out=False, memory_killed=False, wall_seconds=seconds, peak_rss_mb=0.0,
                      level=level, log_tail=f"[charter: {why}]")
    return RunOutcome("interrupted", why, None, t, None, {})


@dataclass
class Submitted:
    ref: Any      # ray.ObjectRef
    slot: int
    job: Job
    at: float = 0.0  # time.monotonic() at submission


class RayPool:
    """Submit jobs as Ray tasks, collect them as they finish, cancel them on a stop."""

    def __init__(self, state_dir: Path, rules: Constitution, level: str, workers: int, gpu: bool = False):
        import ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from an offline lab
        # Ray >= 2.60 starts a local cluster with token authentication (the token in ~/.ray, which
        # no sandbox shows): an agent that reaches its ports (a command proposer with the network)
        # can't submit work to it. Set before `import ray`, RAY_AUTH_MODE would override that.
        # the sandbox enforces each run's memory limit itself; Ray's monitor would kill the newest
        # task, an innocent candidate, as "interrupted"
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        self.ray = ray
        self.state_dir, self.rules, self.level = state_dir, rules, level
        scale = rules.scale
        self.workers, self.per_worker, self.gpu = workers, scale.devices_per_worker, gpu
        self.local = scale.ray_address is None
        common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.local:
            n = self.workers * self.per_worker
            ray.init(num_cpus=n if not gpu else max(n, os.cpu_count() or 1), num_gpus=n if gpu else 0, **common)
            _remember_processes(state_dir)
        else:
            ray.init(address=scale.ray_address, **common)
        self._task = ray.remote(max_retries=0, retry_exceptions=False)(_run_on_worker)
        self.pending: dict[Any, Submitted] = {}
        self._allowed = sorted(os.sched_getaffinity(0))

    def submit(self, slot: int, job: Job, data: dict) -> Submitted:
        need = {"num_gpus": self.per_worker, "num_cpus": 1} if self.gpu else {"num_cpus": self.per_worker}
        cpus = slot_cpus(slot, self.per_worker, self._allowed) if self.local and not self.gpu else None
        ref = self._task.options(**need).remote(self.state_dir, self.rules, self.level, job, data, cpus, self.gpu)
        sub = Submitted(ref, slot, job, time.monotonic())
        self.pending[ref] = sub
        return sub

    def finished(self, timeout: float) -> list[tuple[Submitted, RunOutcome]]:
        """The submitted jobs that finished within `timeout` seconds, each with its outcome."""
        if not self.pending:
            return []
        done, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        out = []
        for ref in done:
            sub = self.pending.pop(ref)
            ran = time.monotonic() - sub.at
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as e:  # our code raised on the worker: it could not run there
                cause = e.cause if getattr(e, "cause", None) is not None else e
                why = f"the worker could not run this job ({type(cause).__name__}: {str(cause).splitlines()[0][:300]})"
                outcome = RunOutcome("crash", why, None, lost_outcome(self.level, why, ran).train, None, {})
            except self.ray.exceptions.TaskCancelledError:
                outcome = lost_outcome(self.level, "its Ray task was cancelled by a stop", ran)
            except self.ray.exceptions.RayError as e:  # the worker process or its node died
                first = (str(e).strip().splitlines() or [""])[0][:300]
                outcome = lost_outcome(self.level, f"the Ray worker running it was lost ({type(e).__name__}: {first})", ran)
            out.append((sub, outcome))
        return out

    def cancel_all(self) -> None:
        """Kill every run in flight (a stop): each task's worker process and the run's tree with it."""
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished, or its worker already gone
                pass

    def close(self) -> None:
        self.cancel_all()
        self.ray.shutdown()
        if self.local:
            reap_leftovers(self.state_dir)


# -- the local cluster's processes ---------------------------------------------------------------

def _start_time(pid: int) -> int | None:
    """When pid started (clock ticks since boot), or None if it is gone or only a zombie (it has
    exited; its parent has not reaped it yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int, start: int) -> bool:
    """Whether the process recorded as (pid, start time) still runs: a reused pid is another."""
    return _start_time(pid) == start


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _remember_processes(state_dir: Path) -> None:
    """The local cluster's processes (the controller's descendants just after ray.init), with
    their start times so that a reused pid is never killed."""
    found = [{"pid": p, "start": t} for p in _descendants(os.getpid()) if (t := _start_time(p)) is not None]
    (state_dir / PIDS_FILE).write_text(json.dumps(found))


def reap_leftovers(state_dir: Path) -> int:
    """Kill what is left of a local cluster an earlier controller started (it was killed, or its
    shutdown left agents behind); how many were still running. Only the recorded processes, and
    only while each pid still names the same process."""
    path = state_dir / PIDS_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    killed = 0
    for item in recorded if isinstance(recorded, list) else []:
        try:
            pid, start = int(item["pid"]), int(item["start"])
        except (KeyError, TypeError, ValueError):
            continue
        if running(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                continue
            _reap(pid)
    path.unlink(missing_ok=True)
    return killed


REAP_WAIT_S = 2.0  # how long to wait for a killed child to be collectable (one in D state may take long)


def _reap(pid: int) -> None:
    """Collect a killed child of ours (Ray's processes are, when this controller started the
    cluster), so no zombie of it is left; another's is its parent's to collect. Never blocks past
    REAP_WAIT_S: a child stuck in the kernel is left to be collected at our exit."""
    end = time.monotonic() + REAP_WAIT_S
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        if time.monotonic() > end:
            return
        time.sleep(0.01)
