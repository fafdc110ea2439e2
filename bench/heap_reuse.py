"""What keeping glibc's heap (runner.HEAP_REUSE) buys the trainer: tokens per second, by hand.

Runs the lab's train.py for --budget wall seconds after its start-up (no controller, no sandbox),
with and without MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_, in interleaved pairs, and prints the
median and spread of tokens/s, steps, CPU seconds and peak RSS from each run's stats.json.

    python bench/heap_reuse.py --lab DIR [--budget 15] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution.runner import HEAP_REUSE  # noqa: E402


def run_once(lab: Path, budget: float, heap: bool) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="charter-heap-"))
    # by hand: neither the heap setting nor a controller's clock from this environment
    env = {k: v for k, v in os.environ.items()
           if k not in HEAP_REUSE and k not in ("CHARTER_DEADLINE", "CHARTER_CPU_BUDGET", "CHARTER_CPU_THREADS")}
    env.update(RUN_DIR=str(run_dir), CHARTER_PROFILE="cpu", CHARTER_TIME_BUDGET=f"{budget:g}", HF_HUB_OFFLINE="1",
               OMP_WAIT_POLICY="PASSIVE", TORCHINDUCTOR_CACHE_DIR=str(run_dir / "cache"))
    if heap:
        env.update(HEAP_REUSE)
    try:
        subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, check=True, capture_output=True)
        return json.loads((run_dir / "stats.json").read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True)
    ap.add_argument("--budget", type=float, default=15.0)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    found: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.pairs):
        for heap in ((False, True) if i % 2 == 0 else (True, False)):
            found[heap].append(run_once(Path(args.lab).resolve(), args.budget, heap))
    print("| heap | tokens/s | steps | CPU s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for heap in (False, True):
        cells = []
        for key in ("tokens_per_second", "steps", "cpu_seconds", "peak_memory_mb"):
            v = [r[key] for r in found[heap]]
            cells.append(f"{statistics.median(v):.0f} [{min(v):.0f}, {max(v):.0f}]")
        print(f"| {'kept (HEAP_REUSE)' if heap else 'glibc default'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
