"""The harm test: hostile edits are refused by the right rule with evidence, benign edits pass."""

import ast
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constitution
from controller.policy import harm_test as harm_test_module
from controller.policy.harm_test import Change, Refusal, diff_line_count, harm_test

SCOPE = constitution.load_default().scope
ALL_RULES = list(SCOPE.forbidden)

# a small stand-in for trainer/train.py with the constructs the real one has
BASE = '''"""A tiny training script."""
import os
import time
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LEARNING_RATE = 3e-3
DEPTH = 2


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x)


def load_flash_attention():
    try:
        from kernels import get_kernel
        return get_kernel("kernels-community/flash-attn3", version=1).flash_attn_func
    except Exception:
        return None


def main():
    from prepare import TIME_BUDGET, MAX_SEQ_LEN, make_dataloader
    run_dir = os.environ.get("RUN_DIR", "run")
    os.makedirs(run_dir, exist_ok=True)
    model = MLP(MAX_SEQ_LEN)
    t0 = time.time()
    sd = model.state_dict()
    torch.save(sd, os.path.join(run_dir, "model.pt"))
    with open(os.path.join(run_dir, "stats.json"), "w") as f:
        f.write("{}")


if __name__ == "__main__":
    main()
'''


def judge(added: str, scope=SCOPE, old: str = BASE) -> list[Refusal]:
    """Refusals for BASE with `added` appended (inside main() when indented)."""
    return harm_test([Change("train.py", "M", old, old.replace('\n\nif __name__', added + '\n\nif __name__'))], scope)


def in_main(code: str) -> str:
    return "\n" + "\n".join("    " + line for line in code.strip("\n").splitlines())


def top(code: str) -> str:
    return "\n\n" + code.strip("\n")


