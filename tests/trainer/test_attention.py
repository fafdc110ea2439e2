"""train.py's attention dispatch on CPU: the Flash Attention 3 call path agrees with SDPA when the
hook is a plain-torch attention taking FA3's (B, T, H, D) layout (a transpose bug in that branch
would not), and the real `kernels` call falls back fast when the kernel can't load offline."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

TRAINER = Path(__file__).resolve().parents[2] / "trainer"


def import_train():
    """train.py as a fresh module (importing it must not train; it needs no prepare.py for this)."""
    spec = importlib.util.spec_from_file_location("train_under_test", TRAINER / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_fa3(q, k, v, causal=True):
    """Causal attention in FA3's layout, (B, T, H, D) in and out, written out in plain torch;
    returns a tuple (out, lse) as some FA3 builds do."""
    assert causal
    T, D = q.shape[1], q.shape[3]
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v), None


def _logits(train, hook):
    torch.manual_seed(0)
    model = train.build_model(vocab_size=97, seq_len=24, n_layer=2, n_head=4, n_embd=64).eval()
    with torch.no_grad():  # weights are zero-initialised in places: perturb them so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    train.FLASH_ATTN = hook
    try:
        with torch.no_grad():
            return model(idx)
    finally:
        train.FLASH_ATTN = None


def test_the_fa3_path_agrees_with_sdpa(tmp_path):
    train = import_train()
    sdpa = _logits(train, None)
    fa3 = _logits(train, reference_fa3)
    assert sdpa.shape == (3, 24, 97)
    assert torch.allclose(sdpa, fa3, atol=1e-5, rtol=1e-5), (sdpa - fa3).abs().max()
    # the comparison can fail: a hook that reads the same tensors as (B, H, T, D) (the bug of
    # passing FA3 SDPA's layout, or the reverse) changes the logits
    wrong = _logits(train, lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    assert (sdpa - wrong).abs().max() > 1e-3


def test_the_fallback_is_taken_when_the_kernel_cannot_load_offline(tmp_path):
    # the real kernels call, pinned to version 1, with the hub offline and an empty cache: it must
    # fail (fast: no network retries) and train.py must give SDPA with the reason
    hf = tmp_path / "hf"
    hf.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), PYTHONDONTWRITEBYTECODE="1")
    code = ("import json, train; fn, why = train.fetch_flash_attention(); "
            "print(json.dumps([fn is None, why, train.load_flash_attention()[1:]]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=TRAINER, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    failed, why, on_this_host = json.loads(r.stdout.strip().splitlines()[-1])
    assert failed
    assert "not available in the local cache" in why and "\n" not in why
    if not torch.cuda.is_available():  # this CPU machine: SDPA, and why
        assert on_this_host == ["sdpa", "no CUDA device"]
    assert not list(hf.rglob("*.so"))  # nothing was fetched
