"""The trusted evaluator: exact bpb, causality probe, and untrusted model code that tries to cheat."""

import json
import math
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import import_file, lab_env, make_lab, run, write_run

KWARGS = dict(vocab_size=2048, seq_len=256, n_layer=1, n_head=2, n_embd=32, softcap=15.0)


@pytest.fixture(scope="module")
def honest(prepared, tmp_path_factory):
    """A tiny model with random weights, its run dir, and its evaluation."""
    lab, env = prepared["lab"], prepared["env"]
    train = import_file(lab / "train.py", env)
    torch.manual_seed(0)
    model = train.build_model(**KWARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    run_dir = write_run(tmp_path_factory.mktemp("honest") / "run", model, KWARGS, (lab / "train.py").read_text())
    r = run(["prepare.py", "evaluate", str(run_dir)], lab, env)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(model=model, run_dir=run_dir, stdout=r.stdout,
                result=json.loads((run_dir / "evaluation.json").read_text()))


def variant(tmp_path, honest, prepared, extra_source="", replace=None):
    """The honest run with its model source changed."""
    src = (prepared["lab"] / "train.py").read_text()
    if replace:
        assert replace[0] in src
        src = src.replace(*replace)
    return write_run(tmp_path / "run", honest["model"], KWARGS, src + extra_source)


def evaluate(run_dir, prepared, **env):
    r = run(["prepare.py", "evaluate", str(run_dir)], prepared["lab"], {**prepared["env"], **env})
    res = json.loads((run_dir / "evaluation.json").read_text())
    return r, res


def test_bpb_matches_float64_reference(honest, prepared):
    res = honest["result"]
    p = prepared["prepare"]
    enc = p.load_tokenizer()
    n_rows = math.ceil(p.EVAL_TOKENS / p.MAX_SEQ_LEN)
    rows = torch.from_numpy(p.validation_rows(enc, n_rows).astype(np.int64))
    # byte lengths straight from the tokenizer, not from the evaluator's cached file
    nbytes = torch.tensor([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab - 1)] + [0])
    model = honest["model"].double().eval()
    with torch.no_grad():
        logits = model(rows[:, :-1]).double()
    targets = rows[:, 1:]
    nll = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    b = nbytes[targets]
    ref = float((nll * (b > 0)).sum()) / (math.log(2) * int(b.sum()))
    assert res["status"] == "ok" and res["causality"] == "ok"
    assert res["val_bpb"] == pytest.approx(ref, rel=1e-5)
    assert res["eval_tokens"] == n_rows * p.MAX_SEQ_LEN
    for key in ("val_bpb", "eval_tokens", "profile", "data_hash", "tokenizer_hash", "causality",
                "eval_seconds", "status", "reason"):
        assert key in res
    assert f"val_bpb: {res['val_bpb']:.6f}" in honest["stdout"]
    # the controller times "worker start" and "scoring" by this line, printed before the result
    lines = honest["stdout"].splitlines()
    assert "worker ready" in lines and lines.index("worker ready") < lines.index("---")


def test_evaluation_is_deterministic(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared), prepared)
    assert r.returncode == 0
    assert res["status"] == "ok" and res["causality"] == "ok"
    # rows are batched and ordered afresh by each evaluation; the metric is a sum over rows
    assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)


def test_non_causal_model_is_rejected(honest, prepared, tmp_path):
    run_dir = variant(tmp_path, honest, prepared, replace=("is_causal=True", "is_causal=False"))
    r, res = evaluate(run_dir, prepared)
    assert r.returncode == 3
    assert res["status"] == "rejected" and res["val_bpb"] is None
    assert "causal" in res["reason"] and res["causality"] != "ok"


MONKEYPATCH = '''
import torch, torch.nn.functional as F
_zero = lambda *a, **k: torch.zeros(())
F.cross_entropy = _zero
F.log_softmax = lambda x, *a, **k: torch.zeros_like(x)
torch.log_softmax = lambda x, *a, **k: torch.zeros_like(x)
torch.Tensor.log_softmax = lambda self, *a, **k: torch.zeros_like(self)
import numpy
numpy.log = lambda *a, **k: 0.0
'''


def test_monkeypatching_torch_at_import_does_not_change_the_metric(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, MONKEYPATCH), prepared)
    assert r.returncode == 0, res
    assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)


