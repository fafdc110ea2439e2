"""A survey from inside the two sandboxes the runner really builds for a real lab: the training
sandbox (Runner.train) and the evaluator's model worker (the EVAL_WORKER_PREFIX Runner.evaluate
builds). It walks the whole visible file system and tries everything; the test fails on anything
readable or listable outside the allow-list, on any socket or network it reaches, and unless it
runs as uid 65534 without capabilities.

The allow-list here is written out independently of the sandbox's own constants on purpose:
system libraries and tools, a few /etc entries, the interpreter, the lab, the run dir, and for
training the tokenizer, the train shards and the manifest; /tmp, /dev and /proc are private.
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller.execution import sandbox
from controller.execution.runner import Runner, verify_data
from lab_helpers import Listener
from controller.execution.sandbox import SandboxResult

pytestmark = pytest.mark.skipif(sandbox.detect_level()[0] != "bubblewrap", reason="bubblewrap does not work here")

SYSTEM = ["/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec",
          "/usr/include", "/usr/share/zoneinfo"] + \
         [f"/etc/{n}" for n in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group",
                                "localtime", "timezone", "alternatives")]
INTERPRETER = sorted({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix)})

SURVEY = r'''
import json, os, socket, stat, sys
CFG = json.loads(%r)
ALLOWED = CFG["allowed"]
SKIP = ("/proc", "/sys", "/dev")


def under(p, roots):
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)


def ancestor(p):          # a synthetic dir on the way to an allowed root
    return p == "/" or any(r.startswith(p.rstrip("/") + "/") for r in ALLOWED)


def readable(p):
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)   # never block on a FIFO
    except OSError:
        return False
    try:
        os.read(fd, 1)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


leaks, socks, counts = [], [], {"dirs": 0, "entries": 0}
for dirpath, dirnames, filenames in os.walk("/", followlinks=False):
    if dirpath != "/" and under(dirpath, SKIP):
        dirnames[:] = []
        continue
    counts["dirs"] += 1
    if not (under(os.path.realpath(dirpath), ALLOWED) or ancestor(dirpath)):
        leaks.append(["listable", dirpath])
    for name in filenames + dirnames:
        p = os.path.join(dirpath, name)
        if under(p, SKIP):
            continue
        counts["entries"] += 1
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue                                # walked itself
        if stat.S_ISSOCK(st.st_mode):
            socks.append(p)
            continue
        real = os.path.realpath(p)
        if under(real, ALLOWED) or under(real, SKIP):     # e.g. systemd units masked as /dev/null
            continue
        if os.path.isdir(p):                        # a link to a directory elsewhere
            try:
                os.listdir(p)
                if not ancestor(real):
                    leaks.append(["listable", p, real])
            except OSError:
                pass
        elif readable(p):
            leaks.append(["readable", p, real])

out = {"leaks": leaks[:200], "counts": counts, "sockets_seen": socks[:100]}
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
out["ids"] = [list(os.getresuid()), list(os.getresgid()), os.getgroups()]
out["caps"] = sorted({status[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")})
out["probes"] = {}
for p in CFG["unseen"] + CFG["seen"]:
    try:
        out["probes"][p] = ["listed", sorted(os.listdir(p))] if os.path.isdir(p) else ["read", len(open(p, "rb").read())]
    except OSError as e:
        out["probes"][p] = e.strerror
out["unix"] = {}
for p in CFG["sockets"] + socks:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(p)
        out["unix"][p] = "CONNECTED"
    except OSError as e:
        out["unix"][p] = e.strerror
    finally:
        s.close()
out["tcp"] = {}
for host, port in CFG["tcp"]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        out["tcp"][f"{host}:{port}"] = "CONNECTED"
    except OSError as e:
        out["tcp"][f"{host}:{port}"] = e.strerror
if CFG["out"]:
    with open(CFG["out"], "w") as f:
        json.dump(out, f)
else:
    print(json.dumps(out))
'''


@pytest.fixture
def other_copy():
    """A second copy of validation data in another cache in root's home (cleaned up after)."""
    root = Path("/root/.cache") / f"other-charter-{os.getpid()}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


def check(seen: dict, unseen: list[str], listeners: list[Listener]) -> None:
    assert seen["leaks"] == [], seen["leaks"]
    assert seen["counts"]["entries"] > 10_000          # it did walk the libraries, the interpreter...
    assert seen["ids"] == [[65534] * 3, [65534] * 3, []]
    assert seen["caps"] == ["0000000000000000"]
    for p in unseen:
        assert seen["probes"][p] in ("No such file or directory", "Permission denied"), (p, seen["probes"][p])
    assert seen["unix"] and not any(v == "CONNECTED" for v in seen["unix"].values()), seen["unix"]
    assert sum(l.accepted() for l in listeners) == 0
    assert seen["tcp"] and not any(v == "CONNECTED" for v in seen["tcp"].values()), seen["tcp"]