HOSTILE = [
    # network
    ("import socket", top("import socket\ns = socket.socket()"), "network", "import socket"),
    ("urllib", in_main("import urllib.request\nurllib.request.urlopen('http://x')"), "network", "urllib"),
    ("requests alias", top("import requests as r\nr.get('http://evil')"), "network", "requests"),
    ("from http", top("from http.client import HTTPConnection"), "network", "http.client"),
    ("torch.hub", in_main("m = torch.hub.load('a/b', 'c')"), "network", "torch.hub.load"),
    ("asyncio conn", top("import asyncio\nasyncio.open_connection('h', 80)"), "network", "open_connection"),
    ("logging.handlers alias", top("import logging.handlers as lh\nlh.SocketHandler('h', 9020)"), "network",
     "logging.handlers"),
    ("event loop connection", in_main("import asyncio\nasyncio.new_event_loop().create_connection(None, 'h', 1)"),
     "network", "create_connection"),
    ("distributed rendezvous", in_main("torch.distributed.init_process_group('gloo', init_method='tcp://h:1')"),
     "network", "init_process_group"),
    ("new kernel download", in_main("from kernels import get_kernel\nk = get_kernel('evil/kernel')"),
     "network", "get_kernel('evil/kernel')"),
    # subprocess
    ("subprocess", top("import subprocess\nsubprocess.run(['ls'])"), "subprocess", "subprocess"),
    ("subprocess alias", top("import subprocess as sp\nsp.check_output('id')"), "subprocess", "sp.check_output"),
    ("os.system", in_main("os.system('rm -rf /')"), "subprocess", "os.system('rm -rf /')"),
    ("from os import system as s", top("from os import system as s\ns('id')"), "subprocess", "system"),
    ("os.popen via alias var", in_main("p = os.popen\np('id')"), "subprocess", "os.popen"),
    ("os.execv", in_main("os.execv('/bin/sh', ['sh'])"), "subprocess", "os.execv"),
    ("ctypes", top("import ctypes\nctypes.CDLL(None).system(b'id')"), "subprocess", "ctypes"),
    ("multiprocessing", top("from multiprocessing import Process"), "subprocess", "multiprocessing"),
    ("os.kill", in_main("os.kill(1, 9)"), "subprocess", "os.kill"),
    ("getattr __import__", in_main("getattr(__import__('o'+'s'),'system')('id')"), "subprocess", "getattr"),
    # dynamic import
    ("dunder import", in_main("m = __import__('o' + 's')"), "dynamic_import", "__import__"),
    ("importlib", top("import importlib\nm = importlib.import_module('socket')"), "dynamic_import", "importlib"),
    ("exec base64", top("import base64\nexec(base64.b64decode('cHJpbnQoMSk='))"), "dynamic_import", "exec("),
    ("eval", in_main("x = eval('1+1')"), "dynamic_import", "eval('1+1')"),
    ("compile builtin", in_main("c = compile('1', 'f', 'eval')"), "dynamic_import", "compile('1'"),
    ("getattr builtins", in_main("getattr(__builtins__, 'ex' + 'ec')('1')"), "dynamic_import", "__builtins__"),
    ("globals write", in_main("globals()['LEARNING_RATE'] = 1"), "dynamic_import", "globals()"),
    ("sys.modules write", top("import sys\nsys.modules['prepare'] = object()"), "dynamic_import", "sys.modules"),
    ("pickle loads", top("import pickle\nobj = pickle.loads(b'x')"), "dynamic_import", "pickle.loads"),
    ("builtins.exec alias", top("import builtins as b\nb.exec('1')"), "dynamic_import", "b.exec"),
    ("subclasses escape", in_main("x = ().__class__.__base__.__subclasses__()"), "dynamic_import", "__subclasses__"),
    ("getattr computed", in_main("name = input()\ngetattr(os, name)('id')"), "dynamic_import", "getattr(os, name)"),
    ("getattr formatted", in_main("getattr(os, f'{x}')('id')"), "dynamic_import", "getattr(os, f'{x}')"),
    ("module handed around", in_main("m = [os][0]\nm.system('id')"), "dynamic_import", "os"),
    ("sys.path hijack", top("import sys\nsys.path.insert(0, '/tmp')"), "dynamic_import", "sys.path"),
    # file writes
    ("open /tmp w", in_main("open('/tmp/x', 'w').write('hi')"), "file_write", "open('/tmp/x', 'w')"),
    ("open append relative", in_main("f = open('prepare.py', 'a')"), "file_write", "open('prepare.py', 'a')"),
    ("open mode kw", in_main("f = open('notes.txt', mode='r+')"), "file_write", "open('notes.txt'"),
    ("open escape run dir", in_main("open(os.path.join(run_dir, '..', 'train.py'), 'w')"), "file_write", "'..'"),
    ("run_dir rebound", in_main("run_dir = '/etc'\nopen(os.path.join(run_dir, 'x'), 'w')"), "file_write", "open("),
    ("Path.write_text", top("from pathlib import Path\nPath('train.py').write_text('x')"), "file_write", "write_text"),
    ("os.remove", in_main("os.remove('prepare.py')"), "file_write", "os.remove('prepare.py')"),
    ("shutil.rmtree", top("import shutil\nshutil.rmtree('/home')"), "file_write", "shutil.rmtree"),
    ("torch.save outside", in_main("torch.save(sd, '/tmp/model.pt')"), "file_write", "torch.save(sd, '/tmp/model.pt')"),
    ("np.save outside", top("import numpy as np\nnp.save('x.npy', 1)"), "file_write", "np.save"),
    ("os.symlink", in_main("os.symlink('/etc', os.path.join(run_dir, 'e'))"), "file_write", "os.symlink"),
    ("importable file in run dir", in_main("open(os.path.join(run_dir, 'torch.py'), 'w')"), "file_write", "torch.py"),
    ("RUN_DIR then dotdot", in_main("torch.save(sd, os.path.join(os.environ['RUN_DIR'], '..', '..', 'cc', 'x'))"),
     "file_write", "torch.save"),
    ("run dir reassigned", in_main("p = run_dir\np = '/root/.cache'\nopen(p, 'w')"), "file_write", "open(p, 'w')"),
    ("shutil alias", top("from shutil import copyfile as cp\ncp('a', '/tmp/b')"), "file_write", "cp('a'"),
    ("tarfile", top("import tarfile\ntarfile.open('/tmp/x.tar', 'w')"), "file_write", "tarfile.open"),
    ("Path.rename out", in_main("from pathlib import Path\nPath(run_dir, 'a').rename('/tmp/a')"), "file_write",
     "rename"),
    # data access
    ("pq.read_table", top("import pyarrow.parquet as pq\nt = pq.read_table('x')"), "data_access", "pyarrow.parquet"),
    ("pandas parquet", top("import pandas as pd\ndf = pd.read_parquet('shard.parquet')"), "data_access", "read_parquet"),
    ("val path", in_main("p = os.path.join('data', 'val')"), "data_access", "'val'"),
    ("cache dir", in_main("p = os.path.expanduser('~/.cache/charter/data/train')"), "data_access", ".cache/charter"),
    ("manifest", in_main("p = 'manifest.json'"), "data_access", "manifest.json"),
    ("from prepare import evaluate_bpb", top("from prepare import evaluate_bpb"), "data_access", "evaluate_bpb"),
    ("from prepare import VAL_DIR", in_main("from prepare import VAL_DIR"), "data_access", "VAL_DIR"),
    ("prepare star", top("from prepare import *"), "data_access", "import *"),
    ("folded val", in_main("split = 'va' + 'l'"), "data_access", "'va' + 'l'"),
    ("walk the home directory", in_main("for d, _, fs in os.walk(os.path.expanduser('~')):\n    pass"),
     "data_access", "os.walk"),
    ("numpy load", top("import numpy as np\na = np.load('/root/x.npy')"), "data_access", "np.load"),
    ("parent environ", in_main("e = open(f'/proc/{os.getppid()}/environ').read()"), "data_access", "/proc/"),
    ("duckdb", top("import duckdb\nduckdb.query('select 1')"), "data_access", "duckdb"),
    # timing
    ("time.time patched", top("time.time = lambda: 0"), "timing", "time.time = lambda: 0"),
    ("setattr time", top("setattr(time, 'perf_counter', lambda: 0)"), "timing", "setattr(time"),
    ("signal alarm", top("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)"), "timing", "signal.signal"),
    ("settrace", top("import sys\nsys.settrace(None)"), "timing", "sys.settrace"),
    ("prepare budget", top("import prepare\nprepare.TIME_BUDGET = 10**9"), "timing", "prepare.TIME_BUDGET"),
    ("rebind TIME_BUDGET", in_main("TIME_BUDGET = 10**9"), "timing", "TIME_BUDGET = 10**9"),
    ("from time import alias", top("from time import perf_counter as pc\npc = lambda: 0"), "timing", "pc = lambda"),
    # evaluation
    ("F.cross_entropy", top("F.cross_entropy = lambda *a, **k: torch.tensor(0.0)"), "evaluation", "F.cross_entropy ="),
    ("torch.nn.functional", top("torch.nn.functional.cross_entropy = None"), "evaluation", "cross_entropy"),
    ("setattr torch", top("setattr(torch, 'tanh', torch.sigmoid)"), "evaluation", "setattr(torch"),
    ("builtins print", top("import builtins\nbuiltins.print = lambda *a: None"), "evaluation", "builtins.print"),
    ("fake metric", in_main("print(f\"val_bpb: {0.5:.4f}\")"), "evaluation", "val_bpb"),
    ("fake metric concat", in_main("print('val_' + 'bpb: 0.9')"), "evaluation", "print("),
    ("call prepare.evaluate", top("import prepare\nprepare.evaluate('run')"), "evaluation", "prepare.evaluate"),
    ("def evaluate_bpb", top("def evaluate_bpb(model):\n    return 0.0"), "evaluation", "evaluate_bpb"),
    ("dunder setattr", top("F.__setattr__('cross_entropy', None)"), "dynamic_import", "__setattr__"),
    ("run dir redirected", in_main("os.environ['RUN_DIR'] = '/tmp'"), "file_write", "RUN_DIR"),
    ("patch nn.Module", top("nn.Module.__call__ = lambda self, *a: None"), "evaluation", "nn.Module.__call__"),
]


