"""Where a training run's "saving" phase goes, by hand: the stop signal to the last step's end and
the files written (train.py's `---` line), and from there to the process's exit.

Runs the lab's train.py (the shipped one only: no sandbox) on the wall clock, sends SIGTERM
--after seconds after its start-up marker, and prints both spans per run.

    python bench/train_exit.py --lab DIR [--runs 3] [--after 12]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.execution.runner import HEAP_REUSE  # noqa: E402
from controller.workspace.lab import template_files  # noqa: E402


def run_once(lab: Path, after: float) -> tuple[float, float]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "CHARTER_CACHE_DIR") if k in os.environ}
    env.update(HEAP_REUSE)
    env.update(RUN_DIR=tempfile.mkdtemp(prefix="charter-exit-"), CHARTER_PROFILE="cpu", HF_HUB_OFFLINE="1",
               OMP_WAIT_POLICY="PASSIVE", CHARTER_DEADLINE=f"{time.time() + after + 120:.3f}")
    p = subprocess.Popen([sys.executable, "-u", "train.py"], cwd=lab, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out, marker, term, dash = b"", None, None, None
    while True:
        ready = select.select([p.stdout], [], [], 0.05)[0]
        now = time.monotonic()
        if marker is not None and term is None and now - marker >= after:
            p.send_signal(signal.SIGTERM)
            term = now
        if ready:
            chunk = os.read(p.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            out += chunk
            if marker is None and b"profile:" in out:
                marker = now
            if dash is None and b"\n---\n" in out:
                dash = now
    p.wait()
    if term is None or dash is None:
        raise SystemExit(f"train_exit: the run ended before its stop (exit {p.returncode}):\n{out[-2000:].decode(errors='replace')}")
    return dash - term, time.monotonic() - dash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--after", type=float, default=12.0, help="seconds of training before the stop signal")
    args = ap.parse_args()
    lab = Path(args.lab).resolve()
    if (lab / "train.py").read_bytes() != template_files()["train.py"]:
        raise SystemExit(f"train_exit: {lab / 'train.py'} is not the shipped one; this runs it unsandboxed, so only that")
    for i in range(args.runs):
        to_files, to_exit = run_once(lab, args.after)
        print(f"run {i + 1}: stop -> files written {to_files:.2f} s, files -> exit {to_exit:.2f} s", flush=True)


if __name__ == "__main__":
    main()
