"""The sandbox runner against real bubblewrap: tiny Python scripts try to escape their limits."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from controller.execution import sandbox
from lab_helpers import Listener
from controller.execution.sandbox import SandboxSpec, SandboxUnavailable, detect_level, minimal_env, run, worker_prefix

BWRAP = detect_level()[0] == "bubblewrap"
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work here")
LEVELS = [pytest.param("bubblewrap", marks=needs_bwrap), "none"]


@pytest.fixture
def lab(tmp_path):
    """A lab dir with a hidden ledger, a run dir inside that, and validation data visible but for hiding."""
    root = tmp_path / "lab"
    (root / ".charter" / "runs" / "r1").mkdir(parents=True)
    (root / ".charter" / "ledger.duckdb").write_text("ledger")
    (root / "train.py").write_text("print('hi')\n")
    data = root / "data"          # inside the lab: visible through the read-only lab bind
    (data / "val").mkdir(parents=True)
    (data / "val" / "shard0.bin").write_text("validation tokens")
    (data / "val.bin").write_text("validation tokens")
    return root


def make_spec(lab, code, *args, **kw):
    """A spec running `python script.py ARGS` in the lab, writing only to its run dir."""
    script = lab / f"script_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    run_dir = lab / ".charter" / "runs" / "r1"
    data = lab / "data"
    defaults = dict(argv=["python", str(script), *args], cwd=lab, writable=[run_dir],
                    hidden=[lab / ".charter", data / "val", data / "val.bin"], env=minimal_env(run_dir),
                    timeout_s=20, memory_mb=1000, max_processes=64, max_file_mb=50,
                    stdout_path=run_dir / "log.txt")
    defaults.update(kw)
    return SandboxSpec(**defaults)


def alive(marker):
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def test_detect_level_reports_bubblewrap():
    level, why = detect_level()
    assert level == "bubblewrap", why
    assert "works" in why


def test_bubblewrap_unavailable_raises(lab, monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_ok", False)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert detect_level()[0] == "none"
    with pytest.raises(SandboxUnavailable, match="not installed"):
        run(make_spec(lab, "print(1)"), "bubblewrap")
    with pytest.raises(ValueError):
        run(make_spec(lab, "print(1)"), "docker")


@pytest.mark.parametrize("level", LEVELS)
def test_runs_and_logs(lab, level):
    started = []
    spec = make_spec(lab, "import os; print('cwd', os.getcwd()); raise SystemExit(3)")
    result = run(spec, level, on_start=started.append)
    assert result.returncode == 3 and result.level == level
    assert not result.timed_out and not result.memory_killed
    assert f"cwd {lab}" in result.log_tail
    assert f"cwd {lab}" in spec.stdout_path.read_text()
    assert started and started[0] > 0


@pytest.mark.parametrize("level", LEVELS)
def test_timeout_kills_the_process(lab, level):
    marker = uuid.uuid4().hex
    started = []
    spec = make_spec(lab, "import time; print('up', flush=True); time.sleep(60); print('finished', flush=True)",
                     marker, timeout_s=1.5)
    result = run(spec, level, on_start=started.append)
    assert result.timed_out and result.returncode is None and result.kill_reason == "timeout"
    assert not result.memory_killed
    # it got going, then was stopped mid-sleep: the line after the sleep never ran
    assert "up" in result.log_tail and "up" in spec.stdout_path.read_text()
    assert "finished" not in result.log_tail and "finished" not in spec.stdout_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(started[0], 0)
    assert not alive(marker)


CHILD = """
import subprocess, sys, time
# a grandchild that detaches into its own session and would outlive us
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]], start_new_session=True)
time.sleep(float(sys.argv[2]))
"""


@needs_bwrap
@pytest.mark.parametrize("main_sleep", ["60", "0.3"])
def test_detached_grandchild_is_killed(lab, main_sleep):
    marker = uuid.uuid4().hex
    result = run(make_spec(lab, CHILD, marker, main_sleep, timeout_s=2), "bubblewrap")
    assert result.timed_out == (main_sleep == "60")
    assert not alive(marker)


def test_grandchild_is_killed_without_bwrap(lab):
    marker = uuid.uuid4().hex
    code = CHILD.replace(", start_new_session=True", "")   # level none kills its process group
    result = run(make_spec(lab, code, marker, "0.1"), "none")
    assert result.returncode == 0
    assert not alive(marker)


@needs_bwrap
def test_no_network(lab):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    code = """
    import socket, sys
    for host, port in [("127.0.0.1", int(sys.argv[1])), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
        try:
            socket.create_connection((host, port), timeout=3).close()
            print("REACHED", host)
        except OSError as e:
            print("blocked", host, e)
    """
    try:
        inside = run(make_spec(lab, code, str(port)), "bubblewrap")
        outside = run(make_spec(lab, code, str(port)), "none")   # proves the server is real
    finally:
        server.close()
    assert "REACHED" not in inside.log_tail
    assert "blocked 127.0.0.1" in inside.log_tail
    assert "REACHED 127.0.0.1" in outside.log_tail


@needs_bwrap
def test_hidden_data_and_ledger_are_invisible(lab):
    data = lab / "data"
    code = f"""
    import json, os
    out = {{}}
    try:   # a hidden file is /dev/null bound without device access: unreadable
        out["val_file"] = open({str(data / "val.bin")!r}).read()
    except OSError as e:
        out["val_file"] = e.strerror
    out["val_dir"] = os.listdir({str(data / "val")!r})
    out["charter"] = sorted(os.listdir({str(lab / ".charter")!r}))
    print(json.dumps(out))
    """
    result = run(make_spec(lab, code), "bubblewrap")
    assert result.returncode == 0, result.log_tail
    seen = json.loads(result.log_tail.strip().splitlines()[-1])
    assert seen == {"val_file": "Permission denied", "val_dir": [], "charter": ["runs"]}   # only the path to the run dir
    assert (data / "val.bin").read_text() == "validation tokens"           # but it is there
    assert (data / "val" / "shard0.bin").exists() and (lab / ".charter" / "ledger.duckdb").exists()


@needs_bwrap
def test_writes_only_to_the_run_dir(lab):
    outside_tmp = Path("/tmp") / f"charter-escape-{uuid.uuid4().hex}"
    run_dir = lab / ".charter" / "runs" / "r1"
    targets = [lab / "planted.py", outside_tmp, Path("/root") / f"charter-escape-{uuid.uuid4().hex}",
               lab / ".charter" / "planted", lab / "data" / "val" / "planted", Path("/etc/charter-escape")]
    code = f"""
    import sys
    for path in {[str(t) for t in targets]!r} + [{str(run_dir / "ok.txt")!r}, "/tmp/scratch"]:
        try:
            open(path, "w").write("x")
            print("WROTE", path)
        except OSError as e:
            print("denied", path, e.strerror)
    """
    result = run(make_spec(lab, code), "bubblewrap")
    assert result.returncode == 0, result.log_tail
    for t in targets:
        assert not t.exists()
        if t != outside_tmp:     # that one lands in the private /tmp, gone with the sandbox
            assert f"WROTE {t}\n" not in result.log_tail
    assert (run_dir / "ok.txt").read_text() == "x"
    assert "WROTE /tmp/scratch" in result.log_tail        # a private /tmp works


@needs_bwrap
def test_no_capabilities(lab):
    hidden = lab / "data" / "val"
    code = f"""
    import os
    print("caps", [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
    os.system("umount {hidden} 2>/dev/null")
    print("val", os.listdir({str(hidden)!r}))
    try:
        open("/proc/sys/kernel/hostname", "w").write("pwned")
        print("SYSCTL WRITTEN")
    except OSError as e:
        print("sysctl denied", e.strerror)
    """
    result = run(make_spec(lab, code), "bubblewrap")
    assert "caps 0000000000000000" in result.log_tail
    assert "val []" in result.log_tail
    assert "sysctl denied" in result.log_tail


@pytest.mark.parametrize("level", LEVELS)
def test_memory_limit_kills(lab, level):
    code = """
    import time
    hog = []
    for _ in range(60):
        hog.append(bytearray(50 << 20))   # 3 GB in steps of 50 MB
        time.sleep(0.05)
    print("SURVIVED")
    """
    result = run(make_spec(lab, code, memory_mb=300), level)
    assert result.memory_killed and result.kill_reason == "memory", result
    assert "SURVIVED" not in result.log_tail
    assert result.peak_rss_mb >= 0.9 * 300     # a cgroup stops it at the limit, a poll just past it


@needs_bwrap
def test_private_tmp_counts_as_memory(lab):
    code = """
    import time
    try:
        with open("/tmp/fill", "wb") as f:
            for _ in range(100):
                f.write(b"x" * (10 << 20))
                f.flush()
    except OSError as e:
        print("full", e)
    time.sleep(10)
    """
    result = run(make_spec(lab, code, memory_mb=200, max_file_mb=2000), "bubblewrap")
    assert result.memory_killed, result


@needs_bwrap
def test_process_limit(lab):
    code = """
    import subprocess, sys, time
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(12)]
    time.sleep(30)
    """
    result = run(make_spec(lab, code, max_processes=6), "bubblewrap")
    assert result.kill_reason == "processes" and result.returncode is None


@pytest.mark.parametrize("level", LEVELS)
def test_file_size_limit(lab, level):
    run_dir = lab / ".charter" / "runs" / "r1"
    code = f"""
    try:
        with open({str(run_dir / "big.bin")!r}, "wb") as f:
            f.write(b"x" * (3 << 20))
        print("WROTE BIG")
    except OSError as e:
        print("too big", e.strerror)
    """
    result = run(make_spec(lab, code, max_file_mb=1), level)
    assert "too big" in result.log_tail and "WROTE BIG" not in result.log_tail
    assert (run_dir / "big.bin").stat().st_size <= 1 << 20


@pytest.mark.parametrize("level", LEVELS)
def test_environment_is_cleared(lab, level, monkeypatch):
    monkeypatch.setenv("CHARTER_TEST_SECRET", "hunter2")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    result = run(make_spec(lab, code, env=minimal_env(lab, {"SEED": "7"})), level)
    env = json.loads(result.log_tail.strip().splitlines()[-1])
    assert "CHARTER_TEST_SECRET" not in env and "hunter2" not in result.log_tail
    assert env["SEED"] == "7" and env["HOME"] == str(lab)


def test_log_is_capped_and_tail_kept(lab, monkeypatch):
    monkeypatch.setattr(sandbox, "LOG_CAP_BYTES", 10_000)
    code = "for i in range(5000): print(f'line {i:05d}')"
    spec = make_spec(lab, code)
    result = run(spec, "none")
    text = spec.stdout_path.read_text()
    assert len(text) < 11_000 and "truncated" in text
    assert result.log_tail.rstrip().endswith("line 04999") and len(result.log_tail) <= sandbox.TAIL_BYTES


@needs_bwrap
def test_evaluator_worker_prefix_hides_validation_data(lab):
    """The evaluator runs trusted (level none) and reads val data; its worker, wrapped in bwrap, can't."""
    data = lab / "data"
    run_dir = lab / ".charter" / "runs" / "r1"
    (run_dir / "model.pt").write_text("weights")
    worker = make_spec(lab, f"""
    try:
        print('worker sees', repr(open({str(data / 'val.bin')!r}).read()))
    except OSError as e:
        print('worker denied', e.strerror)
    print('worker loads', open({str(run_dir / 'model.pt')!r}).read())
    try:
        open({str(run_dir / 'model.pt')!r}, 'w')
    except OSError as e:
        print('worker cannot write', e.strerror)
    """, writable=[], readable=[run_dir])   # the run dir, read-only inside the hidden .charter/
    evaluator = f"""
    import os, shlex, subprocess, sys
    print('evaluator sees', repr(open({str(data / 'val.bin')!r}).read()))
    subprocess.run(shlex.split(os.environ["EVAL_WORKER_PREFIX"]) + {worker.argv!r}, check=True)
    """
    env = minimal_env(run_dir, {"EVAL_WORKER_PREFIX": worker_prefix(worker)})
    result = run(make_spec(lab, evaluator, env=env, hidden=[]), "none")
    assert result.returncode == 0, result.log_tail
    assert "evaluator sees 'validation tokens'" in result.log_tail
    assert "worker denied Permission denied" in result.log_tail
    assert "worker loads weights" in result.log_tail
    assert "worker cannot write Read-only file system" in result.log_tail


@needs_bwrap
@pytest.mark.slow   # ~25 s on 2 shared cores
def test_torch_compile_inside(lab):
    run_dir = lab / ".charter" / "runs" / "r1"
    cache = lab.parent / "inductor-cache"
    cache.mkdir()
    code = """
    import torch
    f = torch.compile(lambda x: (x * 2).sin().sum())
    print("result", float(f(torch.ones(16))))
    """
    env = minimal_env(run_dir, {"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    result = run(make_spec(lab, code, writable=[run_dir, cache], env=env, timeout_s=120, memory_mb=4000,
                               max_file_mb=2000),   # cc1plus writes temporaries > 50 MB
                 "bubblewrap")
    assert result.returncode == 0, result.log_tail
    assert "result 14.54" in result.log_tail
    assert any(cache.iterdir())


# ---------------------------------------------------------------------------
# limits by cgroup (or the polling fallback), the stop signal, the unprivileged uid, the allow-list

MECHANISM = sandbox.limits_mechanism()      # "cgroup-v1" on the reference machine
needs_cgroup = pytest.mark.skipif(MECHANISM == "poll", reason="no cgroup can be created here")

# each touches 400 MB of memory that is in no process's RssAnon, under a 300 MB limit
SHARED = {
    "mmap": """
        import mmap
        m = mmap.mmap(-1, 400 << 20)           # shared anonymous memory
        for i in range(0, len(m), 4096):
            m[i] = 1
        """,
    "memfd": """
        import os
        fd = os.memfd_create("hog")            # written, never mapped: in no RSS at all
        for _ in range(40):
            os.write(fd, b"x" * (10 << 20))
        """,
    "dev-shm": """
        try:
            with open("/dev/shm/hog", "wb") as f:   # the private /dev/shm tmpfs
                for _ in range(40):
                    f.write(b"x" * (10 << 20))
                    f.flush()
        except OSError as e:
            print("full", e)
        """,
}
SHARED_CASES = [pytest.param(kind, level, mech, marks=[needs_bwrap] if level == "bubblewrap" else [],
                             id=f"{kind}-{level}-{mech}")
                for mech in ("cgroup", "poll") for level in ("bubblewrap", "none") for kind in SHARED
                if not (kind == "dev-shm" and level == "none")       # that would be the host's /dev/shm
                and not (mech == "poll" and kind != "mmap" and level == "none")]


@pytest.mark.parametrize("kind,level,mech", SHARED_CASES)
def test_shared_memory_counts_against_the_limit(lab, kind, level, mech, monkeypatch):
    if mech == "cgroup" and MECHANISM == "poll":
        pytest.skip("no cgroup can be created here")
    if mech == "poll":
        monkeypatch.setattr(sandbox, "CGROUPS", False)
    code = textwrap.dedent(SHARED[kind]) + "import time\nprint('SURVIVED', flush=True)\ntime.sleep(30)\n"
    result = run(make_spec(lab, code, memory_mb=300, max_file_mb=2000), level)
    assert result.limits == (MECHANISM if mech == "cgroup" else "poll")
    assert result.memory_killed and result.kill_reason == "memory" and result.returncode is None, result
    if mech == "cgroup":        # the kernel refuses the memory itself: it never gets past the touching
        assert "SURVIVED" not in result.log_tail


@needs_cgroup
@needs_bwrap
def test_each_run_gets_its_own_cgroup_and_it_is_removed(lab):
    code = "import os; print('cgroup', open('/proc/self/cgroup').read().replace(chr(10), ' '))"
    first = run(make_spec(lab, code), "bubblewrap")
    second = run(make_spec(lab, code, memory_mb=123), "none")
    assert first.limits == second.limits == MECHANISM
    assert "charter-" in second.log_tail            # level none: the host's view of its group
    kind, parents = sandbox._cgroup_parents()
    left = [d for parent in parents.values() for d in parent.glob(f"charter-{os.getpid()}-*")]
    assert left == []


STOPPABLE = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("level", LEVELS)
def test_stop_signal_lets_the_run_save_and_exit(lab, level):
    saved = lab / ".charter" / "runs" / "r1" / "saved"
    result = run(make_spec(lab, STOPPABLE, str(saved), stop_after_s=1.0, timeout_s=30), level)
    # bwrap itself was spared: had it got the SIGTERM it would have taken the run down unsaved
    assert result.stopped and result.returncode == 0 and not result.timed_out and result.kill_reason == ""
    assert saved.read_text() == "saved"
    assert result.exit_seconds is not None and 0 < result.exit_seconds <= result.wall_seconds


HONEST = """
import os, signal, sys, time
told = float(os.environ["STOP_AT"])         # unix seconds
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(time.time() < told))
while not stop and time.time() < told:      # trains until told, or until the signal
    time.sleep(0.01)
open(sys.argv[1], "w").write("saved")
"""


@pytest.mark.parametrize("level", LEVELS)
def test_a_run_told_when_to_stop_gets_the_signal_while_training(lab, level):
    saved = lab / ".charter" / "runs" / "r1" / "saved"
    result = run(make_spec(lab, HONEST, str(saved), stop_after_s=1.0, stop_env="STOP_AT", timeout_s=30), level)
    # it ends cleanly whichever came first for it, the signal or the time it was told
    assert result.returncode == 0 and result.stopped and saved.read_text() == "saved", result.log_tail


@pytest.mark.parametrize("level", LEVELS)
def test_a_run_that_ignores_the_stop_is_killed_at_the_timeout(lab, level):
    code = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("up", flush=True)
    while True:
        time.sleep(0.05)
    """
    result = run(make_spec(lab, code, stop_after_s=0.5, timeout_s=2), level)
    assert result.stopped and result.timed_out and result.returncode is None
    assert result.exit_seconds is None


@pytest.mark.parametrize("level", LEVELS)
def test_no_stop_without_stop_after(lab, level):
    result = run(make_spec(lab, "print('done')"), level)
    assert result.returncode == 0 and not result.stopped
    assert result.exit_seconds is not None
    assert result.unprivileged == (level == "bubblewrap")


@needs_bwrap
def test_runs_as_nobody_without_capabilities(lab):
    secret = lab / "root-only.txt"          # inside the readable lab, but root's alone
    secret.write_text("secret")
    secret.chmod(0o600)
    code = """
    import json, os, resource
    status = dict(l.split(":", 1) for l in open("/proc/self/status"))
    out = {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
           "caps": sorted({status[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}),
           "nnp": status["NoNewPrivs"].strip(), "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0]}
    for p in ["/etc/shadow", "/root", "/proc/1/root/", "/proc/1/environ", "root-only.txt"]:
        try:
            os.listdir(p) if os.path.isdir(p) else open(p).read(1)
            out[p] = "READ"
        except OSError as e:
            out[p] = e.strerror
    print(json.dumps(out))
    """
    # /etc/shadow is not in the allow-list at all; bound in here, the uid alone must refuse it
    result = run(make_spec(lab, code, readable=[Path("/etc/shadow")], max_processes=40), "bubblewrap")
    assert result.returncode == 0 and result.unprivileged, result.log_tail
    seen = json.loads(result.log_tail.strip().splitlines()[-1])
    assert seen["uid"] == [65534] * 3 and seen["gid"] == [65534] * 3 and seen["groups"] == []
    assert seen["caps"] == ["0000000000000000"] and seen["nnp"] == "1"
    if result.limits == "poll":  # with a pids cgroup, pids.max is the run's own limit instead
        assert 40 <= seen["nproc"] <= 40 + sandbox.BWRAP_TASKS + 1   # RLIMIT_NPROC applies to uid 65534
    for p in ["/etc/shadow", "/root", "/proc/1/root/", "/proc/1/environ", "root-only.txt"]:
        assert seen[p] == "Permission denied", (p, seen[p])
    assert os.stat(lab / ".charter" / "runs" / "r1").st_uid == 65534    # the run dir is the sandbox's


@needs_bwrap
def test_process_limit_applies_without_cgroups(lab, monkeypatch):
    monkeypatch.setattr(sandbox, "CGROUPS", False)
    code = """
    import subprocess, sys, time
    started = 0
    try:
        for _ in range(30):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
            started += 1
    except OSError as e:
        print("refused", e.strerror)
    print("started", started, flush=True)
    """
    result = run(make_spec(lab, code, max_processes=8, timeout_s=20), "bubblewrap")
    assert result.limits == "poll" and result.returncode == 0, result.log_tail
    # as uid 65534, RLIMIT_NPROC holds the run to 8 tasks (root was exempt from it)
    assert "refused Resource temporarily unavailable" in result.log_tail and "started 7\n" in result.log_tail


@needs_bwrap
def test_only_the_allow_list_is_there(lab, tmp_path):
    other = tmp_path / "other-cache" / "data" / "val"     # another copy of validation data
    other.mkdir(parents=True)
    (other / "shard_00000.parquet").write_text("validation")
    listeners = [Listener(tmp_path / "other-control.sock", 0o777),      # outside: not there at all
                 Listener(Path("/tmp") / f"charter-test-{uuid.uuid4().hex[:8]}.sock", 0o777),
                 Listener(lab / ".charter" / "control.sock"),             # masked with .charter/
                 Listener(lab / "in-the-lab.sock", 0o777)]                # in a shown tree: covered
    code = f"""
    import json, os, socket
    out = {{}}
    for p in {[l.path for l in listeners]!r}:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(p)
            out[p] = "CONNECTED"
        except OSError as e:
            out[p] = e.strerror
    for p in [{str(other)!r}, {str(tmp_path)!r}, "/usr/share/doc", "/usr/share", "/usr/local", "/work", "/home",
              "/opt", "/run", "/var", "/etc/hostname", "/etc/ssl", "/root/.cache", os.path.dirname(os.getcwd())]:
        try:
            out[p] = sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read(10)
        except OSError as e:
            out[p] = e.strerror
    out["/"] = sorted(os.listdir("/"))
    out["/etc"] = sorted(os.listdir("/etc"))
    print(json.dumps(out))
    """
    try:
        result = run(make_spec(lab, code), "bubblewrap")
        got = sum(l.accepted() for l in listeners)
    finally:
        for l in listeners:
            l.close()
    assert result.returncode == 0, result.log_tail
    seen = json.loads(result.log_tail.strip().splitlines()[-1])
    assert got == 0
    for l in listeners[:3]:
        assert seen[l.path] == "No such file or directory", (l.path, seen[l.path])
    assert seen[listeners[3].path] == "Connection refused"
    for p in [str(other), "/usr/share/doc", "/usr/local", "/home", "/opt", "/run", "/var", "/etc/hostname", "/etc/ssl"]:
        assert seen[p] == "No such file or directory", (p, seen[p])
    for p in [str(tmp_path), "/work", "/root/.cache", str(lab.parent)]:   # paths to binds: not listable
        assert seen[p] in ("Permission denied", "No such file or directory"), (p, seen[p])
    assert seen["/usr/share"] == ["zoneinfo"]
    # top level: the system dirs, plus the first component of each bound tree (lab, interpreter, checkout)
    bound_roots = {Path(p).resolve().parts[1] for p in (lab, tmp_path, sys.prefix, sys.base_prefix, __file__)}
    assert set(seen["/"]) <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc",
                              "tmp", "root", "sys"} | bound_roots
    assert set(seen["/etc"]) <= set(sandbox.ETC_ENTRIES) and "shadow" not in seen["/etc"]


WORKER_CASES = {
    # what the worker does: (code, the spec's limits, what the evaluator must see)
    "file-size": ("open('/tmp/big', 'wb').write(b'x' * (3 << 20))", dict(max_file_mb=1), "File too large"),
    "memory": (textwrap.dedent(SHARED["mmap"]) + "import time; print('SURVIVED'); time.sleep(30)", dict(memory_mb=300),
               "exceeded its memory limit of 300 MB"),
    "time": ("import time; time.sleep(60)", dict(timeout_s=1), "ran past 1 s"),
    "tasks": ("import subprocess, sys\n"
              "ps = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']) for _ in range(20)]",
              dict(max_processes=5), ("limit of 5 tasks", "Resource temporarily unavailable")),   # cgroup, RLIMIT_NPROC
}


@needs_bwrap
@pytest.mark.parametrize("mech", ["cgroup", "poll"])
def test_the_evaluator_worker_has_limits_of_its_own(lab, mech, monkeypatch):
    """The evaluator (trusted, level none, 2000 MB) starts each worker through its prefix: each
    worker meets its own spec's limits, and the evaluator lives on to report it."""
    if mech == "cgroup" and MECHANISM == "poll":
        pytest.skip("no cgroup can be created here")
    if mech == "poll":
        monkeypatch.setattr(sandbox, "CGROUPS", False)
    parents = sandbox._cgroup_parents()[1] if mech == "cgroup" else {}
    groups = lambda: {d for parent in parents.values() for d in parent.glob("**/worker-*")}
    before = groups()                        # another process's leftovers are not this test's
    env, workers = {}, {}
    for name, (code, limits, _) in WORKER_CASES.items():
        w = make_spec(lab, code, writable=[], **{"timeout_s": 20, "memory_mb": 1000, "max_processes": 64,
                                                 "max_file_mb": 50, **limits})
        env[f"PREFIX_{name.upper().replace('-', '_')}"] = worker_prefix(w)
        workers[name] = w.argv
    evaluator = f"""
    import os, shlex, subprocess
    for name, argv in {workers!r}.items():
        prefix = shlex.split(os.environ["PREFIX_" + name.upper().replace("-", "_")])
        r = subprocess.run(prefix + argv, capture_output=True, text=True)
        print(name, "->", r.returncode, (r.stderr.strip().splitlines() or [""])[-1], flush=True)
    print("evaluator alive")
    """
    result = run(make_spec(lab, evaluator, env=minimal_env(lab, env), hidden=[], memory_mb=2000, timeout_s=60), "none")
    assert result.returncode == 0 and "evaluator alive" in result.log_tail, result.log_tail
    lines = {l.split(" -> ")[0]: l for l in result.log_tail.splitlines() if " -> " in l}
    for name, (_, _, expected) in WORKER_CASES.items():
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert any(e in lines[name] for e in expected) and f"{name} -> 0 " not in lines[name], lines[name]
    if mech == "poll":
        return
    assert groups() - before == set()


@needs_bwrap
def test_a_closed_worker_leaves_no_cgroup_behind(lab, monkeypatch):
    """The evaluator closes a live worker: its trusted wrapper is asked to stop, kills the worker
    and removes the worker's own cgroup (SIGKILLed, the wrapper could not: CI found one left)."""
    if MECHANISM == "poll":
        pytest.skip("no cgroup can be created here")
    from trainer import prepare
    spec = make_spec(lab, "", writable=[], readable=[Path(prepare.__file__).parent])
    monkeypatch.setenv("EVAL_WORKER_PREFIX", worker_prefix(spec))
    worker = prepare._Worker("model worker")
    _, parents = sandbox._cgroup_parents()
    mine = lambda: [d for p in parents.values() for d in p.glob(f"worker-{worker.proc.pid}-*")]
    try:
        for _ in range(200):                     # the wrapper makes the group, then starts bwrap in it
            if any((d / "cgroup.procs").read_text().split() for d in mine()):
                break
            time.sleep(0.05)
        assert mine(), "the worker never got a cgroup of its own"
        assert worker.proc.poll() is None, worker.stderr_tail()
    finally:
        worker.close()
    assert mine() == []