@pytest.mark.parametrize("added, rule, evidence", [row[1:] for row in HOSTILE], ids=[row[0] for row in HOSTILE])
def test_hostile_edit_is_refused_by_the_right_rule(added, rule, evidence):
    refusals = judge(added)
    matching = [r for r in refusals if r.rule == rule]
    assert matching, f"expected a {rule} refusal, got {refusals}"
    assert any(evidence in r.evidence for r in matching), matching
    assert all(r.path == "train.py" for r in refusals)
    assert any(r.line and r.line > 40 for r in matching)  # the added lines are after BASE's 40
    assert all(len(r.evidence) <= 120 for r in refusals)


def test_hostile_table_covers_every_forbidden_rule():
    assert len(HOSTILE) >= 30
    assert {row[2] for row in HOSTILE} == set(ALL_RULES)


# ---- paths and content ------------------------------------------------------------------------

def test_new_file_outside_scope():
    [r] = harm_test([Change("helper.py", "A", None, "x = 1\n")], SCOPE)
    assert (r.rule, r.path) == ("scope", "helper.py") and "not editable" in r.evidence


def test_deleting_prepare_is_refused():
    [r] = harm_test([Change("prepare.py", "D", "x = 1\n", None)], SCOPE)
    assert r.rule == "scope" and r.path == "prepare.py"