FAKE_REPORT = '''
import json as _json, os as _os, sys as _sys
_run = _os.path.dirname(_os.path.abspath(__file__))
with open(_os.path.join(_run, "evaluation.json"), "w") as _f:
    _json.dump({"status": "ok", "val_bpb": 0.01}, _f)
print("val_bpb: 0.010000")
_sys.stdout.flush()
'''


def test_fake_report_from_model_code_is_ignored(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, FAKE_REPORT), prepared)
    assert r.returncode == 0
    assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)
    assert "val_bpb: 0.010000" not in r.stdout
    assert f"val_bpb: {honest['result']['val_bpb']:.6f}" in r.stdout


@pytest.mark.parametrize("forward, reason", [
    ("return torch.zeros(1, requires_grad=False)", "shape"),                       # a fake 'loss'
    ("return torch.full((idx.size(0), idx.size(1), 2048), float('nan'))", "non-finite"),
    ("return torch.zeros(idx.size(0), idx.size(1), 100)", "shape"),
])
def test_fake_outputs_are_rejected(honest, prepared, tmp_path, forward, reason):
    extra = f"\n_orig_forward = GPT.forward\ndef _fake(self, idx, targets=None):\n    {forward}\nGPT.forward = _fake\n"
    r, res = evaluate(variant(tmp_path, honest, prepared, extra), prepared)
    assert r.returncode == 3
    assert res["status"] == "rejected" and reason in res["reason"]


# Logits that say nothing (the same for every token) must score exactly log2(vocab) bits per token,
# whatever their size: a log-normalizer that adds a huge max back before subtracting rounds the
# loss to 0 (constant 1e9), and an unshifted sum drops the terms that underflow in float32
@pytest.mark.parametrize("forward", [
    "return torch.full((idx.size(0), idx.size(1), 2048), 1e9)",
    "return torch.full((idx.size(0), idx.size(1), 2048), -1e9)",
    "x = torch.full((idx.size(0), idx.size(1), 2048), -103.98); x[..., 0] = -103.28; return x",
])
def test_uninformative_logits_of_any_size_score_uniform(honest, prepared, tmp_path, forward):
    extra = f"\ndef _fake(self, idx, targets=None):\n    {forward.replace('; ', chr(10) + '    ')}\nGPT.forward = _fake\n"
    r, res = evaluate(variant(tmp_path, honest, prepared, extra), prepared)
    assert r.returncode == 0 and res["status"] == "ok", res
    p = prepared["prepare"]
    rows = p.validation_rows(p.load_tokenizer(), math.ceil(p.EVAL_TOKENS / p.MAX_SEQ_LEN))
    tb = p.load_token_bytes()
    targets = rows[:, 1:]
    scored = tb[targets] > 0
    if "-103.28" in forward:  # one token 0.7 nats above the rest: its exact float64 log-probabilities
        logits = np.full(2048, -103.98)
        logits[0] = -103.28
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        nats = float(np.where(targets == 0, -logp[0], -logp[1])[scored].sum())
    else:
        nats = float(scored.sum()) * math.log(2048)
    assert res["val_bpb"] == pytest.approx(nats / (math.log(2) * int(tb[targets].sum())), rel=1e-4)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["pickle", pytest.param("torch.save", marks=pytest.mark.slow)])  # one mechanism: the same loader
def test_malicious_pickle_weights_never_execute(honest, prepared, tmp_path, how):
    run_dir = variant(tmp_path, honest, prepared)
    marker = tmp_path / "PWNED"
    evil = {"wte.weight": _Evil(str(marker))}
    if how == "pickle":
        (run_dir / "model.pt").write_bytes(pickle.dumps(evil))
    else:
        torch.save(evil, run_dir / "model.pt")
    r, res = evaluate(run_dir, prepared)
    assert not marker.exists()
    assert r.returncode == 3 and res["status"] == "rejected"


