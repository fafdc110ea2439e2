"""The sandbox runner: runs one untrusted command (train.py, the evaluator's model worker) under
bubblewrap with the file system read-only except the run dir, validation data and the ledger
hidden, no network, a cleared environment and no capabilities, and owns its end: a hard wall-clock
kill, a memory limit polled from /proc (RSS of the whole process tree plus what it holds in the
sandbox's private tmpfs), a process-count limit, RLIMIT_FSIZE, and a bounded log with a tail for
the ledger. Level "none" keeps the same process handling without bwrap, for labs whose
constitution allows it. Nested bwrap does not work inside our sandbox (it needs capabilities we
drop), so the evaluator runs trusted outside bwrap and only its model worker is sandboxed, through
`EVAL_WORKER_PREFIX=worker_prefix(spec)`.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

LOG_CAP_BYTES = 10 * 1024 * 1024    # the log file on disk stops growing here
TAIL_BYTES = 4096                   # what the ledger keeps of the output
POLL_S = 0.2                        # how often memory, processes and the clock are checked
DRAIN_S = 2.0                       # after the end, how long to wait for the pipe to close


class SandboxUnavailable(Exception):
    """Level "bubblewrap" was asked for but bwrap can't run here; the message says why."""


@dataclass(frozen=True)
class SandboxSpec:
    argv: list[str]
    cwd: Path                       # the lab dir: read-only inside
    writable: list[Path]            # bound read-write: the run dir, a compile-cache dir
    hidden: list[Path]              # dirs: an empty read-only tmpfs; files: unreadable (EACCES)
    env: dict[str, str]             # the whole environment inside (see minimal_env)
    timeout_s: float                # hard kill of the whole tree at this wall time
    memory_mb: int                  # kill when RSS of the tree + private tmpfs use exceeds this
    max_processes: int              # RLIMIT_NPROC, and enforced by polling (root is exempt from it)
    max_file_mb: int                # RLIMIT_FSIZE
    network: bool = False
    stdout_path: Path | None = None  # combined stdout+stderr, capped at LOG_CAP_BYTES
    readable: list[Path] = field(default_factory=list)  # bound back read-only, e.g. a run dir
                                                        # inside the hidden .charter/ for the worker


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None          # None when the sandbox killed it (timeout, memory, processes)
    timed_out: bool
    memory_killed: bool
    wall_seconds: float
    peak_rss_mb: float
    level: str                      # "bubblewrap" or "none"
    log_tail: str                   # last ~4 KB of output: untrusted text
    kill_reason: str = ""           # "", "timeout", "memory" or "processes"


def minimal_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to start from: our python first on PATH, HOME in a writable place."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------
# bubblewrap

def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    """The full bwrap command line for spec (bwrap options, "--", spec.argv)."""
    mb = max(spec.memory_mb, 1)
    cwd = spec.cwd.resolve()
    writable = [p.resolve() for p in spec.writable]
    # the interpreter and its packages, wherever they live: a venv in a temporary clone sits
    # under /tmp, which the sandbox replaces with a private tmpfs
    interpreter = {p for p in (Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()) if _under(p, Path("/tmp"))}
    readable = sorted({p.resolve() for p in spec.readable} | interpreter)
    args = [shutil.which("bwrap") or "bwrap",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            # DataLoader workers need a writable /dev/shm; sized, and counted as memory
            "--size", str(mb << 20), "--tmpfs", "/dev/shm",
            "--proc", "/proc",
            # we run as root without capabilities: uid 0 may still write root-owned sysctls
            # (core_pattern is an escape), so the sysctl tree must be read-only
            "--ro-bind", "/proc/sys", "/proc/sys",
            "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
            "--size", str(mb << 20), "--tmpfs", "/tmp"]
    for dev in sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri")):  # GPUs, untested
        args += ["--dev-bind", dev, dev]

    # Mounts are applied shallowest first so the deeper path wins: a run dir inside the hidden
    # .charter/ stays writable, a val dir inside the writable cache stays hidden.
    tmp = Path("/tmp")
    visible_roots = [cwd] + writable + readable
    mounts = []                     # (depth, order, args)
    if _under(cwd, tmp):            # --tmpfs /tmp covered it: bind it back, read-only
        mounts.append((len(cwd.parts), 0, ["--ro-bind", str(cwd), str(cwd)]))
    for r in readable:
        mounts.append((len(r.parts), 0, ["--ro-bind", str(r), str(r)]))
    for w in writable:
        mounts.append((len(w.parts), 1, ["--bind", str(w), str(w)]))
    hidden_dirs = []
    for h in (p.resolve() for p in spec.hidden):
        if not h.exists():
            continue                # nothing to hide
        if _under(h, tmp) and not any(_under(h, r) for r in visible_roots):
            continue                # already invisible under the private /tmp
        if h.is_dir():
            mounts.append((len(h.parts), 2, ["--size", "4096", "--tmpfs", str(h)]))
            hidden_dirs.append(h)
        else:
            mounts.append((len(h.parts), 2, ["--ro-bind", "/dev/null", str(h)]))
    for _, _, m in sorted(mounts, key=lambda m: (m[0], m[1])):
        args += m
    for h in hidden_dirs:           # read-only last: binds inside them needed their mount points
        args += ["--remount-ro", str(h)]

    if not spec.network:
        args.append("--unshare-net")
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session",
             # bwrap run by root keeps every capability unless told: with CAP_SYS_ADMIN the
             # code could unmount the tmpfs over the validation data, or set the host name
             "--cap-drop", "ALL",
             "--chdir", str(cwd), "--clearenv"]
    for key, value in spec.env.items():
        args += ["--setenv", key, value]
    return args + ["--"] + list(spec.argv)


