"""Helpers for governed-loop tests: run the real CLI, queue proposals, set train.py constants."""

import os
import re
import subprocess
import sys
from pathlib import Path


def charter(*args, cwd=None, env=None, timeout=600):
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "controller.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env or dict(os.environ), timeout=timeout)


def queue_folder(queue: Path, name: str, files: dict[str, str], description: str | None = None) -> None:
    d = queue / name
    d.mkdir(parents=True)
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    if description:
        (d / "description.txt").write_text(description)


def with_constants(source: str, **consts) -> str:
    for name, value in consts.items():
        source, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value} ", source, flags=re.M)
        assert n == 1, name
    return source
