"""Fixtures for the amendment tests: real ed25519 keys made by ssh-keygen, a real git lab with
two ratifiers, and the real `charter` command line run in-process (its one-line errors included)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cli import main
from controller.workspace.lab import Lab, RatifierChoice, init_lab


@dataclass(frozen=True)
class Key:
    name: str
    private: Path
    public: Path

    @property
    def line(self) -> str:
        return self.public.read_text().strip()


def make_key(where: Path, name: str) -> Key:
    private = where / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(private)], check=True)
    return Key(name, private, private.with_suffix(".pub"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Key]:
    where = tmp_path_factory.mktemp("keys")
    return {n: make_key(where, n) for n in ("alice", "bob", "carol", "mallory")}


@pytest.fixture
def short_dir():
    # a Unix socket's path must fit in 108 bytes: tests that serve a live channel use /tmp directly
    d = Path(tempfile.mkdtemp(prefix="amend-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lab(short_dir, keys) -> Lab:
    """A fresh lab whose ratifiers are alice and bob (default tiers: minor 1, major 1, constitutional 2)."""
    return init_lab(short_dir / "lab", ratifiers=[RatifierChoice(n, keys[n].line) for n in ("alice", "bob")])


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def charter(capsys):
    """Run `charter ARGS...` in-process, as a person types it."""
    def run(*args) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        got = capsys.readouterr()
        return Result(code, got.out, got.err)
    return run