def worker_prefix(spec: SandboxSpec) -> str:
    """A shell-split prefix for EVAL_WORKER_PREFIX: the bwrap command of spec without an argv."""
    return shlex.join(bwrap_argv(replace(spec, argv=[])))


@functools.lru_cache(maxsize=1)
def _bwrap_version() -> str:
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().replace("bubblewrap", "bwrap") or "bwrap (unknown version)"


def _probe_bwrap() -> str | None:
    """None when bwrap can set up our sandbox here, else the reason it can't."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    spec = SandboxSpec(argv=["true"], cwd=Path("/"), writable=[], hidden=[], env={"PATH": "/usr/bin:/bin"},
                       timeout_s=10, memory_mb=16, max_processes=16, max_file_mb=1)
    try:
        out = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not be started: {e}"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return f"{_bwrap_version()} fails here: {lines[-1] if lines else f'exit {out.returncode}'}"
    return None


_bwrap_ok = False                   # a successful probe is remembered for the process


def detect_level() -> tuple[str, str]:
    """("bubblewrap", "bwrap 0.8.0 works") when bwrap works here, else ("none", the reason)."""
    global _bwrap_ok
    problem = _probe_bwrap()
    if problem:
        return "none", problem
    _bwrap_ok = True
    return "bubblewrap", f"{_bwrap_version()} works"


# ---------------------------------------------------------------------------
# processes

def _stat(pid: int) -> tuple[int, int, bytes] | None:
    """(ppid, start time, state) of pid from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def _tree(root: int) -> dict[int, int]:
    """pid -> start time of root and all its descendants."""
    children: dict[int, list[int]] = {}
    starts = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append(int(name))
                starts[int(name)] = st[1]
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in found:
            found[pid] = starts[pid]
            todo += children.get(pid, [])
    return found