def test_worker_prefix_is_used(honest, prepared, tmp_path):
    guard = "\nimport os as _os\nassert _os.environ.get('CHARTER_TEST_SANDBOX') == 'yes', 'no prefix'\n"
    run_dir = variant(tmp_path, honest, prepared, guard)
    r, res = evaluate(run_dir, prepared)
    assert r.returncode == 3 and res["status"] == "rejected"
    assert res["reason"] == "model worker exited with code 1 before it had loaded the model"
    assert "no prefix" in (run_dir / "evaluation.worker.log").read_text()  # for a person, not in the result
    r, res = evaluate(run_dir, prepared, EVAL_WORKER_PREFIX="env CHARTER_TEST_SANDBOX=yes")
    assert r.returncode == 0, res
    assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)


def test_train_then_evaluate_end_to_end(private_cache, tmp_path):
    """A short real training run, with the validation split moved away while it trains.

    The split is moved in this test's own copy of the cache, never in the shared one."""
    cache, _ = private_cache
    lab = make_lab(tmp_path / "lab")
    env = lab_env(cache, RUN_DIR=str(tmp_path / "run"))
    val = cache / "data" / "val"
    hidden = cache / "data" / "val.hidden"
    val.rename(hidden)
    try:
        r = run(["train.py"], lab, env)
    finally:
        hidden.rename(val)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line and "|" not in line)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    # run by hand (no controller deadline) it trains for the profile's budget after start-up and
    # stops by itself; the figures it reports are its own
    assert stats["steps"] > 2 and stats["tokens_per_second"] > 0 and not stats["stopped_by_signal"]
    assert float(summary["steps"]) == stats["steps"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == \
        ["config.json", "model.pt", "model_source.py", "stats.json"]
    r = run(["prepare.py", "evaluate", str(tmp_path / "run")], lab, env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert res["status"] == "ok" and math.isfinite(res["val_bpb"])
    assert 0.5 < res["val_bpb"] < 12


# ---------------------------------------------------------------------------
# Models that keep state. The scoring worker answers every row once; the causality probe is
# answered by a fresh worker that shares nothing with it. Each cheat below reads the next token
# (or other rows) and remembers what its process answered, so that a probe answered by the same
# process copies the original's logits for the shared prefix: the old single-worker probe passed
# them all. Each twist aims at a way a fresh-worker probe could still be fooled.

CHEAT = '''
import numpy as _np
_honest_forward = GPT.forward


def _peek(idx, logits):
    """Not causal: raise the logit of the next input token (the target) at every position."""
    nxt = idx[:, 1:].unsqueeze(-1)
    logits[:, :-1].scatter_add_(-1, nxt, torch.full(nxt.shape, 30.0))
    return logits


_store = {"rows": [], "logits": []}   # every row this process answered, and its answer


def _remember(idx, logits, store=_store):
    """Answer a prefix seen before as before (so a probe matches its original); remember the rest."""
    for b, row in enumerate(idx.cpu().numpy()):
        for old, old_logits in zip(store["rows"], store["logits"]):
            same = int(_np.argmin(_np.append(old == row, False)))  # length of the common prefix
            logits[b, :same] = torch.from_numpy(old_logits[:same])
        store["rows"].append(row.copy())
        store["logits"].append(logits[b].cpu().numpy().copy())
    return logits
'''

MEMORISER = CHEAT + '''
def _forward(self, idx, targets=None):
    return _remember(idx, _peek(idx, _honest_forward(self, idx)))
GPT.forward = _forward
'''

# honest on whatever looks like a probe: random-looking tails, rows repeated within a batch, a batch
# of another size than the first one
PROBE_DETECTOR = CHEAT + '''
_sizes = []
def _looks_like_probe(rows):
    _sizes.append(len(rows))
    random_tails = _np.median(rows[:, -64:].mean(1)) / 2048 > 0.4
    repeated = len({r[:16].tobytes() for r in rows}) < len(rows)
    return random_tails or repeated or len(rows) != _sizes[0]

def _forward(self, idx, targets=None):
    logits = _honest_forward(self, idx)
    if not _looks_like_probe(idx.cpu().numpy()):
        logits = _peek(idx, logits)
    return _remember(idx, logits)
GPT.forward = _forward
'''

# honest in the first batch its process answers (a fresh probe worker's first batch included)
FIRST_BATCH_HONEST = CHEAT + '''
_calls = [0]
def _forward(self, idx, targets=None):
    _calls[0] += 1
    logits = _honest_forward(self, idx)
    if _calls[0] > 1:
        logits = _peek(idx, logits)
    return _remember(idx, logits)
GPT.forward = _forward
'''

# no row reads its own future, but the batch's: from the batch mean of the next tokens' one-hots,
# high logits for every token that comes next in some row of the batch (the row's own among them)
ROW_MIXING = CHEAT + '''
def _forward(self, idx, targets=None):
    logits = _honest_forward(self, idx)
    nxt = torch.nn.functional.one_hot(idx[:, 1:], logits.size(-1)).float()
    logits[:, :-1] = 30.0 * (nxt.mean(0, keepdim=True) > 0)
    return _remember(idx, logits)
GPT.forward = _forward
'''

# the memory in a file, so that a second process could read the first one's answers
FILE_STATE = CHEAT + '''
import os as _os, tempfile as _tempfile
_PATH = PATH_EXPR

def _forward(self, idx, targets=None):
    store = {"rows": [], "logits": []}
    if _os.path.exists(_PATH):
        with open(_PATH, "rb") as f:
            saved = _np.load(f)
            store = {"rows": list(saved["rows"]), "logits": list(saved["logits"])}
    logits = _remember(idx, _peek(idx, _honest_forward(self, idx)), store)
    with open(_PATH, "wb") as f:
        _np.savez(f, rows=_np.stack(store["rows"]), logits=_np.stack(store["logits"]))
    return logits
GPT.forward = _forward
'''
STATE_PATHS = {
    "cwd": '"state.npz"',
    "home": '_os.path.expanduser("~/state.npz")',
    "tmpdir": '_os.path.join(_tempfile.gettempdir(), "charter-state.npz")',
    "beside_source": '_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "state.npz")',
}


def assert_rejected_as_cheat(res, honest, why="causal"):
    assert res["status"] == "rejected", res
    assert why in res["reason"] and res["causality"] not in ("ok", "not checked")
    assert res["val_bpb"] is None or res["val_bpb"] >= honest["result"]["val_bpb"]


def test_memorising_non_causal_model_is_rejected(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, MEMORISER), prepared)
    assert r.returncode == 3
    assert_rejected_as_cheat(res, honest)


def test_model_that_is_honest_on_probe_like_batches_is_rejected(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, PROBE_DETECTOR), prepared)
    assert_rejected_as_cheat(res, honest)


