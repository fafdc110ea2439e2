"""The GPU as the controller measures it: is one usable here, and how much of its memory did a run use.

Read through NVML (`nvidia-ml-py`, the optional `charter[gpu]` extra) from the controller's own
process, never from anything a run reports: `probe()` says which GPUs are usable (or why none
is), `assigned` names the GPUs a Ray worker was given (NVML index, device node, UUID), and
`VramSampler` samples the used memory of a run's GPUs (all of them, or the assigned ones) while
it trains and keeps the peak above what was in use when it started (one experiment per device
at a time, so the difference is the run's; another user of the same GPU would be counted too). Without NVML or a GPU both
answer None / "not usable", so nothing here fires on a CPU machine. The decisions made from
these readings are pure functions in `controller.policy.device`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from controller.policy.device import GpuProbe

SAMPLE_INTERVAL_S = 0.25  # NVML reads are ~100 us; a run's peak lasts a step (hundreds of ms)
DEVICE_NODE = re.compile(r"nvidia\d+")


def _nvml():
    """The pynvml module with NVML initialised, or (None, why)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install 'charter[gpu]')"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no driver here
        return None, f"NVML: {e}"
    return pynvml, ""


def device_nodes(dev: Path = Path("/dev")) -> list[Path]:
    """The GPUs' device nodes (/dev/nvidia0, ...), not the control nodes (nvidiactl, nvidia-uvm)."""
    try:
        return sorted(p for p in dev.iterdir() if DEVICE_NODE.fullmatch(p.name))
    except OSError:
        return []


def probe(dev: Path = Path("/dev")) -> GpuProbe:
    """Which GPUs are usable here: device nodes first (no driver, no GPU), then NVML's names."""
    nodes = device_nodes(dev)
    if not nodes:
        return GpuProbe((), f"no NVIDIA device nodes ({dev}/nvidia0, ...)")
    nvml, why = _nvml()
    if nvml is None:
        if why.startswith("nvidia-ml-py"):  # the driver's nodes are there; only the name is unknown
            return GpuProbe(tuple(f"NVIDIA GPU ({p.name})" for p in nodes))
        return GpuProbe((), why)
    try:
        count = nvml.nvmlDeviceGetCount()
        names = tuple(_text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count))
    except Exception as e:
        return GpuProbe((), f"NVML: {e}")
    return GpuProbe(names, "" if names else "NVML sees no GPU")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as the sandbox and the sampler need it."""

    index: int   # NVML's index (PCI bus order), which a worker's GPU ids from Ray are read as
    minor: int   # its device node, /dev/nvidia<minor>: the only GPU node the run's sandbox shows
    uuid: str    # CUDA_VISIBLE_DEVICES inside: a UUID names this GPU whatever order CUDA counts in


class GpuAssignmentError(RuntimeError):
    """The GPUs a worker was given can't be told apart here (no NVML, an id that is no index)."""


def assigned(ids) -> tuple[GpuDevice, ...]:
    """The GPUs with these ids (`ray.get_gpu_ids()`: NVML indices), read from NVML."""
    try:
        indices = tuple(int(i) for i in ids)
    except (TypeError, ValueError):
        raise GpuAssignmentError(f"GPU ids {list(ids)} are not device indices (set CUDA_VISIBLE_DEVICES by index)")
    nvml, why = _nvml()
    if nvml is None:
        raise GpuAssignmentError(f"can't tell the assigned GPUs {list(indices)} apart: {why}")
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        return tuple(GpuDevice(i, int(nvml.nvmlDeviceGetMinorNumber(h)), _text(nvml.nvmlDeviceGetUUID(h)))
                     for i, h in zip(indices, handles))
    except Exception as e:
        raise GpuAssignmentError(f"NVML can't read the assigned GPUs {list(indices)}: {e}") from e


class VramSampler:
    """`with VramSampler() as s:` samples used GPU memory in a thread; afterwards `s.peak_mb` is
    the peak above the memory in use at the start (None without NVML) and `s.device_name` the
    first sampled GPU's name ("" without NVML). `indices`: only these GPUs (a worker's), else all."""

    def __init__(self, enabled: bool = True, interval_s: float = SAMPLE_INTERVAL_S, indices: tuple[int, ...] | None = None):
        self.enabled = enabled
        self.interval_s = interval_s
        self.indices = indices
        self.peak_mb: float | None = None
        self.device_name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "VramSampler":
        if not self.enabled:
            return self
        nvml, _ = _nvml()
        if nvml is None:
            return self
        try:
            which = range(nvml.nvmlDeviceGetCount()) if self.indices is None else self.indices
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in which]
            if not handles:
                return self
            self.device_name = _text(nvml.nvmlDeviceGetName(handles[0]))
            start = self._used(nvml, handles)
        except Exception:
            return self
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._sample, args=(nvml, handles, start), daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _used(nvml, handles) -> int:
        return sum(nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)

    def _sample(self, nvml, handles, start: int) -> None:
        while True:
            try:
                above = (self._used(nvml, handles) - start) / 2**20
                self.peak_mb = max(self.peak_mb or 0.0, round(above, 1))
            except Exception:
                pass  # a failed read is a missed sample, never a failed run
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
