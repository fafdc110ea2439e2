"""Several workers on a gpu lab (issue 17): each run sees, and is charged for, only its own GPUs.

No GPU here, so NVML is a stand-in module (a few functions over a fixed table of devices,
written to a file and imported as `pynvml`) and device nodes are char devices made with mknod
in a temporary tree. What is real: Ray's assignment of GPU ids to concurrent tasks (a local
cluster with two logical GPUs), bubblewrap showing the nodes, and our mapping and filtering.
"""

import importlib
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import constitution
from constitution.schema import Scale
from controller.execution import gpu, gpu_binds, ray_pool, sandbox
from controller.execution.runner import Runner
from controller.execution.sandbox import SandboxSpec

# index -> (minor, uuid, used bytes); minors deliberately not equal to indices
FAKE_NVML = textwrap.dedent('''
    DEVICES = [(3, "GPU-aaaa", 100 << 20), (1, "GPU-bbbb", 2000 << 20)]
    def nvmlInit(): pass
    def nvmlDeviceGetCount(): return len(DEVICES)
    def nvmlDeviceGetHandleByIndex(i):
        if not 0 <= i < len(DEVICES): raise RuntimeError(f"NVML: invalid index {i}")
        return i
    def nvmlDeviceGetMinorNumber(h): return DEVICES[h][0]
    def nvmlDeviceGetUUID(h): return DEVICES[h][1].encode()
    def nvmlDeviceGetName(h): return b"Fake H100"
    class _Mem:
        def __init__(self, used): self.used = used
    def nvmlDeviceGetMemoryInfo(h): return _Mem(DEVICES[h][2])
''')


@pytest.fixture
def fake_nvml(tmp_path, monkeypatch):
    d = tmp_path / "nvml"
    d.mkdir()
    (d / "pynvml.py").write_text(FAKE_NVML)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    yield importlib.import_module("pynvml"), d
    sys.modules.pop("pynvml", None)


def test_assigned_gpus_are_read_from_nvml_by_index(fake_nvml):
    assert gpu.assigned([1]) == (gpu.GpuDevice(1, 1, "GPU-bbbb"),)
    assert gpu.assigned(["0", 1]) == (gpu.GpuDevice(0, 3, "GPU-aaaa"), gpu.GpuDevice(1, 1, "GPU-bbbb"))
    with pytest.raises(gpu.GpuAssignmentError, match="not device indices"):
        gpu.assigned(["GPU-aaaa"])
    with pytest.raises(gpu.GpuAssignmentError, match="invalid index 5"):
        gpu.assigned([5])


def test_without_nvml_the_assigned_gpus_cant_be_told_apart(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(gpu.GpuAssignmentError, match="nvidia-ml-py"):
        gpu.assigned([0])


def until(condition, tries=2000):
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.005)


def test_the_sampler_counts_only_its_gpus(fake_nvml):
    nvml, _ = fake_nvml
    with gpu.VramSampler(interval_s=0.01, indices=(0,)) as mine:
        nvml.DEVICES[1] = (1, "GPU-bbbb", 9000 << 20)   # the neighbour's run grows
        nvml.DEVICES[0] = (3, "GPU-aaaa", 600 << 20)    # ours grows by 500 MB
        until(lambda: mine.peak_mb == 500.0)           # the sampler's thread picks it up
    with gpu.VramSampler(interval_s=0.01) as every:     # a single worker: all GPUs
        nvml.DEVICES[1] = (1, "GPU-bbbb", 9100 << 20)
        until(lambda: every.peak_mb == 100.0)
    assert (mine.peak_mb, every.peak_mb) == (500.0, 100.0)


