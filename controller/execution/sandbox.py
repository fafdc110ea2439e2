"""The sandbox runner: runs one untrusted command (train.py, the evaluator's model worker) under
bubblewrap and owns its end.

File system by allow-list: the sandbox starts from an empty root and sees only the interpreter
and the system libraries it needs, the lab read-only (Charter's `.charter/` state inside it
masked), what the spec names readable, its writable run dir, and a private /tmp, /dev/shm,
/dev and /proc. Validation data, caches, home directories, other labs, host sockets and
/usr/share/doc are simply not there; `hidden` is an extra deny inside allowed trees.

An unprivileged uid: bwrap starts as root (the only way its mounts work here), keeps only
CAP_SETUID/SETGID/SETPCAP, and execs the command through `setpriv` as uid/gid 65534 with no
groups, no capabilities (effective, inheritable, ambient or bounding) and no_new_privs, so
root-only files stay unreadable, RLIMIT_NPROC applies, and a Unix socket it could somehow see
is still refused by its file mode.

Limits: a fresh cgroup per run where the machine allows it (v1 memory + pids + cpuacct +
cpuset here, v2 elsewhere) holds the memory limit (RSS, shared memory, the private tmpfs: all of it),
the task limit, the peak and the CPU count; without cgroups a poll of /proc (RSS including shared memory, plus the
private tmpfs) does it. A wall-clock kill, an optional stop signal before it, RLIMIT_FSIZE and
RLIMIT_NPROC, and a bounded log with a tail for the ledger. When the run started, when the stop
signal went out, when it exited and when a given marker line first came out of it are recorded
on the controller's monotonic clock (the phases of a run: `controller.execution.phases`).

Two clocks for the stop: wall seconds from the start, or CPU seconds of the whole tree (the
cgroup's cpuacct counter, else a poll of /proc) divided by the CPUs the run may use, which other
work on the machine can't shrink; the run's CPU affinity is set to those CPUs (held by a cpuset
group where the machine has one: then a run can't widen it onto a neighbour's), and a wall cap
still stops a run that gets no CPU at all.

Level "none" keeps the same process handling (and the cgroup) without bwrap, for labs whose
constitution allows it: it runs as the controller's uid, not unprivileged. Nested bwrap does
not work inside our sandbox, so the evaluator runs trusted outside bwrap and only its model
worker is sandboxed, through `EVAL_WORKER_PREFIX=worker_prefix(spec)`, which also gives the
worker its own limits (this file run as a script: `sandbox.py limit ... -- bwrap ...`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

LOG_CAP_BYTES = 10 * 1024 * 1024    # the log file on disk stops growing here
TAIL_BYTES = 4096                   # what the ledger keeps of the output
POLL_S = 0.2                        # how often memory, processes and the clock are checked
CPU_POLL_MIN_S = 0.01               # near the end of a CPU budget its counter is read this often at most
DRAIN_S = 2.0                       # after the end, how long to wait for the pipe to close
CGROUP_RMDIR_S = 5.0                # how long to retry removing a run's cgroup after the kill
# The stop signal comes this long before the time a run is told (SandboxSpec.stop_env), so a run
# that trains up to that time always gets the signal while still training, with its handler in
# place; told the exact moment, a run that finished on time could be hit while Python shuts down
# (CPython puts SIG_DFL back then) and die of it, saved but with exit code 143.
STOP_LEAD_S = 0.25

SANDBOX_UID = 65534                 # nobody: what untrusted code runs as inside bwrap
SANDBOX_GID = 65534
BWRAP_TASKS = 2                     # bwrap's own processes in a run: the monitor and pid 1
STATE_DIR_NAME = ".charter"         # a lab's Charter state: always masked inside a bound lab
CGROUPS = True                      # tests set False to exercise the polling fallback

# The system part of the allow-list, measured (strace of python + torch import + torch.compile
# + a training run as uid 65534): the dynamic linker and libraries (/usr/lib*, glibc's locale in
# /usr/lib/locale), the compiler torch.compile drives (/usr/bin, /usr/libexec/gcc, /usr/lib/gcc,
# /usr/include), /usr/sbin for `ldconfig -p` (triton, ctypes.util), zoneinfo for localtime. Not
# /usr/share (doc holds the python3.11-doc corpus the default lab is prepared from), not
# /usr/local (cuda toolkits and tools; bound only on GPU hosts), not /usr/src, /usr/games.
USR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec", "include", "share/zoneinfo")
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")   # merged-usr links, or real dirs
# /etc: only what the loader (ld.so.cache), name lookups of our own uid (getpass.getuser() in
# torch's inductor: passwd, group, nsswitch.conf), the time zone and the compiler's alternatives
# links need. No shadow, ssh, ssl/private, apt, pip.conf, npmrc, machine-id, hostname, hosts...
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group",
               "localtime", "timezone", "alternatives")
SYSTEM_PREFIXES = ("/usr", "/usr/local")  # an interpreter here: bind its bin/lib*/include only


class SandboxUnavailable(Exception):
    """Level "bubblewrap" was asked for but bwrap can't run here; the message says why."""


