"""Fixtures for governed-loop tests: a prepared cache over a small local corpus, tiny labs."""

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from controller.workspace.lab import Lab, init_lab
from controller.workspace.preparation import prepare_lab

# a tiny model and budgets so one experiment (train + evaluate) takes seconds on 2 cores
TINY_TRAIN = dict(DEPTH="1", MODEL_DIM="32", HEAD_DIM="16", DEVICE_BATCH_SIZE="4", TOTAL_BATCH_SIZE="1024")
TINY_RULES = {
    "training_seconds = 60": "training_seconds = 6",  # start-up (~2.5 s, up to 5 cold) included: ~3 s of training
    # the wall clock: a tiny run's single-threaded start-up counts half on the cpu clock, which makes
    # every session test slower; test_cpu_clock covers the cpu clock through the Runner and sandbox
    'clock = "cpu" ': 'clock = "wall" ',
    "grace_seconds = 5 ": "grace_seconds = 10 ",
    "eval_tokens = 32768 ": "eval_tokens = 4096 ",
    "probation_experiments = 3": "probation_experiments = 1",
    "cooldown_seconds = 5": "cooldown_seconds = 0",
    "confirmation_runs = 1      # every candidate": "confirmation_runs = 0      # every candidate",
    # one baseline run and no confirmations: the noise-aware rule itself is tested in test_keep_rule
    # and test_noise; sessions that exercise repeats set these back up
    "baseline_runs = 2 ": "baseline_runs = 1 ",
    "confirmation_runs = 2      # a promising": "confirmation_runs = 0      # a promising",
}


def make_corpus(root: Path, max_bytes: int = 300_000) -> Path:
    """Real text without the network: the installed stdlib's sources, one .txt per module."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:12_000]
        (root / f"{path.stem}.txt").write_text(text, encoding="utf-8")
        total += len(text)
        if total >= max_bytes:
            break
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "text")


@pytest.fixture(scope="session", autouse=True)
def charter_env(tmp_path_factory):
    """One cache for the whole test session; eager mode (no 20 s compile) for tiny runs."""
    cache = tmp_path_factory.mktemp("charter-cache")
    old = dict(os.environ)
    os.environ.update(CHARTER_CACHE_DIR=str(cache), CHARTER_NO_COMPILE="1", HF_HUB_OFFLINE="1")
    os.environ.pop("CHARTER_LAB", None)
    yield cache
    os.environ.clear()
    os.environ.update(old)


def edit_lab(lab: Lab, rules: dict[str, str] | None = None, train: dict[str, str] | None = None, message: str = "test set-up") -> None:
    """Edit the lab's constitution lines and train.py constants, then commit."""
    text = lab.constitution_path.read_text()
    for old, new in (rules or {}).items():
        assert old in text, f"{old!r} not in constitution"
        text = text.replace(old, new, 1)
    lab.constitution_path.write_text(text)
    src = (lab.root / "train.py").read_text()
    for name, value in (train or {}).items():
        src, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value} ", src, flags=re.M)
        assert n == 1, name
    (lab.root / "train.py").write_text(src)
    lab.git.commit_all(message)


@pytest.fixture
def make_lab(tmp_path, corpus):
    """A prepared lab with tiny budgets; extra rule/train edits per test."""
    def make(rules=None, train=None, name="lab") -> Lab:
        lab = init_lab(tmp_path / name)
        edit_lab(lab, {**TINY_RULES, **(rules or {})}, {**TINY_TRAIN, **(train or {})})
        prepare_lab(lab, quiet=True, source=str(corpus))
        return lab
    return make
