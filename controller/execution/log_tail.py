"""The tail of a run's training log as an operator may see it: bounded, read safely, made printable.

`charter run`'s progress line and the TUI's Now panel show what the experiment in flight is
printing. That text is written by untrusted code, so it is read like every run-dir file (no link
followed, never blocking: `controller.execution.run_files`), only its last `max_bytes` are kept,
and every control character (terminal escapes included) is replaced by a visible `\\xNN` before
it reaches a terminal. `last_loss` picks the training loss from the trainer's step lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from controller.execution.run_files import RunFileRefused, read_run_tail

LOG_NAME = "train.log"
TAIL_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_STEP_LOSS = re.compile(r"^step \d+ \| loss ([0-9]+(?:\.[0-9]+)?)", re.M)


def printable(text: str) -> str:
    """`text` with every control character (newline and tab kept) shown as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n").replace("\r", "\n"))


def read_tail(run_dir: Path, max_bytes: int = TAIL_BYTES, name: str = LOG_NAME) -> str:
    """The last `max_bytes` of run_dir/name, decoded and printable; "" when there is none yet.
    The file is opened without following links and without blocking (a run may plant a FIFO)."""
    try:
        data, cut = read_run_tail(run_dir, name, max_bytes)
    except (OSError, RunFileRefused):
        return ""
    text = data.decode("utf-8", "replace")
    if cut:  # the first line is cut: drop it rather than show half of it
        text = text.partition("\n")[2]
    return printable(text)


def last_loss(tail: str) -> float | None:
    """The loss of the last `step NNNNN | loss X` line, or None."""
    found = _STEP_LOSS.findall(tail)
    return float(found[-1]) if found else None