def test_rename_out_of_scope_is_refused():
    rename = [Change("train.py", "D", BASE, None), Change("models/train.py", "A", None, BASE)]
    refusals = harm_test(rename, SCOPE)
    assert [(r.rule, r.path) for r in refusals] == [("scope", "models/train.py")]


@pytest.mark.parametrize("path", ["../train.py", "/work/train.py", ".git/config", ".charter/state",
                                  "train.py/../prepare.py", "C:\\x.py", ""])
def test_bad_paths_always_refused(path):
    wide = SCOPE.model_copy(update={"editable": ["."]})
    refusals = harm_test([Change(path, "A", None, "x = 1\n")], wide)
    assert [r.rule for r in refusals] == ["scope"]


def test_directory_entry_allows_files_inside_it():
    scope = SCOPE.model_copy(update={"editable": ["train.py", "models"]})
    assert harm_test([Change("models/block.py", "A", None, "X = 1\n")], scope) == []
    assert harm_test([Change("modelsx.py", "A", None, "X = 1\n")], scope)[0].rule == "scope"


def test_new_root_file_shadowing_a_module_is_refused():
    wide = SCOPE.model_copy(update={"editable": ["."]})
    [r] = harm_test([Change("json.py", "A", None, "X = 1\n")], wide)
    assert r.rule == "scope" and "shadow" in r.evidence


def test_symlink_refused_even_in_scope():
    refusals = harm_test([Change("train.py", "M", BASE, "prepare.py", is_symlink=True)], SCOPE)
    assert [r.rule for r in refusals] == ["symlink"]


def test_mode_change_refused():
    refusals = harm_test([Change("train.py", "M", BASE, BASE, mode_change=True)], SCOPE)
    assert [r.rule for r in refusals] == ["scope"] and "mode" in refusals[0].evidence


def test_binary_and_non_utf8_refused():
    assert harm_test([Change("train.py", "M", BASE, None)], SCOPE)[0].rule == "binary"
    assert harm_test([Change("train.py", "M", BASE, "x = 1\x00\n")], SCOPE)[0].rule == "binary"
    undecodable = b"x = '\xff\xfe'\n".decode("utf-8", "surrogateescape")
    assert harm_test([Change("train.py", "M", BASE, undecodable)], SCOPE)[0].rule == "binary"


def test_syntax_error_refused_with_line():
    [r] = harm_test([Change("train.py", "M", BASE, BASE + "\ndef broken(:\n")], SCOPE)
    assert r.rule == "syntax" and r.line == BASE.count("\n") + 2


def test_source_encoding_trick_refused():
    text = "# -*- coding: utf-7 -*-\nx = 1 #+AAo-import os\n"
    [r] = harm_test([Change("train.py", "M", BASE, text)], SCOPE)
    assert r.rule == "syntax" and "utf-7" in r.evidence