def test_model_honest_only_in_its_first_batch_is_rejected(honest, prepared, tmp_path):
    # small batches, so that the evaluation has several: 16 rows in batches of 4
    r, res = evaluate(variant(tmp_path, honest, prepared, FIRST_BATCH_HONEST), prepared, CHARTER_EVAL_BATCH="4")
    assert_rejected_as_cheat(res, honest)


def test_model_mixing_the_rows_of_a_batch_is_rejected(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, ROW_MIXING), prepared)
    assert_rejected_as_cheat(res, honest)


# cwd and the temp dir in the default suite; HOME and beside the source are the same mechanism
@pytest.mark.parametrize("where", [w if w in ("cwd", "tmpdir") else pytest.param(w, marks=pytest.mark.slow)
                                   for w in sorted(STATE_PATHS)])
def test_model_keeping_its_memory_in_a_file_gains_nothing(honest, prepared, tmp_path, where):
    """Without a sandbox each worker has a fresh directory as cwd, HOME and TMPDIR, and the model
    source does not live in the run dir: the probe worker finds no file of the scoring worker."""
    run_dir = variant(tmp_path, honest, prepared, FILE_STATE.replace("PATH_EXPR", STATE_PATHS[where]))
    r, res = evaluate(run_dir, prepared)
    assert_rejected_as_cheat(res, honest)
    assert not (run_dir / "state.npz").exists()


def _bwrap_works():
    if not shutil.which("bwrap"):
        return False
    probe = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
             "--unshare-pid", "--unshare-net", "--die-with-parent", "--", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is not usable here")