def _rss_bytes(pid: int) -> int:
    """Anonymous + file-backed resident memory; shared memory is counted via the tmpfs instead."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        pass
    return total


def _tmpfs_bytes(pids) -> int:
    """Bytes held in the sandbox's private /tmp and /dev/shm, seen through /proc/PID/root."""
    host = {os.stat("/tmp").st_dev, os.stat("/dev/shm").st_dev}
    seen, total = set(), 0
    for pid in pids:
        for d in ("tmp", "dev/shm"):
            path = f"/proc/{pid}/root/{d}"
            try:
                dev = os.stat(path).st_dev
                if dev in host or dev in seen:
                    continue
                vfs = os.statvfs(path)
            except OSError:
                continue
            seen.add(dev)
            total += (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    return total


def _kill(pgid: int, known: dict[int, int]) -> None:
    """SIGKILL the process group and every process ever seen in the tree (if still the same)."""
    for _ in range(5):              # repeat: a process may fork while we kill
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        known.update(_tree(pgid))
        # the start time guards against a recycled pid; zombies only wait to be reaped
        alive = [pid for pid, start in known.items() if (st := _stat(pid)) and st[1] == start and st[2] != b"Z"]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(0.05)


def _set_limits(spec: SandboxSpec) -> None:
    # runs in the child before exec; bwrap and everything under it inherit these.
    # No RLIMIT_AS: CPU torch.compile peaks at ~1 GB virtual for 0.4 GB resident and CUDA
    # reserves far more address space than memory, so RSS polling is the memory limit.
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec.max_file_mb << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.max_processes,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # die with the controller even at level "none" (bwrap has --die-with-parent for its own)
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


class _Log:
    """Streams output to a capped file and keeps the last TAIL_BYTES in memory."""

    def __init__(self, path: Path | None):
        # O_NOFOLLOW: the run dir is writable by the code, so never follow a link planted there
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        self.file = os.fdopen(os.open(path, flags, 0o644), "wb") if path else None
        self.written = 0
        self.tail = bytearray()

    def write(self, data: bytes) -> None:
        self.tail += data
        del self.tail[:-TAIL_BYTES]
        if self.file and self.written < LOG_CAP_BYTES:
            part = data[:LOG_CAP_BYTES - self.written]
            self.file.write(part)
            self.written += len(part)
            if self.written >= LOG_CAP_BYTES:
                self.file.write(b"\n[charter: log truncated at %d MB]\n" % (LOG_CAP_BYTES >> 20))

    def close(self) -> str:
        if self.file:
            self.file.close()
        return self.tail.decode("utf-8", "replace")


def run(spec: SandboxSpec, level: str, on_start: Callable[[int], None] | None = None) -> SandboxResult:
    """Run spec at level ("bubblewrap" or "none") to its end, or kill its tree at a limit.

    Level "none" applies env, cwd, rlimits, the limits and the kill, but not writable/hidden/network.
    """
    global _bwrap_ok
    if level == "bubblewrap":
        if not _bwrap_ok:
            problem = _probe_bwrap()
            if problem:
                raise SandboxUnavailable(problem)
            _bwrap_ok = True
        argv, cwd, env = bwrap_argv(spec), "/", {}
    elif level == "none":
        argv, cwd, env = list(spec.argv), str(spec.cwd), dict(spec.env)
    else:
        raise ValueError(f"unknown sandbox level {level!r}: use 'bubblewrap' or 'none'")

    log = _Log(spec.stdout_path)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=functools.partial(_set_limits, spec))
    except OSError as e:
        log.write(f"[charter: could not start {argv[0]}: {e}]\n".encode())
        return SandboxResult(None, False, False, 0.0, 0.0, level, log.close(), "")
    if on_start:
        on_start(proc.pid)

    fd = proc.stdout.fileno()
    known: dict[int, int] = {}      # every pid seen in the tree, to kill orphans later
    peak, reason, eof, last_poll = 0, "", False, 0.0
    deadline = t0 + spec.timeout_s
    try:
        while True:
            if eof:
                time.sleep(POLL_S)
            elif select.select([fd], [], [], POLL_S)[0]:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    log.write(chunk)
                else:
                    eof = True
            if proc.poll() is not None:
                break
            now = time.monotonic()
            if now - last_poll < POLL_S:
                continue
            last_poll = now
            tree = _tree(proc.pid)
            known.update(tree)
            used = sum(_rss_bytes(p) for p in tree) + _tmpfs_bytes(tree)
            peak = max(peak, used)
            if now >= deadline:
                reason = "timeout"
            elif used > spec.memory_mb << 20:
                reason = "memory"
            elif len(tree) - (level == "bubblewrap") * 2 > spec.max_processes:  # bwrap's 2 don't count
                reason = "processes"
            if reason:
                break
    finally:
        # whatever happened, nothing we started outlives this call
        _kill(proc.pid, known)
        proc.wait()
        end = time.monotonic() + DRAIN_S
        while not eof and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 1 << 16)
                eof = not chunk
                log.write(chunk)
        proc.stdout.close()
    if reason:
        log.write(f"\n[charter: killed by the sandbox: {reason}]\n".encode())
    return SandboxResult(
        returncode=None if reason else proc.returncode,
        timed_out=reason == "timeout",
        memory_killed=reason == "memory",
        wall_seconds=time.monotonic() - t0,
        peak_rss_mb=peak / (1 << 20),
        level=level,
        log_tail=log.close(),
        kill_reason=reason,
    )
