"""
train.py: the model, the optimizer and the training loop of a Charter lab.

This is the file the research agent edits. Run `python train.py`: it trains until its time is
up, then writes the run to $RUN_DIR (default run/). Under Charter the controller owns the clock:
$CHARTER_DEADLINE (unix time) is when it stops the run (SIGTERM comes just before) or, when it
counts CPU time, $CHARTER_CPU_BUDGET is the CPU seconds per CPU ($CHARTER_CPU_THREADS of them)
the run has from its start, and the deadline a wall cap; the run must be saved within the
short grace after it or it is killed unscored; start-up and compile come out of the same budget
for every run. Run by hand, it trains for the profile's budget (prepare.py) after start-up. It writes:
model.pt (weights), config.json (how to build the model), model_source.py (a copy of this
file, imported by the evaluator's sandboxed worker), stats.json. The score comes from
`python prepare.py evaluate RUN_DIR`, never from what this file prints.
Importing this file must not train: the evaluator imports it to call build_model().
"""

import os
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    os.path.expanduser(os.environ.get("CHARTER_CACHE_DIR") or "~/.cache/charter"), "inductor"))

import json
import math
import resource
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Model: GPT with RMSNorm, rotary embeddings, QK-norm, ReLU^2 MLP, logit softcap


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    seq_len: int = 256
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    softcap: float = 15.0


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


FLASH_ATTN = None  # set by main() to Flash Attention 3 when training on a CUDA Hopper GPU that loaded it


def attention(q, k, v):
    """Causal self-attention over (B, T, H, D) tensors: Flash Attention 3 where main() loaded it
    (it takes that layout as it is), SDPA everywhere else (it wants (B, H, T, D))."""
    if FLASH_ATTN is not None:
        y = FLASH_ATTN(q, k, v, causal=True)
        return y[0] if isinstance(y, tuple) else y  # some builds also return the softmax LSE
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        y = attention(q, k, v)
        return self.c_proj(y.contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        head_dim = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(config.seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                nn.init.zeros_(p)
            elif name == "wte.weight":
                nn.init.normal_(p, std=1.0)
            else:
                bound = math.sqrt(3.0 / p.shape[1])
                nn.init.uniform_(p, -bound, bound)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T].to(idx.device), self.sin[:, :T].to(idx.device)
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(**kwargs):
    """Entry point of the evaluator: the same model, from config.json's kwargs."""
    return GPT(GPTConfig(**kwargs))

# ---------------------------------------------------------------------------
# Optimizer: AdamW for every parameter (a Muon variant did not pay on CPU in 60 s; every constant
# below is read by the code, so a change to any of them changes training)


def build_optimizers(model):
    return [torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(ADAM_BETA1, ADAM_BETA2),
                              weight_decay=WEIGHT_DECAY, eps=1e-10)]

# ---------------------------------------------------------------------------
# Hyperparameters: edit these directly, no CLI flags

DEPTH = 2                  # transformer blocks
MODEL_DIM = 128            # residual stream width
HEAD_DIM = 64              # attention head size (heads = MODEL_DIM // HEAD_DIM)
DEVICE_BATCH_SIZE = 32     # sequences per forward/backward
TOTAL_BATCH_SIZE = 8192    # tokens per optimizer step (gradient accumulation if larger than one micro-batch)
LEARNING_RATE = 3e-3       # AdamW learning rate
ADAM_BETA1 = 0.9           # AdamW first-moment decay
ADAM_BETA2 = 0.95          # AdamW second-moment decay
WEIGHT_DECAY = 0.0         # decoupled weight decay
WARMUP_RATIO = 0.0         # share of the time budget spent ramping the learning rate up
WARMDOWN_RATIO = 0.1       # share of the time budget spent decaying the learning rate to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0        # learning rate at the end, as a fraction of the peak
SOFTCAP = 15.0             # logits are squashed to (-SOFTCAP, SOFTCAP)
SEED = 42                  # torch and data-order seed (the controller offsets it for repeated runs)

# ---------------------------------------------------------------------------
# Training


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress > 1.0 - WARMDOWN_RATIO:
        frac = (1.0 - progress) / WARMDOWN_RATIO
        return frac + (1.0 - frac) * FINAL_LR_FRAC
    return 1.0


def cpu_has_fast_bf16():
    # bf16 only pays on CPUs with AMX or AVX512-BF16; elsewhere it is slower than fp32
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def fetch_flash_attention():
    # Flash Attention 3 from the kernel hub's cache, pinned to version 1: with HF_HUB_OFFLINE=1 (the
    # controller sets it) or no network, a version not cached fails at once (field notes; an open
    # revision retries for ~23 s). Returns (function or None, why not)
    try:
        from kernels import get_kernel
        return get_kernel("kernels-community/flash-attn3", version=1).flash_attn_func, ""
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def load_flash_attention():
    # FA3 on CUDA Hopper only; any failure -> SDPA. Returns (function or None, "fa3"/"sdpa", why)
    if not torch.cuda.is_available():
        return None, "sdpa", "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return None, "sdpa", f"compute capability {major}.{minor} is not Hopper (9.x)"
    fn, why = fetch_flash_attention()
    if fn is None:
        print(f"flash attention 3 unavailable ({why}); using SDPA", flush=True)
        return None, "sdpa", why
    return fn, "fa3", ""