@dataclass(frozen=True)
class SandboxSpec:
    argv: list[str]
    cwd: Path                       # the lab dir: read-only inside (its .charter/ masked)
    writable: list[Path]            # bound read-write (the run dir); its top is chowned to the sandbox uid
    hidden: list[Path]              # extra deny inside allowed trees: dirs an empty tmpfs, files unreadable
    env: dict[str, str]             # the whole environment inside (see minimal_env)
    timeout_s: float                # hard kill of the whole tree at this wall time
    memory_mb: int                  # cgroup memory limit (or: kill when polled usage exceeds it)
    max_processes: int              # tasks (threads count): cgroup pids.max, RLIMIT_NPROC, a poll of the tree
    max_file_mb: int                # RLIMIT_FSIZE
    network: bool = False
    stdout_path: Path | None = None  # combined stdout+stderr, capped at LOG_CAP_BYTES
    readable: list[Path] = field(default_factory=list)  # bound read-only: train shards, tokenizer,
                                                        # a run dir inside the masked .charter/ for the worker
    stop_after_s: float | None = None  # SIGTERM to the untrusted processes at this wall time, once
    stop_env: str | None = None     # an env var told when to stop (unix seconds): STOP_LEAD_S after the
                                    # signal, on the clock the signal is sent by
    # The cpu clock: SIGTERM once the tree's CPU seconds / the CPUs it may use reach this; stop_after_s
    # is then a wall cap, and whichever comes first sends the one stop signal.
    stop_after_cpu_s: float | None = None
    cpu_threads: int = 0            # CPUs the run may use: its affinity (the first N of ours) and the cpu
                                    # clock's divisor; 0, or more than we have, = all of ours
    cpu_env: str | None = None      # an env var told the CPU seconds per CPU the run has: STOP_LEAD_S over the stop
    threads_env: str | None = None  # an env var told how many CPUs the run may use
    stop_grace_s: float | None = None  # the hard kill also comes this many wall seconds after the stop signal
    marker: bytes | None = None     # the first output line starting with these bytes is timed (marker_seconds)
    nice: int = 0                   # > 0: this niceness and SCHED_IDLE for the whole tree (an early evaluator yields to its run)
    gpus: tuple[int, ...] | None = None  # the GPUs shown, by device node number (/dev/nvidiaN); None: every one there is


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None          # None when a limit of the sandbox ended it (timeout, memory, processes)
    timed_out: bool
    memory_killed: bool
    wall_seconds: float
    peak_rss_mb: float              # cgroup: peak charged memory (memory.max_usage_in_bytes); poll: polled peak
    level: str                      # "bubblewrap" or "none"
    log_tail: str                   # last ~4 KB of output: untrusted text
    kill_reason: str = ""           # "", "timeout", "memory" or "processes"
    limits: str = "poll"            # what enforced memory and tasks: "cgroup-v1", "cgroup-v2" or "poll"
    stopped: bool = False           # the stop signal (SIGTERM) was sent
    exit_seconds: float | None = None  # start to the main process's own exit; None if the sandbox ended it
    unprivileged: bool = False      # ran as SANDBOX_UID without capabilities (level "bubblewrap")
    clock: str = "wall"             # what the stop counted: "wall", or "cpu" (CPU seconds per CPU, a wall cap too)
    cpu_seconds: float | None = None  # user + system CPU of the whole tree over the run (the cgroup's, else polled)
    cpu_threads: int = 0            # the CPUs it could use (its affinity): the cpu clock's divisor
    cpuset: bool = False            # a cpuset cgroup held it to those CPUs (else only the affinity, which it may widen)
    stopped_by: str = ""            # "cpu" or "wall": the clock that reached its limit and sent the stop signal
    # When things happened, by the controller: started_monotonic is the run's t0 on time.monotonic(),
    # the others wall seconds after it (like exit_seconds); None where it never happened.
    started_monotonic: float | None = None
    marker_seconds: float | None = None  # the spec's marker line was read from the output
    stop_seconds: float | None = None    # the stop signal was sent
    counted_seconds: float | None = None  # what the stop's clock had counted when the stop came or, with
                                          # none, when the run ended; None for a spec without a stop


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


def _interpreter_roots() -> list[Path]:
    """The interpreter's installation(s): the venv and the base python it points at."""
    roots = []
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        p = Path(p).resolve()
        if str(p) in SYSTEM_PREFIXES or p == Path("/"):
            # a system python: /usr's parts come with the system list; /usr/local only its code
            if p != Path("/usr"):
                roots += [p / d for d in ("bin", "lib", "lib64", "include") if (p / d).is_dir()]
        else:
            roots.append(p)
    exe = Path(sys.executable).resolve()            # a venv's python links to the base's binary
    if not any(_under(exe, r) for r in roots) and not _under(exe, Path("/usr")):
        roots.append(exe)
    return roots


class _Plan:
    """Builds the mount sequence of an allow-list root and remembers what each path is."""

    def __init__(self, args: list[str]):
        self.args = args
        # mount points and made dirs -> "bind" (host content), "tmpfs" or "dir" (synthetic, empty)
        self.kinds: dict[Path, str] = {Path("/"): "tmpfs"}
        self.masks: list[Path] = []

    def covering(self, path: Path) -> tuple[Path, str]:
        best = max((p for p in self.kinds if p != path and _under(path, p)), key=lambda p: len(p.parts))
        return best, self.kinds[best]

    def visible(self, path: Path) -> bool:
        """Would host content at path show through as things stand (it sits in a bind)?"""
        return path in self.kinds and self.kinds[path] == "bind" or self.covering(path)[1] == "bind"

    def parents(self, path: Path, perms: str) -> None:
        """Make the missing parents of a mount point: synthetic dirs, by default not listable."""
        for a in reversed(path.parents[:-1]):       # shallowest first, "/" excluded
            if a in self.kinds:
                continue
            if self.covering(a)[1] == "bind":
                continue                             # it exists in the host tree bound there
            self.args += ["--perms", perms, "--dir", str(a)]
            self.kinds[a] = "dir"

    def mount(self, opt: str, src: str, dest: Path, kind: str, parent_perms: str = "0711") -> None:
        self.parents(dest, parent_perms)
        self.args += [opt, src, str(dest)]
        self.kinds[dest] = kind

    def tmpfs(self, dest: Path, perms: str, size: int, parent_perms: str = "0711") -> None:
        self.parents(dest, parent_perms)
        self.args += ["--perms", perms, "--size", str(size), "--tmpfs", str(dest)]
        self.kinds[dest] = "tmpfs"


