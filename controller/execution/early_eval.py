"""An evaluator started just before the training's stop, released once the run is saved.

An evaluation's fixed cost is start-up: an interpreter, the data and tokenizer checks, and two
model workers importing torch, about 2.5 s of a 5 s evaluation on 2 cores. Started a few seconds
before the controller sends the run its stop signal (`runner.EARLY_EVAL_LEAD_S`, in the idle
scheduling class, so it takes only CPU the run leaves), that start-up overlaps the run's last
steps and its saving instead of following them. The evaluator reads nothing of the run before the controller's
word: `prepare.py evaluate --go FILE` waits for FILE, which the runner writes (by a rename) only
after the training's whole process tree is gone: "go", or "cancel" when there is nothing to score
(a crash, a run over its budget, a person's stop). The evaluator's pid reaches the session (which
kills what is in flight on a stop) only at the release, so that until then a stop still finds the
training run. A lab whose pinned evaluator has no `--go` (`supports_go`, asked once per
evaluator file) is evaluated as before, after training.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from controller.execution.sandbox import SandboxResult

GO = "go"
CANCEL = "cancel"

_supported: dict[tuple, bool] = {}


def supports_go(argv: list[str], work_dir: Path, env: dict[str, str]) -> bool:
    """Whether the lab's evaluate command takes `--go FILE` (its --help says so). The command and
    its files are pinned and trusted; the answer is kept per command and prepare.py content."""
    script = work_dir / "prepare.py"
    try:
        digest = hashlib.sha256(script.read_bytes()).hexdigest() if script.is_file() else ""
    except OSError:
        return False
    key = (tuple(argv), str(work_dir), digest)
    if key not in _supported:
        try:
            out = subprocess.run([*argv, "--help"], cwd=work_dir, env=env, capture_output=True, text=True, timeout=60)
            _supported[key] = out.returncode == 0 and "--go" in out.stdout
        except (OSError, subprocess.SubprocessError):
            _supported[key] = False
    return _supported[key]


def tell(go_file: Path, word: str) -> None:
    """The controller's word, whole or not at all (an evaluator never reads half of it)."""
    tmp = go_file.with_name(go_file.name + ".tmp")
    tmp.write_text(word)
    os.replace(tmp, go_file)


class EarlyEvaluator:
    """One evaluation started on another thread at `start` (the sandbox's on_stop) and joined at
    `release` or `cancel`. `evaluate(on_start)` runs the evaluator's sandbox to its end."""

    def __init__(self, go_file: Path, evaluate: Callable[[Callable[[int], None]], tuple[SandboxResult, dict]]):
        self.go_file = go_file
        self._evaluate = evaluate
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._publish: Callable[[int], None] | None = None
        self._released = False
        self._outcome: tuple[SandboxResult, dict] | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="early-evaluator", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = self._evaluate(self._started)
        except BaseException as e:  # re-raised on the runner's thread by release
            self._error = e

    def _started(self, pid: int) -> None:
        with self._lock:
            self._pid = pid
            publish = self._publish if self._released else None
        if publish:
            publish(pid)

    def release(self, on_start: Callable[[int], None] | None) -> tuple[SandboxResult, dict, float]:
        """The run is saved and its processes gone: let the evaluator read it, hand its pid to
        on_start, and wait for its result. Returns (sandbox result, evaluation.json, released at
        on time.monotonic())."""
        assert self._thread is not None, "release of an evaluator never started"
        tell(self.go_file, GO)
        released = time.monotonic()
        with self._lock:
            self._released, self._publish = True, on_start
            pid = self._pid
        if pid is not None and on_start:
            on_start(pid)
        self._thread.join()
        if self._error is not None:
            raise self._error
        res, result = self._outcome
        return res, result, released

    def cancel(self) -> None:
        """Nothing to score: the evaluator exits without reading the run. Harmless after release."""
        if self._thread is None or self._released:
            return
        tell(self.go_file, CANCEL)
        self._thread.join()
