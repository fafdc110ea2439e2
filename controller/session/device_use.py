"""What the ledger records about the GPU per run and per experiment, from the runner's outcomes.

`training_fields` are the `TrainingFinished` fields of one run (peak VRAM, device, MFU, all
measured or computed by the controller); `with_device_use` adds to `resource_use`'s `Decided` fields
what an experiment's runs used together: the largest peak VRAM, whether any run went over the soft limit
(it moves the gate: the loop ORs it into `memory_soft_exceeded`, which the `memory-soft` rule
counts) and whether any went over the hard limit (a hard violation). Pure; on a machine without
a GPU every field keeps its default, so nothing changes there.
"""

from __future__ import annotations

from controller.execution.runner import RunOutcome


def training_fields(outcome: RunOutcome) -> dict:
    """Keyword arguments for `TrainingFinished` describing the run's device use."""
    return {"peak_vram_mb": outcome.peak_vram_mb, "device_name": outcome.device_name, "mfu": outcome.mfu}


def with_device_use(use: dict, outcomes: list[RunOutcome]) -> dict:
    """`resource_use`'s `Decided` fields with the GPU's added: the largest peak VRAM, a soft
    excess ORed into memory_soft_exceeded (and kept apart as vram_soft_exceeded), a hard excess
    as hard_violation; `use` unchanged when nothing was measured (a CPU machine)."""
    ran = [o for o in outcomes if o is not None]
    peaks = [o.peak_vram_mb for o in ran if o.peak_vram_mb is not None]
    if not peaks:
        return use
    soft = any(o.vram_soft_exceeded for o in ran)
    out = dict(use, peak_vram_mb=round(max(peaks), 1), vram_soft_exceeded=soft,
               memory_soft_exceeded=bool(use.get("memory_soft_exceeded")) or soft)
    if any(o.vram_hard_exceeded for o in ran):
        out["hard_violation"] = True
    return out