def test_a_workers_runs_get_its_gpus_by_uuid_and_node(tmp_path):
    rules = constitution.load_default()
    worker = Runner(tmp_path, rules, "none", gpus=(gpu.GpuDevice(1, 1, "GPU-bbbb"),))
    assert worker._env()["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
    assert worker._gpu_minors() == (1,)
    single = Runner(tmp_path, rules, "none")
    assert single._gpu_minors() is None
    assert single._env().get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def _nodes(root, minors):
    dev = root / "dev"
    dev.mkdir(parents=True)
    for m in minors:
        os.mknod(dev / f"nvidia{m}", 0o666 | stat.S_IFCHR, os.makedev(195, m))
    os.mknod(dev / "nvidiactl", 0o666 | stat.S_IFCHR, os.makedev(195, 255))
    return root


def test_gpu_binds_show_only_the_given_nodes(tmp_path):
    root = _nodes(tmp_path, (0, 1, 3))
    names = lambda binds: sorted(str(b.dest) for b in binds)  # noqa: E731
    assert names(gpu_binds.gpu_binds(root, minors=(1,))) == ["/dev/nvidia1", "/dev/nvidiactl"]
    assert names(gpu_binds.gpu_binds(root, minors=(3, 0))) == ["/dev/nvidia0", "/dev/nvidia3", "/dev/nvidiactl"]
    assert names(gpu_binds.gpu_binds(root)) == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia3", "/dev/nvidiactl"]


@pytest.mark.skipif(os.geteuid() != 0 or sandbox.detect_level()[0] != "bubblewrap",
                    reason="mknod and bubblewrap need root here (.ci/run runs as root)")
def test_inside_the_sandbox_only_the_given_gpu_node_exists(tmp_path, monkeypatch):
    root = _nodes(tmp_path / "host", (0, 1))
    real = gpu_binds.gpu_binds
    monkeypatch.setattr(gpu_binds, "has_gpu_node", lambda dev=None: True)
    monkeypatch.setattr(gpu_binds, "gpu_binds", lambda _root, ld, shown, minors=None: real(root, ld, shown, minors))
    work = tmp_path / "work"
    work.mkdir()

    def dev_inside(gpus):
        spec = SandboxSpec(argv=["/bin/ls", "/dev"], cwd=work, writable=[], hidden=[], env={"PATH": "/usr/bin:/bin"},
                           timeout_s=30, memory_mb=64, max_processes=8, max_file_mb=1, gpus=gpus)
        out = subprocess.run(sandbox.bwrap_argv(spec), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return {n for n in out.stdout.split() if n.startswith("nvidia")}

    assert dev_inside((1,)) == {"nvidia1", "nvidiactl"}
    assert dev_inside(None) == {"nvidia0", "nvidia1", "nvidiactl"}


def test_several_workers_on_a_gpu_lab_need_nvml_and_a_gpu_each(fake_nvml, monkeypatch):
    two = Scale(workers=2, backend="ray")
    assert "need 2 GPUs of their own; this machine has 1" in ray_pool.ray_refusal(two, "gpu", 0, ("H100",))
    if importlib.util.find_spec("ray") is not None:
        assert ray_pool.ray_refusal(two, "gpu", 0, ("H100", "H100")) is None
    remote = Scale(workers=2, backend="ray", ray_address="auto")  # the cluster's GPUs, not this machine's
    if importlib.util.find_spec("ray") is not None:
        assert ray_pool.ray_refusal(remote, "gpu", 0, ()) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: find_spec says None
    assert "need NVML" in ray_pool.ray_refusal(two, "gpu", 0, ("H100", "H100"))
    assert ray_pool.ray_refusal(Scale(workers=1), "gpu", 0, ()) is None  # one worker: every GPU, as before



def test_concurrent_ray_tasks_get_gpus_of_their_own(fake_nvml, tmp_path):
    ray = pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    _, nvml_dir = fake_nvml
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(nvml_dir)}})
    try:
        gate = tmp_path / "both-started"
        gate.mkdir()

        @ray.remote(num_gpus=1, num_cpus=1, max_retries=0)
        def task(n):
            (gate / str(n)).touch()
            while len(list(gate.iterdir())) < 2:  # both hold their GPU at once
                time.sleep(0.05)
            return ray_pool.worker_gpus()

        got = ray.get([task.remote(0), task.remote(1)], timeout=120)
    finally:
        ray.shutdown()
    assert sorted(got, key=lambda devices: devices[0].index) == [(gpu.GpuDevice(0, 3, "GPU-aaaa"),), (gpu.GpuDevice(1, 1, "GPU-bbbb"),)]
