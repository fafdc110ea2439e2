"""
Training throughput (tokens/s) of trainer/train.py's default config, as train.py runs it
(torch.compile, bf16 autocast where the CPU has fast bf16), against an eager fp32 reference of
the same model in the same process. Random tokens; forward + backward + optimizer step.

    python bench/trainer_throughput.py [--steps 30] [--warmup 3]
"""

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

TRAINER = Path(__file__).resolve().parents[1] / "trainer"


def load_train():
    sys.path.insert(0, str(TRAINER))
    spec = importlib.util.spec_from_file_location("train_bench", TRAINER / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_step(T, compile_, bf16, seq_len, vocab):
    torch.manual_seed(0)
    model = T.build_model(vocab_size=vocab, seq_len=seq_len, n_layer=T.DEPTH, n_head=max(1, T.MODEL_DIM // T.HEAD_DIM),
                          n_embd=T.MODEL_DIM, softcap=T.SOFTCAP)
    opts = T.build_optimizers(model)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randint(0, vocab, (T.DEVICE_BATCH_SIZE, seq_len))
    y = torch.randint(0, vocab, (T.DEVICE_BATCH_SIZE, seq_len))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x, y)
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        loss.item()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 on a CPU without fast bf16")
    args = ap.parse_args()
    T = load_train()
    seq_len, vocab = 256, 2048
    bf16 = T.cpu_has_fast_bf16()
    rows = [("eager fp32 (reference)", False, False), ("compile fp32", True, False)]
    if bf16 or args.bf16:  # bf16 on a CPU without AMX/AVX512-BF16 is emulated and very slow
        rows.append(("compile bf16", True, True))
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}, fast bf16: {bf16}, "
          f"threads: {torch.get_num_threads()}, TORCHINDUCTOR_CACHE_DIR: {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
    print(f"config: depth {T.DEPTH} / dim {T.MODEL_DIM} / seq {seq_len} / vocab {vocab} / batch {T.DEVICE_BATCH_SIZE}"
          " / optimizer AdamW")
    print(f"train.py default on this CPU: {'compile bf16' if bf16 else 'eager fp32'}")
    # modes run in interleaved rounds, so a shared CPU's changing load hits them alike
    steps, warm = {}, {}
    for name, c, b in rows:
        t0 = time.time()
        steps[name] = make_step(T, c, b, seq_len, vocab)
        for _ in range(args.warmup):
            steps[name]()
        warm[name] = time.time() - t0
    spent = {name: 0.0 for name in steps}
    rounds = max(1, args.steps // 5)
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.time()
            for _ in range(5):
                step()
            spent[name] += time.time() - t0
    tokens = rounds * 5 * T.DEVICE_BATCH_SIZE * seq_len
    base = tokens / spent[rows[0][0]]
    print("| mode | tokens/s | warm-up s | vs eager |\n|---|---|---|---|")
    for name in steps:
        tps = tokens / spent[name]
        print(f"| {name} | {tps:,.0f} | {warm[name]:.1f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