def _system(plan: _Plan, mb: int, gpus: tuple[int, ...] | None = None) -> None:
    """The fixed part: system libraries and tools, a few /etc entries, /dev, /proc, /tmp."""
    for name in TOP_LINKS:
        p = Path("/") / name
        if p.is_symlink():
            plan.args += ["--symlink", os.readlink(p), str(p)]
            plan.kinds[p] = "dir"
        elif p.is_dir():
            plan.mount("--ro-bind", str(p), p, "bind")
    plan.args += ["--perms", "0755", "--dir", "/usr", "--perms", "0755", "--dir", "/etc"]
    plan.kinds[Path("/usr")] = plan.kinds[Path("/etc")] = "dir"
    for name in USR_DIRS:
        p = Path("/usr") / name
        if p.is_dir() and not p.is_symlink():
            plan.mount("--ro-bind", str(p), p, "bind", parent_perms="0755")
    for name in ETC_ENTRIES:
        p = Path("/etc") / name
        if p.exists() or p.is_symlink():
            if p.is_symlink():                       # /etc/localtime -> /usr/share/zoneinfo/...
                plan.args += ["--symlink", os.readlink(p), str(p)]
                plan.kinds[p] = "dir"
            else:
                plan.mount("--ro-bind", str(p), p, "bind")
    plan.args += ["--dev", "/dev"]
    plan.kinds[Path("/dev")] = "tmpfs"
    # DataLoader workers need a writable /dev/shm; sized, and charged as memory
    plan.tmpfs(Path("/dev/shm"), "1777", mb << 20)
    plan.args += ["--proc", "/proc",
                  # defence in depth: uid 65534 can't write root's sysctls anyway
                  "--ro-bind", "/proc/sys", "/proc/sys",
                  "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    plan.kinds[Path("/proc")] = "tmpfs"
    plan.tmpfs(Path("/tmp"), "1777", mb << 20)
    # CUDA: the device nodes, the driver's libraries and /proc/driver/nvidia, only what exists
    # (gpu_binds; nothing on a host without a GPU node). /dev and /proc are synthetic here, so
    # their binds go in as they are; a library outside the bound system dirs gets its parents.
    from controller.execution import gpu_binds  # here: this file also runs alone as `sandbox.py limit` (-I -S)
    shown = tuple(f"/usr/{n}" for n in USR_DIRS) + tuple(f"/{n}" for n in TOP_LINKS)
    binds = gpu_binds.gpu_binds(Path("/"), gpu_binds.ld_cache_paths(), shown, gpus) if gpu_binds.has_gpu_node() else []
    for b in binds:
        if b.dest.parts[1] in ("dev", "proc"):
            plan.args += [b.option, str(b.source), str(b.dest)]
        else:
            plan.mount(b.option, str(b.source), Path(b.dest), "bind")


def _setpriv() -> str:
    return shutil.which("setpriv") or "/usr/bin/setpriv"


def drop_argv() -> list[str]:
    """What runs first inside bwrap: become SANDBOX_UID with nothing, then exec the command."""
    return [_setpriv(), "--reuid", str(SANDBOX_UID), "--regid", str(SANDBOX_GID), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    """The full bwrap command line for spec (bwrap options, "--", setpriv, spec.argv)."""
    mb = max(spec.memory_mb, 1)
    cwd = spec.cwd.resolve()
    # priority on the same path: hidden > writable > readable
    trees: dict[Path, int] = {}
    for p in _interpreter_roots() + [cwd] + [p.resolve() for p in spec.readable]:
        trees[p] = 0
    for p in (p.resolve() for p in spec.writable):
        trees[p] = 1
    if Path("/") in trees:
        raise ValueError("the sandbox never shows the host's / whole: name the directories it needs")
    hidden = {p.resolve() for p in spec.hidden}
    state = cwd / STATE_DIR_NAME                    # Charter's state, structurally never shown
    if state.is_dir():
        hidden.add(state)
    for h in hidden:
        trees[h] = 2

    args = [shutil.which("bwrap") or "bwrap", "--tmpfs", "/"]
    plan = _Plan(args)
    _system(plan, mb, spec.gpus)
    # Shallowest first so the deeper path wins: a run dir inside the masked .charter/ stays
    # writable, a val dir inside a readable cache stays hidden.
    for path, kind in sorted(trees.items(), key=lambda t: (len(t[0].parts), t[1], str(t[0]))):
        if kind == 2:
            if not path.exists() or not plan.visible(path):
                continue                             # not there, or not shown anyway
            if path.is_dir():
                plan.tmpfs(path, "0755", 4096)
                plan.masks.append(path)
            else:
                plan.mount("--ro-bind", "/dev/null", path, "bind")   # nodev: opening it fails
        elif path.exists():
            plan.mount("--bind" if kind == 1 else "--ro-bind", str(path), path, "bind")
    # Unix sockets inside the shown trees (--unshare-net does not cover path-named ones): each
    # covered by /dev/null, so connecting is refused whatever its mode. One made during the run
    # is left to the uid: only a world-writable socket would take uid 65534.
    user_trees = [t for t, kind in trees.items() if kind < 2 and not any(_under(t, r) for r in _interpreter_roots())]
    for sock in _sockets(user_trees, hidden):
        if plan.visible(sock):
            plan.mount("--ro-bind", "/dev/null", sock, "bind")
    for m in plan.masks:                            # read-only last: binds inside needed their mount points
        args += ["--remount-ro", str(m)]
    args += ["--remount-ro", "/"]

    if not spec.network:
        args.append("--unshare-net")
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session",
             # bwrap runs as root: keep only what setpriv needs to become nobody and drop the rest
             "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
             "--chdir", str(cwd), "--clearenv"]
    for key, value in spec.env.items():
        args += ["--setenv", key, value]
    return args + ["--"] + drop_argv() + list(spec.argv)


SOCKET_SCAN_LIMIT = 200_000         # entries looked at per run for sockets in the shown trees


def _sockets(roots: list[Path], skip: set[Path]) -> list[Path]:
    """Path-named Unix sockets under roots (not following links, not inside skip)."""
    found, seen = [], 0
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = [n for n in dirnames if d / n not in skip]
            for name in filenames:
                seen += 1
                try:
                    if stat.S_ISSOCK(os.lstat(d / name).st_mode):
                        found.append(d / name)
                except OSError:
                    pass
            if seen > SOCKET_SCAN_LIMIT:
                return found
    return found


def _own_writable(spec: SandboxSpec) -> None:
    """The writable paths (their top only, not what is inside) belong to the sandbox uid."""
    for w in spec.writable:
        try:
            os.chown(w, SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)
        except OSError:
            pass                                     # not root: the run will find it read-only


def worker_prefix(spec: SandboxSpec) -> str:
    """A shell-split prefix for EVAL_WORKER_PREFIX: this file as a trusted wrapper that gives the
    worker its own limits (memory and tasks in its own cgroup nested in the evaluator's, or RLIMITs
    only; RLIMIT_FSIZE and RLIMIT_NPROC; a wall-clock kill at spec.timeout_s), then the bwrap
    command of spec without an argv. The worker's time is also bounded by the evaluator itself:
    prepare.py's WORKER_TIMEOUT rejects a worker that stops answering, and the controller's
    evaluate timeout kills the evaluator's whole tree, the worker included."""
    _own_writable(spec)
    wrapper = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "limit",
               f"--memory-mb={max(spec.memory_mb, 1)}", f"--max-processes={spec.max_processes}",
               f"--tasks={BWRAP_TASKS}", f"--max-file-mb={spec.max_file_mb}", f"--timeout-s={spec.timeout_s:g}"]
    if not CGROUPS:
        wrapper.append("--limits=poll")
    wrapper.append("--")
    return shlex.join(wrapper + bwrap_argv(replace(spec, argv=[])))


