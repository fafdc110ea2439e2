"""What a sandbox needs to show for CUDA to work inside it, as a pure function of what exists.

A CUDA process needs the GPU's device nodes (/dev/nvidia0.., nvidiactl, nvidia-uvm, and
nvidia-caps where MIG is on), the driver's user-space libraries (libcuda, libnvidia-ml, the PTX
JIT and NVVM; the CUDA runtime itself comes with torch's wheels, inside the interpreter's tree
the sandbox already shows) and /proc/driver/nvidia. `gpu_binds` lists exactly those that exist
under a root directory (the host's /, or a fake tree in tests): device nodes as device binds,
everything else read-only, nothing on a machine without a GPU node. Libraries are found in the
known driver directories and in the loader's cache (`ldconfig -p`, read by `ld_cache_paths`);
those inside directories the sandbox already shows are left to that bind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GPU_NODE = re.compile(r"nvidia\d+")
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
CAPS_DIR = "nvidia-caps"  # MIG capability nodes
DRIVER_LIBS = re.compile(r"lib(cuda|cudadebugger|nvidia-ml|nvidia-ptxjitcompiler|nvidia-nvvm|nvidia-gpucomp)\.so(\.[0-9.]+)?")
# where drivers put their libraries: Debian/Ubuntu multiarch, RHEL, NVIDIA's container images, WSL
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib",
            "usr/local/nvidia/lib64", "usr/local/nvidia/lib", "usr/lib/wsl/lib")
PROC_DRIVER = "proc/driver/nvidia"
# extra read-only host paths for CUDA, none by default (bench/gpu_check.sh retries with ("/sys",)
# to tell whether a failing CUDA init inside the sandbox wants sysfs)
EXTRA_PATHS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bind:
    option: str  # "--dev-bind" for device nodes, "--ro-bind" for everything else
    source: Path  # under the root
    dest: PurePosixPath  # where it shows inside the sandbox


def _under(path: PurePosixPath, dirs: tuple[PurePosixPath, ...]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def gpu_binds(root: Path = Path("/"), ld_cache: tuple[str, ...] = (), shown: tuple[str, ...] = (),
              minors: tuple[int, ...] | None = None) -> list[Bind]:
    """Every bind CUDA needs that exists under `root`; [] when there is no GPU device node.
    `ld_cache`: library paths as the loader's cache names them; `shown`: sandbox paths already
    bound whole (a library under one is not bound again); `minors`: the GPUs shown, by device
    node number (/dev/nvidia<minor>), None for all of them. CUDA can't open a GPU whose node is
    absent, so a run given one GPU of several can use no other."""
    dev = root / "dev"
    try:
        names = sorted(p.name for p in dev.iterdir())
    except OSError:
        return []
    if not any(GPU_NODE.fullmatch(n) for n in names):
        return []
    binds = [Bind("--dev-bind", dev / n, PurePosixPath("/dev", n)) for n in names
             if (GPU_NODE.fullmatch(n) and (minors is None or int(n[len("nvidia"):]) in minors)) or n in CONTROL_NODES or (n == CAPS_DIR and (dev / n).is_dir())]
    if (root / PROC_DRIVER).is_dir():
        binds.append(Bind("--ro-bind", root / PROC_DRIVER, PurePosixPath("/", PROC_DRIVER)))
    skip = tuple(PurePosixPath(s) for s in shown)
    libs: set[PurePosixPath] = set()
    for d in LIB_DIRS:
        try:
            libs.update(PurePosixPath("/", d, p.name) for p in (root / d).iterdir() if DRIVER_LIBS.fullmatch(p.name))
        except OSError:
            continue
    for line in ld_cache:
        p = PurePosixPath(line)
        if p.is_absolute() and DRIVER_LIBS.fullmatch(p.name) and (root / p.relative_to("/")).exists():
            libs.add(p)
    binds += [Bind("--ro-bind", root / p.relative_to("/"), p) for p in sorted(libs) if not _under(p, skip)]
    binds += [Bind("--ro-bind", root / PurePosixPath(e).relative_to("/"), PurePosixPath(e)) for e in EXTRA_PATHS
              if (root / PurePosixPath(e).relative_to("/")).exists()]
    return binds


def has_gpu_node(dev: Path = Path("/dev")) -> bool:
    """Cheap pre-check, so a CPU host never runs ldconfig for a sandbox."""
    try:
        return any(GPU_NODE.fullmatch(p.name) for p in dev.iterdir())
    except OSError:
        return False


def ld_cache_paths() -> tuple[str, ...]:
    """The library paths in the loader's cache (`ldconfig -p`), () where it can't be read."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.rsplit("=> ", 1)[1].strip() for line in out.splitlines() if "=> " in line)
