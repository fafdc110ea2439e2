"""Helpers for governed-loop tests: run the real CLI, queue proposals, set train.py constants."""

import os
import socket
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


class Listener:
    """A listening Unix socket on the host that counts the connections it gets."""

    def __init__(self, path, mode=None):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        if mode is not None:
            os.chmod(self.path, mode)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def accepted(self):
        n = 0
        while True:
            try:
                self.sock.accept()[0].close()
                n += 1
            except BlockingIOError:
                return n

    def close(self):
        self.sock.close()
        os.unlink(self.path)