@functools.lru_cache(maxsize=1)
def _bwrap_version() -> str:
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().replace("bubblewrap", "bwrap") or "bwrap (unknown version)"


def _probe_bwrap() -> str | None:
    """None when bwrap can set up our sandbox here, else the reason it can't."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed (apt-get install util-linux)"
    spec = SandboxSpec(argv=["true"], cwd=Path(sys.prefix), writable=[], hidden=[], env={"PATH": "/usr/bin:/bin"},
                       timeout_s=10, memory_mb=16, max_processes=16, max_file_mb=1)
    try:
        out = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=10)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not be started: {e}"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return f"{_bwrap_version()} fails here: {lines[-1] if lines else f'exit {out.returncode}'}"
    return None


_bwrap_ok = False                   # a successful probe is remembered for the process


def detect_level() -> tuple[str, str]:
    """("bubblewrap", "bwrap 0.8.0 works ...") when bwrap works here, else ("none", the reason)."""
    global _bwrap_ok
    problem = _probe_bwrap()
    if problem:
        return "none", problem
    _bwrap_ok = True
    return "bubblewrap", (f"{_bwrap_version()} works: allow-list root, uid {SANDBOX_UID} without capabilities, "
                          f"limits by {limits_mechanism()}")


# ---------------------------------------------------------------------------
# cgroups

def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _keyed(path: Path, key: str) -> int:
    """The value of `key N` in a flat-keyed cgroup file (memory.oom_control, pids.events...), or 0."""
    try:
        for line in _read(path).splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_parents() -> tuple[str, dict[str, Path]] | None:
    """Where this process's own groups are: ("v1", {"memory": dir, "pids": dir, "cpuacct": dir,
    "cpuset": dir}) or ("v2", {"unified": dir})."""
    try:
        mine = {}
        for line in _read(Path("/proc/self/cgroup")).splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                mine[c] = path
        mounts = []
        for line in _read(Path("/proc/self/mountinfo")).splitlines():
            left, _, right = line.partition(" - ")
            l, r = left.split(), right.split()
            if len(l) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
                mounts.append((r[0], l[3], l[4].replace("\\040", " "), set(r[2].split(","))))
    except (OSError, ValueError):
        return None

    def place(mount_root: str, mountpoint: str, own: str) -> Path | None:
        if mount_root != "/":
            if own != mount_root and not own.startswith(mount_root + "/"):
                return None
            own = own[len(mount_root):]
        d = Path(mountpoint) / own.lstrip("/")
        return d if d.is_dir() else None

    v1 = {}
    for c in ("memory", "pids", "cpuacct", "cpuset"):
        for fstype, root, point, opts in mounts:
            if fstype == "cgroup" and c in opts and c in mine and (d := place(root, point, mine[c])):
                v1[c] = d
                break
    if "memory" in v1:
        return "v1", v1
    for fstype, root, point, _ in mounts:
        if fstype == "cgroup2" and "" in mine and (d := place(root, point, mine[""])):
            return "v2", {"unified": d}
    return None


@dataclass
class _Cgroup:
    """One run's group(s): created with its limits, read while it runs, removed after."""

    kind: str                       # "cgroup-v1" or "cgroup-v2"
    dirs: dict[str, Path]           # v1: {"memory": dir, "pids", "cpuacct", "cpuset" (those three optional)}; v2: {"unified": dir}
    cpuset: bool = False            # the kernel holds the run to its CPUs (cpuset.cpus): it can't widen its affinity

    @property
    def has_pids(self) -> bool:
        return "pids" in self.dirs or "unified" in self.dirs

    @property
    def has_cpu(self) -> bool:
        return "cpuacct" in self.dirs or ("unified" in self.dirs and (self.dirs["unified"] / "cpu.stat").exists())

    def cpu_seconds(self) -> float | None:
        """User + system CPU of every task that ever ran in the group or in groups nested in it."""
        try:
            if self.kind == "cgroup-v1":
                return int(_read(self._f("cpuacct", "cpuacct.usage"))) / 1e9
            return _keyed(self._f("unified", "cpu.stat"), "usage_usec") / 1e6
        except (OSError, ValueError):
            return None

    def _f(self, controller: str, name: str) -> Path:
        return self.dirs.get(controller, self.dirs.get("unified")) / name

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def pids(self) -> list[int]:
        """Every process in the group and in groups nested in it (the evaluator's worker's)."""
        found = set()
        for top in dict.fromkeys(self.dirs.values()):
            for d, _, _ in os.walk(top):
                try:
                    found.update(int(x) for x in _read(Path(d) / "cgroup.procs").split())
                except (OSError, ValueError):
                    pass
        return sorted(found)

    def _memory(self, v1_name: str, v2_name: str) -> int:
        try:
            return int(_read(self._f("memory", v1_name if self.kind == "cgroup-v1" else v2_name)))
        except (OSError, ValueError):
            return 0

    def usage_bytes(self) -> int:
        return self._memory("memory.usage_in_bytes", "memory.current")

    def peak_bytes(self) -> int:
        return self._memory("memory.max_usage_in_bytes", "memory.peak")

    def oom_kills(self) -> int:
        """OOM kills in this group itself (v1 counts locally; v2's local file excludes nested groups)."""
        if self.kind == "cgroup-v1":
            return _keyed(self._f("memory", "memory.oom_control"), "oom_kill")
        local = self._f("memory", "memory.events.local")
        return _keyed(local if local.exists() else self._f("memory", "memory.events"), "oom_kill")

    def pids_refused(self) -> int:
        """Forks refused at pids.max."""
        if not self.has_pids:
            return 0
        local = self._f("pids", "pids.events.local")
        return _keyed(local if local.exists() else self._f("pids", "pids.events"), "max")

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self) -> None:
        """Kill what is left and remove the group and any nested in it, deepest first."""
        end = time.monotonic() + CGROUP_RMDIR_S
        for top in dict.fromkeys(self.dirs.values()):
            while True:
                self.kill_all()
                for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                if not top.exists() or time.monotonic() > end:
                    break
                time.sleep(0.05)


