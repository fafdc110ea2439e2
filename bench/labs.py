"""The lab a benchmark runs in: the one named by --lab, or a new one prepared with the shipped
defaults in a temp dir (printed, so a second run can reuse it)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.workspace.lab import Lab, find_lab, init_lab  # noqa: E402
from controller.workspace.preparation import prepare_lab  # noqa: E402


def bench_lab(lab_arg: str | None, prefix: str) -> Lab:
    if lab_arg:
        return find_lab(lab_arg)
    lab = init_lab(Path(tempfile.mkdtemp(prefix=prefix)) / "lab")
    prepare_lab(lab, quiet=True)
    print(f"lab: {lab.root} (reuse it with --lab)", flush=True)
    return lab
