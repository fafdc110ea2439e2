"""What the controller measures about a GPU run, with fixed numbers (MFU, VRAM limits, what the
ledger records), and the sandbox's CUDA binds as a function of a fake root tree."""

import math
from pathlib import Path, PurePosixPath

import pytest

import constitution
from controller.execution import gpu, sandbox
from controller.execution.gpu_binds import gpu_binds
from controller.execution.runner import RunOutcome
from controller.execution.sandbox import SandboxResult, SandboxSpec
from controller.policy.device import flops_per_token, mfu, peak_flops, run_mfu, vram_check
from controller.session.device_use import training_fields, with_device_use


# -- MFU ------------------------------------------------------------------------------------------

def test_flops_per_token_counts_non_embedding_params_and_attention():
    # 6 * (1000 - 10 * 4) + 12 * 2 layers * 4 wide * 8 long
    assert flops_per_token(1000, vocab_size=10, n_layer=2, n_embd=4, seq_len=8) == 6 * 960 + 768


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # the PCIe part is not mistaken for the SXM
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and peak_flops("Some Future GPU") is None


def test_mfu_of_the_gpu_lab_model_at_upstream_like_throughput():
    # the gpu profile's model: vocab 8192, depth 8, width 512, seq 2048; 33.6M params
    # (blocks 8 * 12 * 512^2, wte and lm_head 8192 * 512 each)
    params = 8 * 12 * 512 * 512 + 2 * 8192 * 512
    per_token = flops_per_token(params, 8192, 8, 512, 2048)
    assert per_token == 6 * (params - 8192 * 512) + 12 * 8 * 512 * 2048
    assert math.isclose(per_token, 276.9e6, rel_tol=1e-3)
    value = mfu(1.25e6, per_token, peak_flops("NVIDIA H100 80GB HBM3"))
    assert math.isclose(value, 1.25e6 * per_token / 989e12)
    assert 0.34 < value < 0.36  # 1.25M tokens/s on this model is ~35% of an H100's bf16 peak
    assert mfu(2.0e6, per_token, None) is None and mfu(0.0, per_token, 1e15) is None


def test_run_mfu_reads_config_and_stats_and_gives_none_for_anything_missing():
    kwargs = dict(vocab_size=10, n_layer=2, n_embd=4, seq_len=8)
    stats = dict(num_params=1000, tokens_per_second=1e9)
    assert run_mfu(kwargs, stats, "NVIDIA H100 80GB HBM3") == round(1e9 * 6528 / 989e12, 4)
    assert run_mfu(kwargs, {"num_params": 1000}, "NVIDIA H100 80GB HBM3") is None
    assert run_mfu(kwargs, dict(stats, tokens_per_second="fast"), "NVIDIA H100 80GB HBM3") is None
    assert run_mfu({}, stats, "NVIDIA H100 80GB HBM3") is None
    assert run_mfu(kwargs, stats, "cpu") is None
    # a hostile run's claim of 1e308 tokens/s gives no MFU, never inf (the ledger refuses inf)
    assert run_mfu(kwargs, dict(stats, tokens_per_second=1e308), "NVIDIA H100 80GB HBM3") is None


# -- VRAM limits ----------------------------------------------------------------------------------

def test_vram_check_soft_moves_the_gate_hard_is_a_violation_nothing_measured_never_fires():
    assert vram_check(None, 1, 2) == vram_check(10_000, None, None) == vram_check(50_000, 64_000, 78_000)
    assert not vram_check(None, 1, 2).soft_exceeded
    soft = vram_check(70_000, 64_000, 78_000)
    assert soft.soft_exceeded and not soft.hard_exceeded
    hard = vram_check(79_000.4, 64_000, 78_000)
    assert hard.hard_exceeded and hard.soft_exceeded
    assert hard.reason == "training used 79000 MB of GPU memory, over budgets.experiment.vram_hard_mb = 78000"


def test_the_schema_keeps_vram_soft_under_hard():
    text = constitution.default_text().replace("disk_mb = 2048             # largest file",
                                               "vram_soft_mb = 9\nvram_hard_mb = 8\ndisk_mb = 2048 # largest file")
    with pytest.raises(constitution.ConstitutionError) as e:
        constitution.parse_text(text, "c.toml")
    assert e.value.problems == ["c.toml: budgets.experiment: vram_soft_mb must not exceed vram_hard_mb"]


def _outcome(peak=None, soft=False, hard=False):
    t = SandboxResult(0, False, False, 1.0, 10.0, "none", "")
    return RunOutcome("ok", "", 1.0, t, None, {}, peak_vram_mb=peak, device_name="NVIDIA H200" if peak else "",
                      mfu=0.41 if peak else None, vram_soft_exceeded=soft, vram_hard_exceeded=hard)