def _make_cgroup(memory_mb: int, tasks: int, prefix: str = "charter", cpus: list[int] | None = None) -> _Cgroup | None:
    """A fresh group under this process's own, limited to memory_mb and `tasks` tasks and, where
    the cpuset controller is ours, to `cpus`; None if the machine doesn't let us (no cgroup fs,
    not root, v2 without delegated controllers). Without a cpuset only the affinity holds the CPUs."""
    if not CGROUPS:
        return None
    where = _cgroup_parents()
    if where is None:
        return None
    kind, parents = where
    _remove_stale(parents.values(), prefix)
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    limit = max(memory_mb, 1) << 20
    made: dict[str, Path] = {}
    try:
        if kind == "v1":
            for c, parent in parents.items():
                if c == "cpuset" and not cpus:
                    continue                         # a nested group (the worker's) stays in its parent's set
                try:
                    (parent / name).mkdir()
                except OSError:
                    if c == "memory":
                        raise
                    continue                         # no pids group: RLIMIT_NPROC and the poll remain;
                                                     # no cpuacct group: the poll counts CPU
                made[c] = parent / name
            _write(made["memory"] / "memory.limit_in_bytes", limit)
            if (made["memory"] / "memory.memsw.limit_in_bytes").exists():
                _write(made["memory"] / "memory.memsw.limit_in_bytes", limit)    # no escape into swap
            if "pids" in made:
                try:
                    _write(made["pids"] / "pids.max", tasks)
                except OSError:
                    made["pids"].rmdir()
                    del made["pids"]
            if "cpuset" in made:
                try:
                    # v1 takes no task until both are set; mems as the parent's (every node)
                    _write(made["cpuset"] / "cpuset.mems", _read(parents["cpuset"] / "cpuset.mems").strip())
                    _write(made["cpuset"] / "cpuset.cpus", _cpu_list(cpus))
                except OSError:
                    made["cpuset"].rmdir()
                    del made["cpuset"]
            return _Cgroup("cgroup-v1", made, cpuset="cpuset" in made)
        parent = parents["unified"]
        d = parent / name
        d.mkdir()
        made["unified"] = d
        if not {"memory", "pids"} <= set(_read(d / "cgroup.controllers").split()):
            _write(parent / "cgroup.subtree_control", "+memory +pids")     # fails with processes in parent
        _write(d / "memory.max", limit)
        for f, v in (("memory.swap.max", 0), ("memory.oom.group", 1)):
            if (d / f).exists():
                _write(d / f, v)
        _write(d / "pids.max", tasks)
        return _Cgroup("cgroup-v2", made, cpuset=bool(cpus) and _v2_cpuset(parent, d, cpus))
    except OSError:
        for d in made.values():
            try:
                d.rmdir()
            except OSError:
                pass
        return None


def _cpu_list(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _v2_cpuset(parent: Path, d: Path, cpus: list[int]) -> bool:
    """Hold a v2 group to `cpus` if the parent delegates cpuset (or lets us enable it)."""
    try:
        if "cpuset" not in _read(d / "cgroup.controllers").split():
            _write(parent / "cgroup.subtree_control", "+cpuset")
        _write(d / "cpuset.cpus", _cpu_list(cpus))
        return True
    except OSError:
        return False


def _remove_stale(parents, prefix: str) -> None:
    """Groups a controller that died mid-run left behind (its pid is gone): empty, so removable."""
    for parent in parents:
        for d in parent.glob(f"{prefix}-*-*"):
            pid = d.name[len(prefix) + 1:].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                for sub, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(sub)
                    except OSError:
                        pass


@functools.lru_cache(maxsize=1)
def _probe_group() -> _Cgroup | None:
    """A group made (and removed) the way a run's is, once: what this machine gives a run."""
    group = _make_cgroup(16, 16, "charter-probe", cpus=sorted(os.sched_getaffinity(0))[:1])
    if group is not None:
        group.remove()
    return group


def limits_mechanism() -> str:
    """What a run started now would be limited by: "cgroup-v1", "cgroup-v2" or "poll"."""
    group = _probe_group()
    return group.kind if group else "poll"


def cpuset_available() -> bool:
    """Whether a run started now would be held to its CPUs by a cpuset cgroup."""
    group = _probe_group()
    return bool(group and group.cpuset)


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


CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of utime and stime in /proc/PID/stat


def _cpu_ticks(pid: int, start: int) -> int | None:
    """utime + stime + cutime + cstime of pid (/proc/PID/stat fields 14-17) if it is still the
    process that started at `start`: what it used itself (all its threads, exited ones included;
    a zombie still shows it) and what its reaped children used (each child's own and its reaped
    children's, all the way down)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()   # fields[0] is field 3, the state
        if int(fields[19]) != start:
            return None
        return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    except (OSError, IndexError, ValueError):
        return None


class _CpuMeter:
    """CPU seconds (user + system) a run's tree has used so far: the most of its cgroup's counter
    (where it has one) and a poll of /proc; the count never goes back.

    The poll sums, over the live processes of the tree, each one's utime + stime + cutime + cstime.
    A process that exits and is reaped inside the tree moves what it used (and what its own reaped
    children used) into its parent's cutime/cstime, so nothing is lost between polls: a process
    that lived less than a poll, or what one used since it was last read, is in its parent's count
    once reaped. Nothing is counted twice either: a live (or zombie) child counts in its own
    fields, a reaped one in its parent's only, and parents are read before their children (the
    tree is in that order), so a child reaped between the two reads is missed for that reading,
    not doubled. The main process is reaped by us: wait4 hands over its total (run() passes it
    to `reaped`). The remaining limits: a process reparented out of the tree leaves the count
    (at level "none" a double fork's grandchild goes to init, and what it used is lost; under
    bubblewrap the pid namespace's init is bwrap's own process, in the tree, so orphans stay
    counted), a process the last poll of the tree did not see yet is counted from the next poll
    or its reaping on (up to POLL_S of its CPU late), children a parent leaves to the kernel to
    reap (SIGCHLD ignored, SA_NOCLDWAIT) never reach its cutime, so those that live less than a
    poll are missed, and /proc's clock ticks round each process down. The cgroup has none of these
    gaps (every task charged, to the nanosecond).

    A failed read of the cgroup's counter does not freeze the count: that reading goes on from the
    last good one by what the poll has seen since (and is never less than the poll)."""

    def __init__(self, group: _Cgroup | None):
        self.group = group if group is not None and group.has_cpu else None
        self.root: tuple[int, float] | None = None   # the reaped main process: (pid, its CPU seconds)
        self.anchor = (0.0, 0.0)                     # (the cgroup's count, the poll's) at the last good read
        self.seconds = 0.0

    def reaped(self, pid: int, seconds: float) -> None:
        """The main process is gone: its CPU with its reaped descendants', from wait4."""
        self.root = (pid, seconds)

    def poll(self, tree: dict[int, int]) -> float:
        ticks = 0
        for pid, start in tree.items():
            if self.root is not None and pid == self.root[0]:
                continue
            counted = _cpu_ticks(pid, start)
            if counted is not None:
                ticks += counted
        return ticks / CLK_TCK + (self.root[1] if self.root is not None else 0.0)

    def read(self, tree: dict[int, int]) -> float:
        polled = self.poll(tree)
        now = polled
        if self.group:
            counted = self.group.cpu_seconds()
            if counted is not None:
                self.anchor = (counted, polled)
                now = max(counted, polled)
            else:                                    # not frozen: on by the poll's progress
                now = max(polled, self.anchor[0] + polled - self.anchor[1])
        self.seconds = max(self.seconds, now)
        return self.seconds