def test_survey_of_the_training_and_worker_sandboxes(make_lab, tmp_path, other_copy, corpus, monkeypatch):
    lab = make_lab(rules={"training_seconds = 60": "training_seconds = 300"})   # the walk is no training run
    rules = lab.load_constitution()
    data = verify_data(lab.root, rules)
    runner = Runner(lab.state_dir, rules, "bubblewrap")
    run_dir = lab.runs_dir / "survey" / "0001-1"
    val_dir = Path(data["val_dir"])
    elsewhere = tmp_path / "elsewhere" / "val"
    shutil.copytree(val_dir, elsewhere)
    shutil.copytree(val_dir, other_copy / "data" / "val")
    assert any(elsewhere.iterdir()) and any((other_copy / "data" / "val").iterdir())

    listeners = [Listener(lab.state_dir / "control.sock", 0o777),            # this lab's control socket
                 Listener(tmp_path / "other-lab.sock", 0o777),                # another lab's, outside the allow-list
                 Listener(Path("/tmp") / f"charter-survey-{os.getpid()}.sock", 0o777),   # the host's /tmp
                 Listener(other_copy / "agent.sock", 0o777)]                  # in root's home
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    tcp = [["127.0.0.1", server.getsockname()[1]], ["1.1.1.1", 53]]
    unseen = [str(val_dir), str(val_dir.parent), str(elsewhere), str(other_copy / "data" / "val"), str(corpus),
              str(lab.ledger_path), str(lab.state_dir / "control.sock"), str(tmp_path / "other-lab.sock"),
              "/etc/shadow", "/root", "/root/.cache", "/usr/share/doc", "/usr/share/doc/python3.11", "/work",
              "/home", "/run", "/var", "/opt", str(Path(data["cache_dir"]) / "inductor"), str(lab.runs_dir)]
    common = SYSTEM + INTERPRETER + [str(lab.root), str(run_dir)]
    try:
        # (a) training, exactly as Runner.train builds it: the survey is this lab's train.py
        train_cfg = dict(allowed=common + [data["tokenizer_dir"], data["train_dir"],
                                           str(Path(data["train_dir"]).parent / "manifest.json")],
                         unseen=unseen, seen=[data["tokenizer_dir"], data["train_dir"], str(lab.state_dir)],
                         sockets=[l.path for l in listeners], tcp=tcp, out=str(run_dir / "survey.json"))
        (lab.root / "train.py").write_text(SURVEY % json.dumps(train_cfg))
        t = runner.train(lab.root, run_dir, data)
        assert t.returncode == 0 and t.unprivileged and t.limits == sandbox.limits_mechanism(), t.log_tail
        seen = json.loads((run_dir / "survey.json").read_text())
        check(seen, unseen, listeners)
        assert seen["probes"][data["train_dir"]][0] == "listed" and seen["probes"][data["tokenizer_dir"]][0] == "listed"
        assert seen["probes"][str(lab.state_dir)] == ["listed", ["runs"]]      # only the way to its run dir

        # (b) the evaluator's model worker, with the prefix exactly as Runner.evaluate builds it
        captured = []

        def capture(spec, level, on_start=None):
            captured.append(spec)
            return SandboxResult(1, False, False, 0.0, 0.0, level, "")
        monkeypatch.setattr(sandbox, "run", capture)
        runner.evaluate(lab.root, run_dir, data)
        monkeypatch.undo()
        # nothing of the run either (its files come over the evaluator's pipe): the script lives in the lab
        prefix = shlex.split(captured[0].env["EVAL_WORKER_PREFIX"])
        worker_unseen = unseen + [data["tokenizer_dir"], data["train_dir"], str(run_dir)]
        worker_cfg = dict(allowed=SYSTEM + INTERPRETER + [str(lab.root)], unseen=worker_unseen,
                          seen=[str(lab.root)], sockets=[l.path for l in listeners], tcp=tcp, out="")
        (lab.root / "worker_survey.py").write_text(SURVEY % json.dumps(worker_cfg))
        r = subprocess.run(prefix + [sys.executable, str(lab.root / "worker_survey.py")], capture_output=True,
                           text=True, timeout=120, cwd=lab.root)
        assert r.returncode == 0, r.stderr[-2000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        check(seen, worker_unseen, listeners)
        assert seen["probes"][str(lab.root)][0] == "listed"
    finally:
        server.close()
        for l in listeners:
            l.close()
    assert os.listdir(val_dir), "the validation data exists outside the sandbox"