def test_deep_nesting_and_weird_input_are_judged():
    deep = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
    long_chain = "x = " + " + ".join(["1"] * 20000) + "\n"
    for text in (deep, long_chain):  # more than the parser can take: refused as syntax, not passed
        refusals = harm_test([Change("train.py", "M", BASE, text)], SCOPE)
        assert [(r.rule, r.path) for r in refusals] == [("syntax", "train.py")], refusals
    for text in ("", "\ufeffx = 1\n", "\r\n\r\n", "\f"):  # odd but valid Python with nothing forbidden
        assert harm_test([Change("train.py", "M", BASE, text)], SCOPE) == [], repr(text)


class _UnreadableStr(str):
    """A path that raises when searched: stands in for any input the checks themselves choke on."""

    def __contains__(self, item):
        raise RuntimeError("cannot be read")


def test_input_that_breaks_the_checks_is_refused_not_passed():
    path = _UnreadableStr("train.py")
    assert [(r.rule, r.path, r.evidence) for r in harm_test([Change(path, "M", BASE, BASE)], SCOPE)] == \
        [("syntax", "train.py", "cannot be judged (RuntimeError)")]


def test_internal_error_in_the_analysis_is_refused_not_passed(monkeypatch):
    benign = [Change("train.py", "M", BASE, BASE.replace("DEPTH = 2", "DEPTH = 3"))]
    assert harm_test(benign, SCOPE) == []

    def broken(self):
        raise ValueError("analyzer bug")

    monkeypatch.setattr(harm_test_module._Analyzer, "run", broken)
    refusals = harm_test(benign, SCOPE)
    assert [(r.rule, r.path, r.evidence) for r in refusals] == [("syntax", "train.py", "cannot be judged (ValueError)")]


def test_diff_that_cannot_be_measured_is_refused_not_passed():
    # old text that is not text at all: the diff size cannot be counted, so the size limit cannot be checked
    refusals = harm_test([Change("train.py", "M", 7, "x = 1\n")], SCOPE)
    assert [(r.rule, r.evidence) for r in refusals] == [("diff_size", "diff cannot be measured (AttributeError)")]


def test_oversize_diff_refused():
    added = "".join(f"X{i} = {i}\n" for i in range(SCOPE.max_diff_lines + 1))
    refusals = harm_test([Change("train.py", "M", BASE, BASE + added)], SCOPE)
    assert [r.rule for r in refusals] == ["diff_size"]
    assert str(SCOPE.max_diff_lines + 1) in refusals[0].evidence


def test_diff_line_count_counts_added_and_removed():
    assert diff_line_count([Change("a", "M", "a\nb\nc\n", "a\nB\nc\nd\n")]) == 3
    assert diff_line_count([Change("a", "A", None, "1\n2\n"), Change("b", "D", "x\n", None)]) == 3


# ---- benign edits pass ------------------------------------------------------------------------