def _reap(proc: subprocess.Popen, meter: _CpuMeter, block: bool = False) -> bool:
    """Whether the main process has exited. We reap it ourselves, with wait4, so the meter gets
    the CPU it and its reaped descendants used, which /proc no longer shows once it is gone."""
    if proc.returncode is not None:
        return True
    try:
        pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:                        # reaped elsewhere: no usage to be had
        return (proc.wait() if block else proc.poll()) is not None
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    meter.reaped(pid, usage.ru_utime + usage.ru_stime)
    return True


def run_cpus(threads: int) -> list[int]:
    """The CPUs a run that may use `threads` of them gets: the first ones this process may use
    (all of them for 0, or for more than there are)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[:threads] if 0 < threads < len(allowed) else allowed


def _rss_bytes(pid: int) -> int:
    """Resident memory including shared memory (RssShmem: mmap(-1) MAP_SHARED, memfd, SysV).
    Shared pages mapped by several processes count once per process: an over-estimate, the safe
    side for a limit. Only used where no cgroup holds the limit."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
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


def _memfd_bytes(pids) -> int:
    """Memory held only through a file descriptor (a memfd written but not mapped is in no RSS)."""
    seen, total = set(), 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if not os.readlink(path).startswith("/memfd:"):
                    continue
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _polled_bytes(tree) -> int:
    """The poll's view of a tree's memory where no cgroup counts it: resident memory with shared
    memory, the private tmpfs, memfds. (SysV segments nobody maps are beyond it: a cgroup isn't.)"""
    return sum(_rss_bytes(p) for p in tree) + _tmpfs_bytes(tree) + _memfd_bytes(tree)


def _kill(pgid: int, known: dict[int, int], group: _Cgroup | None = None) -> None:
    """SIGKILL the process group, every process ever seen in the tree (if still the same) and
    everything in the run's cgroup (which holds orphans that left the tree, too)."""
    for _ in range(5):              # repeat: a process may fork while we kill
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        known.update(_tree(pgid))
        # the start time guards against a recycled pid; zombies only wait to be reaped
        alive = [pid for pid, start in known.items() if (st := _stat(pid)) and st[1] == start and st[2] != b"Z"]
        members = group.pids() if group else []
        for pid in alive + members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not alive and not members:
            return
        time.sleep(0.05)


def _terminate(pids) -> None:
    """The stop signal: SIGTERM to each untrusted process, never to bwrap's own (bwrap exits on
    SIGTERM and takes its child with it, which would make the stop a kill)."""
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "bwrap":
                    continue
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def _child_setup(max_file_mb: int, nproc: int | None, procs_files: list[str], cpus: list[int] | None = None,
                 nice: int = 0) -> None:
    # runs in the child before exec; bwrap and everything under it inherit all of this.
    # Into the run's cgroup first, so nothing untrusted ever runs outside it.
    for path in procs_files:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    # The CPUs it may use. Where the run's cgroup has a cpuset the kernel holds it to them;
    # elsewhere it could widen its affinity again (that needs no privilege), but under the cpu
    # clock every CPU second of the tree is charged, so a wider run only spends its budget sooner
    # (and slows a neighbour on another worker: the cpuset is what stops that).
    if cpus is not None and set(cpus) != os.sched_getaffinity(0):
        os.sched_setaffinity(0, cpus)
    # No RLIMIT_AS: CPU torch.compile peaks at ~1 GB virtual for 0.4 GB resident and CUDA
    # reserves far more address space than memory; the cgroup (or the poll) is the memory limit.
    _lower(resource.RLIMIT_FSIZE, max_file_mb << 20)
    # per uid on the whole host (every sandboxed run shares uid 65534): only where no pids
    # cgroup gives this run an exact limit of its own; root (level "none") is exempt anyway
    if nproc is not None:
        _lower(resource.RLIMIT_NPROC, nproc)
    _lower(resource.RLIMIT_CORE, 0)
    if nice:
        os.nice(nice)
        # and the idle class: it runs only on a CPU nothing else wants (the run it was started for)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # die with the controller even at level "none" (bwrap has --die-with-parent for its own)
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _lower(which: int, value: int) -> None:
    """Set a limit, never above the inherited hard one: raising it needs CAP_SYS_RESOURCE (the
    evaluator's worker wrapper inherits the evaluator's limits)."""
    hard = resource.getrlimit(which)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _nproc(max_processes: int, tasks: int, group: _Cgroup | None) -> int | None:
    # with a pids group its pids.max is the limit (counted in pids.events and reported); RLIMIT_NPROC
    # counts every process of the uid on the host, so concurrent runs would eat each other's share
    return None if group and group.has_pids else max_processes


PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


class _Marker:
    """Finds the first output line that starts with `prefix`, across chunk boundaries: `seconds` is
    when the chunk that completed it was read (None until then). It keeps only the head of the
    current line, so a long line costs nothing."""

    def __init__(self, prefix: bytes | None):
        self.prefix = prefix or b""
        self.head = b""             # the current line's first len(prefix) bytes
        self.seconds: float | None = None

    def feed(self, chunk: bytes, seconds: float) -> None:
        if not self.prefix or self.seconds is not None:
            return
        n = len(self.prefix)
        for i, piece in enumerate(chunk.split(b"\n")):
            if i:
                self.head = b""     # a newline: a new line begins
            if len(self.head) < n:
                self.head += piece[:n - len(self.head)]
                if self.head == self.prefix:
                    self.seconds = seconds
                    return


class _Log:
    """Streams output to a capped file and keeps the last TAIL_BYTES in memory."""

    def __init__(self, path: Path | None):
        # O_NOFOLLOW: the run dir is writable by the code, so never follow a link planted there
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        # unbuffered: what the run printed is on disk at once, for the operator's live tail
        self.file = os.fdopen(os.open(path, flags, 0o644), "wb", buffering=0) if path else None
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


def run(spec: SandboxSpec, level: str, on_start: Callable[[int], None] | None = None,
        on_stop: Callable[[], None] | None = None, stop_lead_s: float = 0.0) -> SandboxResult:
    """Run spec at level ("bubblewrap" or "none") to its end, or kill its tree at a limit.

    Level "none" applies env, cwd, rlimits, the cgroup, the limits and the kill, but not the
    file-system view, the uid or the network.

    The stop signal comes at spec.stop_after_s wall seconds or, on the cpu clock, once the tree's
    CPU seconds divided by its CPUs reach spec.stop_after_cpu_s, whichever is first; on_stop is
    called once (on this thread: it must return at once) stop_lead_s before the stop is due on
    the clock that stops it (counted seconds on the cpu clock), or right after the signal is sent
    if that comes first (0: at the signal).
    """
    global _bwrap_ok
    t0 = time.monotonic()           # the run's clock: the stop, the timeout and exit_seconds count from here
    stop_at = t0 + spec.stop_after_s if spec.stop_after_s is not None else None
    cpu_stop = spec.stop_after_cpu_s
    cpus = run_cpus(spec.cpu_threads)
    threads = len(cpus)
    told_env = {}
    if stop_at is not None and spec.stop_env:
        told_env[spec.stop_env] = f"{time.time() + spec.stop_after_s + STOP_LEAD_S:.3f}"
    if cpu_stop is not None and spec.cpu_env:
        told_env[spec.cpu_env] = f"{cpu_stop + STOP_LEAD_S:.3f}"
    if spec.threads_env:
        told_env[spec.threads_env] = str(threads)
    if told_env:
        spec = replace(spec, env={**spec.env, **told_env})
    if level == "bubblewrap":
        if not _bwrap_ok:
            problem = _probe_bwrap()
            if problem:
                raise SandboxUnavailable(problem)
            _bwrap_ok = True
        argv, cwd, env = bwrap_argv(spec), "/", {}
        _own_writable(spec)
        extra = BWRAP_TASKS
    elif level == "none":
        argv, cwd, env = list(spec.argv), str(spec.cwd), dict(spec.env)
        extra = 0
    else:
        raise ValueError(f"unknown sandbox level {level!r}: use 'bubblewrap' or 'none'")

    group = _make_cgroup(spec.memory_mb, spec.max_processes + extra, cpus=cpus)
    limits = group.kind if group else "poll"
    clock = "cpu" if cpu_stop is not None else "wall"
    log = _Log(spec.stdout_path)
    marker = _Marker(spec.marker)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=functools.partial(_child_setup, spec.max_file_mb,
                                                             _nproc(spec.max_processes, extra, group),
                                                             group.procs_files() if group else [], cpus, spec.nice))
    except (OSError, subprocess.SubprocessError) as e:
        if group:
            group.remove()
        log.write(f"[charter: could not start {argv[0]}: {e}]\n".encode())
        return SandboxResult(None, False, False, 0.0, 0.0, level, log.close(), "", limits=limits, clock=clock,
                             cpu_threads=threads, started_monotonic=t0)
    if on_start:
        on_start(proc.pid)
    try:
        pidfd = os.pidfd_open(proc.pid)             # wakes the loop the moment the main process exits
    except (AttributeError, OSError):
        pidfd = None

    fd = proc.stdout.fileno()
    known: dict[int, int] = {}      # every pid seen in the tree, to kill orphans later
    tree: dict[int, int] = {}       # the tree at the last poll
    meter = _CpuMeter(group)
    peak, reason, eof, last_poll, stopped, stopped_by, exited, used = 0, "", False, 0.0, False, "", None, 0.0
    stop_seconds = counted = None
    told_stop = on_stop is None     # on_stop has been called
    deadline = t0 + spec.timeout_s
    try:
        while True:
            wait = POLL_S
            if not stopped:                                  # wake for the stop on time, not a poll late
                lead = 0.0 if told_stop else stop_lead_s
                if stop_at is not None:
                    wait = min(wait, stop_at - lead - time.monotonic())
                if cpu_stop is not None:
                    # `threads` CPUs spend at most that many CPU seconds per second: the budget
                    # can't run out sooner than this
                    wait = min(wait, max(CPU_POLL_MIN_S, cpu_stop - lead - used / threads))
                wait = max(0.0, wait)
            waits = ([] if eof else [fd]) + ([pidfd] if pidfd is not None else [])
            ready = select.select(waits, [], [], wait)[0] if waits else time.sleep(wait) or []
            if fd in ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    log.write(chunk)
                    marker.feed(chunk, time.monotonic() - t0)
                else:
                    eof = True
            if _reap(proc, meter):
                exited = time.monotonic()
                break
            now = time.monotonic()
            if not stopped:
                if cpu_stop is not None:
                    used = meter.read(tree)
                if stop_at is not None and now >= stop_at:
                    stopped_by = "wall"
                elif cpu_stop is not None and used / threads >= cpu_stop:
                    stopped_by = "cpu"
                if stopped_by:
                    _terminate(set(_tree(proc.pid)) | set(group.pids() if group else []))
                    stopped = True
                    stop_seconds = now - t0
                    counted = used / threads if cpu_stop is not None else stop_seconds
                    if spec.stop_grace_s is not None:
                        deadline = min(deadline, now + spec.stop_grace_s)
                if not told_stop and (stopped or (stop_at is not None and now >= stop_at - stop_lead_s)
                                      or (cpu_stop is not None and used / threads >= cpu_stop - stop_lead_s)):
                    told_stop = True
                    on_stop()
            if now - last_poll < POLL_S:
                continue
            last_poll = now
            tree = _tree(proc.pid)
            known.update(tree)
            used = meter.read(tree)
            if group:
                peak = max(peak, group.usage_bytes())
                over_memory = group.oom_kills() > 0  # the kernel killed one of them at the limit
                over_tasks = group.pids_refused() > 0
            else:
                polled = _polled_bytes(tree)
                peak = max(peak, polled)
                over_memory, over_tasks = polled > spec.memory_mb << 20, False
            if now >= deadline:
                reason = "timeout"
            elif over_memory:
                reason = "memory"
            elif over_tasks or len(tree) - extra > spec.max_processes:   # bwrap's 2 don't count
                reason = "processes"
            if reason:
                break
    finally:
        ended = time.monotonic()    # before the kill and the drain: when the run itself ended
        meter.read(known)           # the poll's last look at what is still there
        # whatever happened, nothing we started outlives this call
        _kill(proc.pid, known, group)
        _reap(proc, meter, block=True)
        if pidfd is not None:
            os.close(pidfd)
        end = time.monotonic() + DRAIN_S
        while not eof and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 1 << 16)
                eof = not chunk
                log.write(chunk)
                marker.feed(chunk, time.monotonic() - t0)
        proc.stdout.close()
        cpu_seconds = meter.read(known)  # everything charged, to the kill: the cgroup's, the main process's
        if not stopped and (stop_at is not None or cpu_stop is not None):
            # no stop came: the run ended (its own exit, or a kill) inside its budget, all of it counted
            counted = cpu_seconds / threads if cpu_stop is not None else (exited if exited is not None else ended) - t0
        if group:
            # a limit the kernel enforced ends the run as surely as our kill: an OOM-killed
            # worker process or a refused fork is reported even when the main process then exited
            peak = max(peak, group.peak_bytes())
            if not reason and group.oom_kills():
                reason = "memory"
            elif not reason and group.pids_refused():
                reason = "processes"
            group.remove()
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
        limits=limits,
        stopped=stopped,
        exit_seconds=None if reason or exited is None else exited - t0,
        unprivileged=level == "bubblewrap",
        clock=clock,
        cpu_seconds=cpu_seconds,
        cpu_threads=threads,
        cpuset=bool(group and group.cpuset),
        stopped_by=stopped_by,
        started_monotonic=t0,
        marker_seconds=marker.seconds,
        stop_seconds=stop_seconds,
        counted_seconds=counted,
    )


