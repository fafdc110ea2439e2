"""The live path to a running controller: a Unix socket in the lab's `.charter/` directory.

DuckDB lets no second process open a file that one process writes, so while a session runs,
every other `charter` command talks to the controller instead of the file: `pause`, `stop` and
`resume` are queued for the session loop (which ledgers them with who), a `note` is appended at
once, and `status` and read-only `query` / `report` / `export` are answered from the
controller's own connection on a separate cursor, so a reader never blocks a write. One JSON
object per line each way.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

SOCKET_NAME = "control.sock"
COMMANDS = ("pause", "stop", "resume")  # applied by the loop between steps; others are answered at once


class ControllerUnreachable(Exception):
    """No controller is listening for this lab."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def request(state_dir: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the lab's running controller; raise ControllerUnreachable if none."""
    path = socket_path(state_dir)
    if not path.exists():
        raise ControllerUnreachable(f"no controller is running for {state_dir.parent}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        raise ControllerUnreachable(f"no controller is running for {state_dir.parent} (stale socket)") from None
    try:
        s.sendall((json.dumps(message) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ControllerUnreachable("the controller closed the connection without answering")
    return json.loads(buf)


class ControlServer:
    """Serves the socket in a background thread; commands go to `commands` for the loop."""

    def __init__(self, state_dir: Path, answer: Callable[[dict[str, Any]], dict[str, Any]]):
        self.path = socket_path(state_dir)
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.answer = answer
        self.on_command: Callable[[dict[str, Any]], None] | None = None
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(1 << 20)
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise ValueError("request must be a JSON object")
                    reply = outer._dispatch(msg)
                except Exception as e:  # a bad request must never take the controller down
                    reply = {"ok": False, "error": str(e) or type(e).__name__}
                self.wfile.write((json.dumps(reply, default=str) + "\n").encode())

        if self.path.exists():
            self.path.unlink()
        self.server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        self.server.daemon_threads = True
        os.chmod(self.path, 0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, name="charter-control", daemon=True)

    def _dispatch(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op in COMMANDS:
            done = threading.Event()
            reply: dict[str, Any] = {}
            msg = dict(msg, _done=done, _reply=reply)
            self.commands.put(msg)
            if self.on_command:
                self.on_command(msg)
            if not done.wait(timeout=20):
                return {"ok": True, "queued": True, "message": f"{op} queued; the controller applies it between steps"}
            return reply
        return self.answer(msg)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)
