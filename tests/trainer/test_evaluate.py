"""The trusted evaluator: exact bpb, causality probe, and untrusted model code that tries to cheat."""

import json
import math
import pickle

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


def test_evaluation_is_deterministic(honest, prepared, tmp_path):
    r, res = evaluate(variant(tmp_path, honest, prepared), prepared)
    assert r.returncode == 0
    assert res["val_bpb"] == honest["result"]["val_bpb"]


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
    assert res["val_bpb"] == honest["result"]["val_bpb"]


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
    assert res["val_bpb"] == honest["result"]["val_bpb"]
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


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
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
    assert r.returncode == 3 and "no prefix" in res["reason"]
    r, res = evaluate(run_dir, prepared, EVAL_WORKER_PREFIX="env CHARTER_TEST_SANDBOX=yes")
    assert r.returncode == 0, res
    assert res["val_bpb"] == honest["result"]["val_bpb"]


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
    assert float(summary["training_seconds"]) >= 2.0
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["steps"] > 2 and stats["tokens_per_second"] > 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == \
        ["config.json", "model.pt", "model_source.py", "stats.json"]
    r = run(["prepare.py", "evaluate", str(tmp_path / "run")], lab, env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert res["status"] == "ok" and math.isfinite(res["val_bpb"])
    assert 0.5 < res["val_bpb"] < 12