# ---------------------------------------------------------------------------
# the evaluator worker's own limits: `python -I -S sandbox.py limit --memory-mb=N ... -- CMD...`

def _limit_main(argv: list[str]) -> int:
    """Trusted wrapper (root, started by the evaluator): runs CMD in its own cgroup nested in the
    caller's, with RLIMIT_FSIZE/NPROC and a wall-clock kill; exits with CMD's status."""
    try:
        split = argv.index("--")
        opts = dict(a.removeprefix("--").split("=", 1) for a in argv[:split])
        memory_mb, max_processes = int(opts["memory-mb"]), int(opts["max-processes"])
        tasks, max_file_mb, timeout_s = int(opts.get("tasks", 0)), int(opts["max-file-mb"]), float(opts["timeout-s"])
        cmd = argv[split + 1:]
    except (ValueError, KeyError) as e:
        print(f"[charter: sandbox.py limit: bad arguments: {e}]", file=sys.stderr)
        return 2
    if not cmd:
        print("[charter: sandbox.py limit: no command]", file=sys.stderr)
        return 2
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # die with the evaluator
    known: dict[int, int] = {}
    why = ""
    started: list[subprocess.Popen] = []
    stopping: list[int] = []

    def stop(*_):  # asked to stop (the evaluator closing it): kill the worker; the group is removed below
        stopping.append(1)
        if started:
            _kill(started[0].pid, known, group)
    group = None
    # before the group and the worker exist: a stop that comes at any moment still cleans up after them
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    group = None if opts.get("limits") == "poll" else _make_cgroup(memory_mb, max_processes + tasks, "worker")
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=functools.partial(
            _child_setup, max_file_mb, _nproc(max_processes, tasks, group), group.procs_files() if group else []))
    except (OSError, subprocess.SubprocessError) as e:
        if group:
            group.remove()
        print(f"[charter: could not start the model worker: {e}]", file=sys.stderr)
        return 127
    started.append(proc)
    if stopping:  # the stop came while it was starting
        _kill(proc.pid, known, group)
    # the worker holds the protocol pipes now; ours would keep the evaluator from seeing its EOF
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                rc = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            tree = _tree(proc.pid)
            known.update(tree)
            if time.monotonic() > deadline:
                why = f"ran past {timeout_s:g} s"
            elif group is None and _polled_bytes(tree) > memory_mb << 20:
                why = f"exceeded its memory limit of {memory_mb} MB"
            elif group is not None and (group.oom_kills() or group.pids_refused()):
                break                               # the kernel enforced it; reported below
            if why:
                break
    finally:
        _kill(proc.pid, known, group)
        rc = proc.wait()
    if group:
        if not why and group.oom_kills():
            why = f"exceeded its memory limit of {memory_mb} MB"
        elif not why and group.pids_refused():
            why = f"reached its limit of {max_processes} tasks"
        group.remove()
    if why:
        print(f"[charter: the model worker {why} and was killed]", file=sys.stderr)
        return 137
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    if sys.argv[1:2] == ["limit"]:
        sys.exit(_limit_main(sys.argv[2:]))
    sys.exit("usage: sandbox.py limit --memory-mb=N --max-processes=N --max-file-mb=N --timeout-s=S [--tasks=N] "
             "[--limits=poll] -- CMD...")