def test_model_keeping_its_memory_in_the_sandbox_tmp_gains_nothing(honest, prepared, tmp_path):
    """Under a sandbox prefix (a minimal bwrap one here) each worker gets its own private /tmp."""
    run_dir = variant(tmp_path, honest, prepared,
                      FILE_STATE.replace("PATH_EXPR", repr(f"/tmp/charter-state-{uuid.uuid4().hex}.npz")))
    visible = [prepared["lab"], run_dir] + [p for p in {Path(sys.prefix).resolve()} if "/tmp/" in str(p)]
    prefix = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for p in visible:
        prefix += ["--ro-bind", str(p), str(p)]
    prefix += ["--unshare-pid", "--unshare-net", "--die-with-parent", "--"]
    r, res = evaluate(run_dir, prepared, EVAL_WORKER_PREFIX=shlex.join(prefix))
    assert_rejected_as_cheat(res, honest)


# no memory at all: every logit shifted by 1000 (the same distribution), and under a tolerance that
# grew with the logits, a non-causal nudge to the next token
OFFSET_NUDGE = '''
_honest_forward = GPT.forward
def _forward(self, idx, targets=None):
    logits = _honest_forward(self, idx) + 1000.0
    nxt = idx[:, 1:].unsqueeze(-1)
    logits[:, :-1].scatter_add_(-1, nxt, torch.full(nxt.shape, 0.9))
    return logits
GPT.forward = _forward
'''


def test_nudge_hidden_under_shifted_logits_is_rejected(honest, prepared, tmp_path):
    """The check compares log-probabilities, which a shift of all logits leaves alone."""
    r, res = evaluate(variant(tmp_path, honest, prepared, OFFSET_NUDGE), prepared)
    assert_rejected_as_cheat(res, honest)


HONEST_WITH_STATE = '''
import os as _os
_honest_forward = GPT.forward
_calls = [0]
def _forward(self, idx, targets=None):
    _calls[0] += 1
    with open("calls.txt", "w") as f:   # state it keeps, that does not change its answers
        f.write(str(_calls[0]))
    return _honest_forward(self, idx)
GPT.forward = _forward
'''


def test_honest_model_that_keeps_harmless_state_is_accepted(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared, HONEST_WITH_STATE), prepared, CHARTER_EVAL_BATCH="4")
    assert r.returncode == 0, res
    assert res["causality"] == "ok" and res["probe_rows"] >= 6
    assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)


SEEN_LOG = '''
import hashlib as _hashlib, os as _os
_honest_forward = GPT.forward
def _forward(self, idx, targets=None):
    rows = [_hashlib.sha256(r.tobytes()).hexdigest()[:16] for r in idx.cpu().numpy()]
    with open({log!r}, "a") as f:
        f.write(f"{{_os.getpid()}} {{' '.join(rows)}}\\n")
    return _honest_forward(self, idx)
GPT.forward = _forward
'''


def test_rows_are_shuffled_and_probes_go_to_a_fresh_worker(honest, prepared, tmp_path):
    """Each evaluation batches and orders the rows afresh (the metric stays the same); a second
    process answers the check rows: a few real rows (controls) and altered rows (probes)."""
    seen = []
    for k in range(2):
        log = tmp_path / f"seen{k}.log"
        r, res = evaluate(variant(tmp_path / str(k), honest, prepared, SEEN_LOG.format(log=str(log))), prepared,
                          CHARTER_EVAL_BATCH="4")
        assert r.returncode == 0, res
        assert res["val_bpb"] == pytest.approx(honest["result"]["val_bpb"], rel=1e-9)
        batches = [line.split() for line in log.read_text().splitlines()]
        pids = list(dict.fromkeys(b[0] for b in batches))
        assert len(pids) == 2  # the scoring worker, then the checking worker, each start to end
        scored = [b[1:] for b in batches if b[0] == pids[0]]
        checked = [h for b in batches if b[0] == pids[1] for h in b[1:]]
        assert [b[0] for b in batches] == [pids[0]] * len(scored) + [pids[1]] * (len(batches) - len(scored))
        rows = [h for b in scored for h in b]
        assert len(rows) == len(set(rows)) == 16 and all(len(b) == 4 for b in scored)
        controls = [h for h in checked if h in rows]
        assert len(controls) == res["control_rows"] and len(checked) - len(controls) == res["probe_rows"]
        seen.append(scored)
    assert seen[0] != seen[1]  # other batches, in another order


# ---------------------------------------------------------------------------
# Files of the run: the evaluator reads them itself, never through a link, only regular files,
# bounded; and nothing the worker writes reaches the result.