def test_what_the_ledger_records_per_run_and_per_experiment():
    assert training_fields(_outcome(100.0)) == {"peak_vram_mb": 100.0, "device_name": "NVIDIA H200", "mfu": 0.41}
    use = {"memory_soft_exceeded": False, "peak_rss_mb": 10.0}
    assert with_device_use(use, [_outcome(), _outcome()]) is use  # a CPU machine: nothing changes
    soft = with_device_use(use, [_outcome(100.0), _outcome(70_000.0, soft=True)])
    assert soft == dict(use, peak_vram_mb=70_000.0, vram_soft_exceeded=True, memory_soft_exceeded=True)
    hard = with_device_use(use, [_outcome(90_000.0, soft=True, hard=True)])
    assert hard["hard_violation"] is True
    assert "hard_violation" not in soft


def test_the_sampler_measures_nothing_without_nvml_or_when_off():
    with gpu.VramSampler(enabled=False) as off:
        pass
    assert (off.peak_mb, off.device_name) == (None, "")
    with gpu.VramSampler(interval_s=0.01) as s:  # this CPU host: no driver, so no reading
        pass
    assert gpu.probe().usable or s.peak_mb is None


# -- CUDA inside the sandbox ------------------------------------------------------------------------

def _fake_root(root: Path) -> Path:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null", "dri", "nvidia-uvm-stuff"):
        (root / "dev").mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).write_text("")  # plain files stand in for device nodes
    (root / "dev" / "nvidia-caps").mkdir()
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    multiarch = root / "usr" / "lib" / "x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    for lib in ("libcuda.so.1", "libnvidia-ml.so.550.54.15", "libc.so.6"):
        (multiarch / lib).write_text("")
    container = root / "usr" / "local" / "nvidia" / "lib64"
    container.mkdir(parents=True)
    for lib in ("libcuda.so", "libcuda.so.1", "libnvidia-ptxjitcompiler.so.1", "libcudart.so.12", "libfoo.so"):
        (container / lib).write_text("")
    (root / "opt" / "drv").mkdir(parents=True)
    (root / "opt" / "drv" / "libnvidia-nvvm.so.4").write_text("")
    return root


def test_gpu_binds_are_exactly_what_cuda_needs_of_what_exists(tmp_path):
    root = _fake_root(tmp_path)
    ld_cache = ("/opt/drv/libnvidia-nvvm.so.4", "/opt/drv/libmissing-but-cached.so", "/usr/lib/libcuda.so.9")
    binds = gpu_binds(root, ld_cache, shown=("/usr/lib",))
    got = {(b.option, str(b.dest)) for b in binds}
    assert got == {
        ("--dev-bind", "/dev/nvidia0"), ("--dev-bind", "/dev/nvidia1"), ("--dev-bind", "/dev/nvidiactl"),
        ("--dev-bind", "/dev/nvidia-uvm"), ("--dev-bind", "/dev/nvidia-caps"),
        ("--ro-bind", "/proc/driver/nvidia"),
        # the multiarch libraries sit in /usr/lib, which the sandbox shows already
        ("--ro-bind", "/usr/local/nvidia/lib64/libcuda.so"), ("--ro-bind", "/usr/local/nvidia/lib64/libcuda.so.1"),
        ("--ro-bind", "/usr/local/nvidia/lib64/libnvidia-ptxjitcompiler.so.1"),
        ("--ro-bind", "/opt/drv/libnvidia-nvvm.so.4"),  # found through the loader's cache only
    }
    assert all(b.source == root / PurePosixPath(b.dest).relative_to("/") for b in binds)
    # nothing is writable: only device nodes are device binds
    assert {b.option for b in binds if not str(b.dest).startswith("/dev/")} == {"--ro-bind"}
    unshown = {str(b.dest) for b in gpu_binds(root, (), shown=())}
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in unshown and "/usr/lib/x86_64-linux-gnu/libc.so.6" not in unshown


def test_no_gpu_node_means_no_binds(tmp_path):
    root = _fake_root(tmp_path)
    for name in ("nvidia0", "nvidia1"):
        (root / "dev" / name).unlink()
    assert gpu_binds(root, ("/opt/drv/libnvidia-nvvm.so.4",)) == []
    assert gpu_binds(tmp_path / "absent") == []


def test_the_sandbox_on_this_cpu_host_binds_nothing_of_nvidia_and_keeps_the_network_off(tmp_path):
    spec = SandboxSpec(argv=["true"], cwd=tmp_path, writable=[], hidden=[], env={}, timeout_s=1, memory_mb=64,
                       max_processes=8, max_file_mb=1)
    argv = sandbox.bwrap_argv(spec)
    assert "--unshare-net" in argv
    if not gpu.device_nodes():  # this machine (no GPU): not one nvidia path, no /sys
        assert not [a for a in argv if "nvidia" in a or a == "/sys" or a.startswith("/usr/local/cuda")]
    else:  # a GPU host: its nodes are device-bound
        assert "--dev-bind" in argv