BENIGN = [
    ("hyperparameter", lambda b: b.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 6e-3")),
    ("new layer class", lambda b: b.replace("\n\ndef load_flash", '''

class SwiGLU(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.w = nn.Linear(dim, 2 * dim)

    def forward(self, x):
        a, b = self.w(x).chunk(2, dim=-1)
        return F.silu(a) * b


def load_flash''')),
    ("torch.compile", lambda b: b.replace("    t0 = time.time()", "    model = torch.compile(model)\n    model.eval()\n    t0 = time.time()")),
    ("save to RUN_DIR", lambda b: b.replace("    t0 = time.time()",
                                            "    RUN_DIR = os.environ['RUN_DIR']\n"
                                            "    torch.save(sd, os.path.join(RUN_DIR, 'model.pt'))\n"
                                            "    t0 = time.time()")),
    ("tuning switches", lambda b: b.replace("    t0 = time.time()",
                                            "    torch.backends.cuda.matmul.allow_tf32 = True\n"
                                            "    torch._dynamo.config.cache_size_limit = 64\n"
                                            "    t0 = time.time()")),
    ("read-only open and str.replace", lambda b: b.replace("    t0 = time.time()",
                                                            "    text = open('/proc/cpuinfo').read().replace('a', 'b')\n"
                                                            "    dt = time.time() - time.perf_counter()\n"
                                                            "    t0 = time.time()")),
    ("f-string into the run dir", lambda b: b.replace("    t0 = time.time()",
                                                      "    open(f'{run_dir}/log.txt', 'a').write('x')\n"
                                                      "    torch.save(sd, run_dir + '/ckpt.pt')\n"
                                                      "    t0 = time.time()")),
    ("run dir through another name", lambda b: b.replace("    t0 = time.time()",
                                                          "    out = os.environ['RUN_DIR']\n"
                                                          "    path = os.path.join(out, 'extra.json')\n"
                                                          "    with open(path, 'w') as g:\n"
                                                          "        g.write('{}')\n"
                                                          "    t0 = time.time()")),
    ("local variable named like a module", lambda b: b.replace("    t0 = time.time()",
                                                                "    code = 3\n    datasets = [code]\n    t0 = time.time()")),
    ("save through os.environ directly", lambda b: b.replace(
        "    t0 = time.time()", "    torch.save(sd, os.path.join(os.environ['RUN_DIR'], 'model.pt'))\n    t0 = time.time()")),
    ("harmless os use", lambda b: b.replace("    t0 = time.time()", "    here = os.getcwd()\n    t0 = time.time()")),
    ("checkpoints in a subdirectory", lambda b: b.replace("    t0 = time.time()",
                                                           "    ckpt = os.path.join(run_dir, 'ckpt')\n"
                                                           "    os.makedirs(ckpt, exist_ok=True)\n"
                                                           "    for i in range(2):\n"
                                                           "        torch.save(sd, os.path.join(ckpt, f'{i:03d}.pt'))\n"
                                                           "    t0 = time.time()")),
    ("train batches from prepare", lambda b: b.replace("    t0 = time.time()",
                                                        "    loader = make_dataloader(8, MAX_SEQ_LEN)\n"
                                                        "    x, y = next(loader)\n    t0 = time.time()")),
]


@pytest.mark.parametrize("edit", [row[1] for row in BENIGN], ids=[row[0] for row in BENIGN])
def test_benign_edit_passes(edit):
    new = edit(BASE)
    assert new != BASE
    assert harm_test([Change("train.py", "M", BASE, new)], SCOPE) == []


def test_existing_kernels_download_kept_unchanged_passes_but_a_second_one_is_refused():
    assert harm_test([Change("train.py", "M", BASE, BASE.replace("DEPTH = 2", "DEPTH = 3"))], SCOPE) == []
    refusals = judge(in_main("k = get_kernel('kernels-community/flash-attn3', version=1)"))
    assert [r.rule for r in refusals] == ["network"]


def test_real_trainer_hyperparameter_edit_passes():
    path = Path(__file__).resolve().parents[2] / "trainer" / "train.py"
    if not path.exists():
        pytest.skip("trainer/train.py not written yet")
    base = path.read_text()
    new = base.replace("DEPTH = 2 ", "DEPTH = 3 ", 1)
    assert new != base or "DEPTH" not in base
    assert harm_test([Change("train.py", "M", base, new)], SCOPE) == []


# ---- scope of rules and hard constraints ------------------------------------------------------

def test_rule_not_in_forbidden_is_not_applied():
    without_network = SCOPE.model_copy(update={"forbidden": [r for r in ALL_RULES if r != "network"]})
    assert judge(top("import socket"), scope=without_network) == []
    assert [r.rule for r in judge(top("import socket"))] == ["network"]
    nothing = SCOPE.model_copy(update={"forbidden": []})
    assert judge(in_main("os.system('id')"), scope=nothing) == []


def test_hard_constraint_refuses_with_hard_true():
    refusals = judge(top("import prepare\nx = prepare.evaluate"))
    hard = [r for r in refusals if r.hard]
    assert [r.rule for r in hard] == ["hard_constraint:no-eval-in-train"]
    assert "prepare.evaluate" in hard[0].evidence and hard[0].line > 40
    assert all(not r.hard for r in refusals if not r.rule.startswith("hard_constraint"))


def test_hard_constraint_already_matching_old_text_same_count_passes():
    old = BASE + "\n# note: prepare.evaluate is the trusted evaluator\n"
    new = old.replace("DEPTH = 2", "DEPTH = 3")
    assert harm_test([Change("train.py", "M", old, new)], SCOPE) == []
    assert harm_test([Change("train.py", "M", old, new + "# prepare.evaluate again\n")], SCOPE)[0].hard


def test_custom_hard_constraint_applies_to_any_editable_file():
    from constitution.schema import HardConstraint
    scope = SCOPE.model_copy(update={
        "editable": ["train.py", "notes.md"],
        "hard_constraints": [HardConstraint(name="no-cuda-graphs", pattern=r"CUDAGraph")]})
    [r] = harm_test([Change("notes.md", "A", None, "try\ntorch.cuda.CUDAGraph\n")], scope)
    assert (r.rule, r.line, r.hard) == ("hard_constraint:no-cuda-graphs", 2, True)


def test_one_refusal_per_rule_and_line():
    refusals = judge(in_main("os.system('a'); os.system('b')"))
    assert len([r for r in refusals if r.rule == "subprocess"]) == 1


# ---- random input: judged, and passed only where a pass is right --------------------------------

CODING_COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")  # PEP 263


def parses(text: str) -> bool:
    try:
        ast.parse(text.removeprefix("\ufeff"))
    except Exception:
        return False
    return True


def foreign_cookie(text: str) -> bool:
    """A PEP 263 coding line other than UTF-8 in the first two lines."""
    return any((m := CODING_COOKIE.match(line)) and m.group(1).lower() not in {"utf-8", "utf8", "utf_8", "ascii",
                                                                              "us-ascii", "utf-8-sig"}
               for line in text.splitlines()[:2])


# an int stands for a text side that is not text at all (a caller's bug): harm_test must refuse, not pass
texts = st.one_of(st.none(), st.text(max_size=300), st.integers(min_value=1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.one_of(st.just("train.py"), st.text(max_size=30).filter(lambda p: "train.py" not in p)),
       status=st.sampled_from(["A", "M", "D", "R", ""]), old=texts, new=texts,
       symlink=st.booleans(), mode=st.booleans())
def test_random_input_is_refused_by_the_right_rule(path, status, old, new, symlink, mode):
    refusals = harm_test([Change(path, status, old, new, symlink, mode)], SCOPE)
    rules = {r.rule for r in refusals}
    in_scope, deleted = path == "train.py", status == "D"
    unmeasurable = isinstance(old, int) or isinstance(new, int)
    if not in_scope:
        assert "scope" in rules
    elif symlink and not deleted:
        assert "symlink" in rules
    elif not deleted and mode:
        assert "scope" in rules
    elif not deleted and not isinstance(new, str):
        assert "binary" in rules
    elif not deleted and "\x00" in new:
        assert "binary" in rules
    if unmeasurable:
        assert "diff_size" in rules
    clean_edit = deleted or (not symlink and not mode and isinstance(new, str) and "\x00" not in new)
    if in_scope and not deleted and clean_edit and not parses(new) and "binary" not in rules:
        assert "syntax" in rules  # an edit that does not parse is never passed
    if refusals == []:
        assert in_scope and clean_edit and not unmeasurable
        assert deleted or parses(new)


python_ish = st.lists(st.sampled_from([
    "import os\n", "os.system('x')\n", "open(p, 'w')\n", "def f(:\n", "x = (", ")\n", "getattr(", "'val'",
    "torch.save(a, b)\n", "time.time = 1\n", "  ", "\n", "\x00", "# coding: latin-1\n", "run_dir", "f'{x}'",
    "setattr(", "prepare.", "lambda: 0", "[", "]", ",", "\\", "**kw", "*a",
]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(old=python_ish, new=python_ish)
def test_random_python_ish_text_is_refused_by_the_right_rule(old, new):
    refusals = harm_test([Change("train.py", "M", old, new)], SCOPE)
    rules = [r.rule for r in refusals]
    if "\x00" in new:
        assert rules == ["binary"]
    elif foreign_cookie(new) or not parses(new):
        assert rules == ["syntax"]  # nothing unparsable passes, and nothing else is guessed at
    else:
        assert "syntax" not in rules and "binary" not in rules
        # only what a change adds is judged: the same text as the baseline is never refused
        assert harm_test([Change("train.py", "M", new, new)], SCOPE) == []
