"""The accelerator as policy sees it: may a session start, how well did a run use the device, and
did it stay within the constitution's GPU memory limits.

Pure functions of data, tested with fixed numbers: `gpu_refusal` turns what the controller found
on the machine (`GpuProbe`, read by `controller.execution.gpu`) into the one-line refusal for a
gpu-profile lab with no usable GPU; `flops_per_token` and `mfu` compute model FLOPs utilisation
from the model's config and a device's peak (`PEAK_BF16_TFLOPS`, dense, no sparsity), as
nanochat and upstream autoresearch count it; `vram_check` places a run's peak GPU memory (as the
controller measured it, never the run's own report) against `vram_soft_mb` / `vram_hard_mb`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from constitution import Constitution

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets, matched against the
# NVML device name (lowercase, first matching key wins: the longer, more specific names first).
# H200 has the H100 SXM's compute (it differs in memory); PCIe and NVL parts run lower clocks.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("h200", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("a10g", 70.0),
    ("rtx 4090", 165.0),
)


@dataclass(frozen=True)
class GpuProbe:
    """What the controller found: the usable GPUs' names (empty: none) and, if none, why."""

    names: tuple[str, ...] = ()
    problem: str = ""  # why no GPU is usable ("no /dev/nvidia* device nodes", an NVML error, ...)

    @property
    def usable(self) -> bool:
        return bool(self.names)


def gpu_refusal(rules: Constitution, probe: GpuProbe) -> str | None:
    """The one-line refusal when the constitution asks for a GPU and none is usable; else None."""
    if rules.evaluation.profile != "gpu" or probe.usable:
        return None
    why = probe.problem or "no GPU found"
    return (f"the constitution asks for a GPU (evaluation.profile = \"gpu\") but none is usable here ({why}); "
            "run this lab on a machine with an NVIDIA GPU and its driver, or start a CPU lab with "
            "`charter init DIR --profile cpu`")


def peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None for a device the table does not know."""
    low = device_name.lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in low:
            return tflops * 1e12
    return None


def flops_per_token(num_params: int, vocab_size: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 per non-embedding parameter (the input
    embedding is a lookup, not a matmul) plus attention's 12 * layers * width * seq (QK^T and AV,
    forward and backward, the causal mask's saving not subtracted), the estimate upstream's MFU uses."""
    embedding = vocab_size * n_embd
    return 6.0 * (num_params - embedding) + 12.0 * n_layer * n_embd * seq_len


def mfu(tokens_per_second: float, per_token_flops: float, device_peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in 0..1 (None when the peak is unknown or the inputs are not positive)."""
    if not device_peak_flops or tokens_per_second <= 0 or per_token_flops <= 0:
        return None
    return tokens_per_second * per_token_flops / device_peak_flops


def run_mfu(config_kwargs: dict, stats: dict, device_name: str) -> float | None:
    """MFU of one run: FLOPs per token from the model's config (config.json's kwargs, the ones the
    evaluator builds the model from) and the parameter count and tokens/s the run reports (its
    claim: MFU is shown, never decided on); None for anything missing or not a number."""
    try:
        per_token = flops_per_token(int(stats["num_params"]), int(config_kwargs["vocab_size"]),
                                    int(config_kwargs["n_layer"]), int(config_kwargs["n_embd"]),
                                    int(config_kwargs["seq_len"]))
        rate = float(stats["tokens_per_second"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    value = mfu(rate, per_token, peak_flops(device_name))
    # the inputs are the run's claims: a huge tokens/s must not put inf into the ledger
    return None if value is None or not math.isfinite(value) else round(value, 4)


@dataclass(frozen=True)
class VramVerdict:
    soft_exceeded: bool = False  # moves the gate like memory_soft_exceeded
    hard_exceeded: bool = False  # the run is unscored and the experiment a hard violation
    reason: str = ""  # for a hard excess: the line the decision records


def vram_check(peak_vram_mb: float | None, soft_mb: int | None, hard_mb: int | None) -> VramVerdict:
    """A run's peak GPU memory against the limits; nothing measured (a CPU machine) or no limit
    set never fires."""
    if peak_vram_mb is None:
        return VramVerdict()
    if hard_mb is not None and peak_vram_mb > hard_mb:
        return VramVerdict(True, True, f"training used {peak_vram_mb:.0f} MB of GPU memory, over "
                                       f"budgets.experiment.vram_hard_mb = {hard_mb}")
    return VramVerdict(soft_mb is not None and peak_vram_mb > soft_mb)