def main():
    global FLASH_ATTN
    from prepare import PROFILE, MAX_SEQ_LEN, TIME_BUDGET, load_tokenizer, make_dataloader

    t_start = time.time()
    # the controller runs a commit's repeats with other seeds (offset 1, 2, ...), so that what the
    # repeats measure includes seed-to-seed noise; by hand the offset is 0
    seed = SEED + int(os.environ.get("CHARTER_SEED_OFFSET") or 0)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # bf16 only on CUDA and CPUs with AMX/AVX512-BF16 (field notes: 2.2x with compile), elsewhere
    # it is emulated. torch.compile pays only where its cost is shared: every run gets a cold,
    # private compile cache and start-up counts against the budget, and on a 2-core CPU a cold
    # compile ate ~50 of 60 s (docs/benchmarks.md), so compile by default on CUDA only;
    # CHARTER_COMPILE=1 or CHARTER_NO_COMPILE=1 decide it either way
    use_bf16 = device == "cuda" or cpu_has_fast_bf16()
    use_compile = os.environ.get("CHARTER_COMPILE") == "1" or (device == "cuda" and os.environ.get("CHARTER_NO_COMPILE") != "1")
    attention_kind, attention_why = "sdpa", "not on CUDA"
    if device == "cuda":
        FLASH_ATTN, attention_kind, attention_why = load_flash_attention()
        torch.backends.cuda.matmul.allow_tf32 = True
    run_dir = os.environ.get("RUN_DIR", "run")
    os.makedirs(run_dir, exist_ok=True)

    vocab_size = load_tokenizer().n_vocab
    model_kwargs = dict(vocab_size=vocab_size, seq_len=MAX_SEQ_LEN, n_layer=DEPTH,
                        n_head=max(1, MODEL_DIM // HEAD_DIM), n_embd=MODEL_DIM, softcap=SOFTCAP)
    model = build_model(**model_kwargs).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    optimizers = build_optimizers(model)
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    train_model = torch.compile(model) if use_compile else model
    tokens_per_micro = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    grad_accum = max(1, TOTAL_BATCH_SIZE // tokens_per_micro)
    loader = make_dataloader(DEVICE_BATCH_SIZE, MAX_SEQ_LEN, device=device, seed=seed)
    x, y = next(loader)
    print(f"profile: {PROFILE}, device: {device}, compile: {use_compile}, bf16: {use_bf16}, attention: {attention_kind}, "
          f"params: {num_params / 1e6:.2f}M, grad_accum: {grad_accum}", flush=True)

    # the controller's deadline (SIGTERM comes then), or by hand the profile's budget from now
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    t_train = time.time()
    deadline = float(os.environ.get("CHARTER_DEADLINE") or t_train + TIME_BUDGET)
    # the budget's clock: wall time up to the deadline or, when the controller counts CPU
    # ($CHARTER_CPU_BUDGET), CPU seconds per CPU from process start (start-up counts) with the
    # deadline as a wall cap; training stops when now() reaches end
    if os.environ.get("CHARTER_CPU_BUDGET"):
        threads = int(os.environ.get("CHARTER_CPU_THREADS") or os.cpu_count())
        clock, now, end = "cpu", lambda: time.process_time() / threads, float(os.environ["CHARTER_CPU_BUDGET"])
    else:
        clock, now, end = "wall", time.time, deadline
    start = now()
    untimed_steps = 2  # the first steps compile: reported apart in stats.json
    step, training_time, smooth_loss = 0, 0.0, None
    while not stop["requested"] and time.time() < deadline and now() < end:
        t0, c0 = time.time(), now()
        for _ in range(grad_accum):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                loss = train_model(x, y)
            (loss / grad_accum).backward()
            x, y = next(loader)
        progress = min(1.0, (c0 - start) / max(end - start, 1e-9))  # of the budget this run has
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress)
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()  # also synchronizes the device
        dt = time.time() - t0
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"FAIL: loss {loss_value} at step {step}")
            raise SystemExit(1)
        step += 1
        if step > untimed_steps:
            training_time += dt
        smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
        if step % 20 == 0:
            print(f"step {step:05d} | loss {smooth_loss:.4f} | {tokens_per_micro * grad_accum / dt:,.0f} tok/s "
                  f"| {max(0.0, end - now()):.1f}s left ({clock})", flush=True)

    timed_steps = step - untimed_steps
    tokens = step * tokens_per_micro * grad_accum
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = dict(steps=step, tokens=tokens, training_seconds=round(training_time, 3),
                 startup_seconds=round(t_train - t_start, 3), total_seconds=round(time.time() - t_start, 3),
                 stopped_by_signal=stop["requested"], seed=seed,
                 tokens_per_second=round(timed_steps * tokens_per_micro * grad_accum / max(training_time, 1e-9), 1),
                 peak_memory_mb=round(peak_mb, 1), num_params=num_params,
                 train_loss=None if smooth_loss is None else round(smooth_loss, 4),
                 profile=PROFILE, device=device, compile=use_compile, bf16=use_bf16,
                 depth=DEPTH, model_dim=MODEL_DIM, clock=clock, cpu_seconds=round(time.process_time(), 3),
                 attention=attention_kind, attention_fallback=attention_why,
                 device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               os.path.join(run_dir, "model.pt"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(dict(entry="build_model", source="model_source.py", weights="model.pt",
                       kwargs=model_kwargs, profile=PROFILE), f, indent=1)
    with open(__file__) as src, open(os.path.join(run_dir, "model_source.py"), "w") as dst:
        dst.write(src.read())
    with open(os.path.join(run_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print("---")
    for k in ("training_seconds", "total_seconds", "tokens_per_second", "peak_memory_mb", "steps", "tokens",
              "num_params", "train_loss", "depth", "profile", "attention"):
        print(f"{k}: {stats[k]}")


if __name__ == "__main__":
    main()
    # every file is written and closed: skip the interpreter's teardown of torch, which takes
    # about 1.2 s on a 2-core CPU and would come out of the time between experiments
    sys.stdout.flush()
    os._exit(0)