@pytest.mark.parametrize("name, make, why", [
    ("model.pt", lambda p: p.symlink_to("/dev/zero"), "a symbolic link"),
    ("model.pt", lambda p: os.mkfifo(p), "not a regular file"),
    ("config.json", lambda p: p.symlink_to("/etc/hostname"), "a symbolic link"),
    ("config.json", lambda p: p.write_text("{}" + " " * (2 << 20)), "larger than"),
    ("model_source.py", lambda p: p.symlink_to(p.with_name("elsewhere.py")), "a symbolic link"),
])
def test_run_files_are_read_safely(honest, prepared, tmp_path, name, make, why):
    run_dir = variant(tmp_path, honest, prepared)
    (run_dir / "elsewhere.py").write_text((prepared["lab"] / "train.py").read_text())
    (run_dir / name).unlink()
    make(run_dir / name)
    # a worker that waited on a FIFO would be given up after this, not after the default 900 s
    r, res = evaluate(run_dir, prepared, CHARTER_EVAL_TIMEOUT="60")
    assert r.returncode == 3 and res["status"] == "rejected"
    assert res["reason"].startswith(f"run file {name} is {why}") and res["reason"].endswith("(refused)")


def test_result_links_are_replaced_not_followed(honest, prepared, tmp_path):
    run_dir = variant(tmp_path, honest, prepared)
    target = tmp_path / "host-file"
    target.write_text("precious")
    (run_dir / "evaluation.json").symlink_to(target)
    r, res = evaluate(run_dir, prepared)
    assert r.returncode == 0 and res["status"] == "ok"
    assert target.read_text() == "precious" and not (run_dir / "evaluation.json").is_symlink()


LEAKY = '''
import sys as _sys
_secret = "LEAK-" + "MARKER"
print(_secret)
print(_secret, file=_sys.stderr)
raise RuntimeError(_secret)
'''


def test_worker_output_never_reaches_the_result(honest, prepared, tmp_path):
    """Worker stderr could carry validation text: the reason is the evaluator's own words."""
    run_dir = variant(tmp_path, honest, prepared, LEAKY)
    r, res = evaluate(run_dir, prepared)
    assert r.returncode == 3 and res["reason"] == "model worker exited with code 1 before it had loaded the model"
    assert "LEAK-MARKER" not in (run_dir / "evaluation.json").read_text() + r.stdout + r.stderr
    assert "LEAK-MARKER" in (run_dir / "evaluation.worker.log").read_text()  # kept for a person


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _say(go, word):
    (go.parent / "go.tmp").write_text(word)
    os.replace(go.parent / "go.tmp", go)


def test_an_early_evaluator_reads_the_run_only_at_the_word(honest, prepared, tmp_path):
    """Started while the run is still being saved (its directory empty), the evaluator starts its
    workers and prepares its data, then waits: the run's files appear, "go", and it scores them
    exactly as an evaluator started afterwards does."""
    run_dir, out, go = tmp_path / "run", tmp_path / "evaluation.json", tmp_path / "go"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "prepare.py", "evaluate", str(run_dir), "--out", str(out), "--go", str(go)],
                            cwd=prepared["lab"], env=prepared["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        while len(_children(proc.pid)) < 2 and proc.poll() is None:   # both workers started
            time.sleep(0.05)
        time.sleep(1.0)   # time to have read the (empty) run, were it going to
        assert proc.poll() is None and not out.exists()
        for f in honest["run_dir"].iterdir():
            if f.name != "evaluation.json":
                shutil.copy(f, run_dir / f.name)
        _say(go, "go")
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout + stderr
    res = json.loads(out.read_text())
    assert res["status"] == "ok" and res["val_bpb"] == honest["result"]["val_bpb"]


def test_an_early_evaluator_called_off_scores_nothing(honest, prepared, tmp_path):
    out, go = tmp_path / "evaluation.json", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "prepare.py", "evaluate", str(honest["run_dir"]), "--out", str(out),
                             "--go", str(go)], cwd=prepared["lab"], env=prepared["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _say(go, "cancel")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4 and "nothing to score" in stdout, stdout + stderr
    assert not out.exists()
    r = run(["prepare.py", "evaluate", "--help"], prepared["lab"], prepared["env"])
    assert "--go FILE" in r.stdout          # what the runner asks before it starts one early
