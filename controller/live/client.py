"""The live channel's client: how `charter` commands, the TUI and tools talk to a running controller.

`LiveClient(state_dir)` opens a connection to the lab's `.charter/control.sock` for each call,
says hello (`controller.live.protocol`), sends one typed request and returns the typed answer
(`watch` keeps its connection and yields frames until closed). Errors are one line each:
`ControllerUnreachable` when no controller listens (no socket, or a stale one: callers then use
the ledger file themselves), `ProtocolMismatch` when the controller speaks another protocol
version, `RequestRefused` when it answered `ok: false`, and `LiveError`, their base, for the rest
(a controller that does not answer in time, a socket of another user).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.live.protocol import (
    HELLO,
    MAX_EVENTS,
    MAX_REPLY_BYTES,
    PROTOCOL_VERSION,
    CommandReply,
    CommandRequest,
    EventsRequest,
    ExportRequest,
    NoteRequest,
    QueryRequest,
    ReportRequest,
    Request,
    StatusRequest,
    VerifyRequest,
    WatchFrame,
    WatchRequest,
    WireEvent,
    hello,
    mismatch_message,
    parse_watch_frame,
    socket_path,
)
from controller.live.status import StatusSnapshot
from ledger import VerifyResult


class LiveError(Exception):
    """Talking to the controller failed; the message is one line for a person."""


class ControllerUnreachable(LiveError):
    """No controller is listening for this lab (no socket, or one a dead controller left)."""


class ProtocolMismatch(LiveError):
    """The controller speaks another version of the live protocol."""


class RequestRefused(LiveError):
    """The controller answered the request with an error (its message is this one)."""


class LiveClient:
    """Typed calls to the controller serving `state_dir` (the lab's `.charter/`)."""

    def __init__(self, state_dir: Path, timeout: float = 30.0):
        self.state_dir = Path(state_dir)
        self.path = socket_path(self.state_dir)
        self.timeout = timeout

    # -- calls -------------------------------------------------------------------------------------

    def status(self) -> StatusSnapshot:
        return StatusSnapshot.from_json(self._call(StatusRequest())["status"])

    def events(self, after_seq: int = 0, limit: int = MAX_EVENTS) -> list[WireEvent]:
        """Up to `limit` events with seq > after_seq; fewer than `limit` means there are no more now."""
        reply = self._call(EventsRequest(after_seq=after_seq, limit=limit))
        return [WireEvent.from_json(e) for e in reply["events"]]

    def watch(self, after_seq: int = 0, with_status: bool = False) -> Watch:
        """Frames for every event after `after_seq` as it is recorded (see `Watch`)."""
        conn = self._connect()
        try:
            conn.send(WatchRequest(after_seq=after_seq, with_status=with_status))
            conn.sock.settimeout(None)  # a watch may rightly be silent for as long as a run trains
        except BaseException:
            conn.close()
            raise
        return Watch(conn)

    def query(self, sql: str, limit: int = 10_000) -> dict[str, Any]:
        """`ledger.query.run_readonly_query`'s answer, run on the controller's connection."""
        reply = self._call(QueryRequest(sql=sql, limit=limit))
        return {k: reply[k] for k in ("columns", "types", "rows", "truncated")}

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        r = self._call(VerifyRequest(anchor=tuple(anchor) if anchor else None))["result"]
        return VerifyResult(r["ok"], r["count"], tuple(r["head"]) if r["head"] else None, r["bad_seq"], r["problem"])

    def report(self, out: Path, session: str | None = None) -> tuple[Path, Path]:
        reply = self._call(ReportRequest(out=str(Path(out).absolute()), session=session))
        return Path(reply["markdown"]), Path(reply["chart"])

    def export(self, out: Path, fmt: str, session: str | None = None) -> list[Path]:
        reply = self._call(ExportRequest(out=str(Path(out).absolute()), format=fmt, session=session))
        return [Path(p) for p in reply["paths"]]

    def note(self, by: str, text: str) -> int:
        """Record a note through the controller; returns its seq."""
        return int(self._call(NoteRequest(by=by, text=text))["seq"])

    def command(self, op: str, by: str, reason: str = "") -> CommandReply:
        """pause / stop / resume, applied by the controller's loop."""
        reply = self._call(CommandRequest(op=op, by=by, reason=reason))
        return CommandReply(gate=reply.get("gate"), queued=bool(reply.get("queued")), message=reply.get("message"))

    # -- the connection ----------------------------------------------------------------------------

    def _call(self, request: Request) -> dict[str, Any]:
        with contextlib.closing(self._connect()) as conn:
            conn.send(request)
            reply = conn.receive()
        if reply is None:
            raise ControllerUnreachable(f"the controller for {self.lab} closed the connection without answering")
        if not reply.get("ok"):
            raise RequestRefused(str(reply.get("error") or "the controller refused the request"))
        return reply

    @property
    def lab(self) -> Path:
        return self.state_dir.parent

    def _connect(self) -> _Connection:
        """A connection that has said hello and heard this protocol version back."""
        if not self.path.exists():
            raise ControllerUnreachable(f"no controller is running for {self.lab}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            raise ControllerUnreachable(f"no controller is running for {self.lab} (stale socket)") from None
        except PermissionError:
            sock.close()
            raise LiveError(f"cannot connect to {self.path}: permission denied (only the lab's owner may)") from None
        conn = _Connection(sock, self)
        try:
            conn.send_frame(hello())
            answer = conn.receive()
            if answer is None:
                raise ControllerUnreachable(f"the controller for {self.lab} closed the connection without answering")
            if answer.get("hello") == HELLO:
                if answer.get("version") != PROTOCOL_VERSION:
                    raise ProtocolMismatch(mismatch_message(answer.get("version"), PROTOCOL_VERSION))
                return conn
            if "version" not in answer:  # a controller from before the versioned protocol answers like this
                raise ProtocolMismatch(f"the controller for {self.lab} does not speak the live protocol version "
                                       f"{PROTOCOL_VERSION} (it is an older Charter); restart it with this version.")
            if answer.get("version") != PROTOCOL_VERSION:
                raise ProtocolMismatch(str(answer.get("error") or mismatch_message(answer.get("version"), PROTOCOL_VERSION)))
            raise RequestRefused(str(answer.get("error") or "the controller refused the connection"))
        except BaseException:
            conn.close()
            raise


class _Connection:
    """One socket with its line reader; errors become LiveErrors."""

    def __init__(self, sock: socket.socket, client: LiveClient):
        self.sock = sock
        self.client = client
        self.reader = sock.makefile("rb")

    def send(self, request: Request) -> None:
        self.send_frame(request.to_json())

    def send_frame(self, frame: dict[str, Any]) -> None:
        try:
            self.sock.sendall((json.dumps(frame) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            raise ControllerUnreachable(f"the controller for {self.client.lab} closed the connection") from None
        except TimeoutError:
            raise LiveError(f"the controller for {self.client.lab} did not read a request in {self.client.timeout:g} s") from None

    def receive(self) -> dict[str, Any] | None:
        """The next frame, or None when the controller closed the connection."""
        try:
            line = self.reader.readline(MAX_REPLY_BYTES + 1)
        except TimeoutError:
            raise LiveError(f"the controller for {self.client.lab} did not answer in {self.client.timeout:g} s") from None
        except ConnectionResetError:
            return None
        if not line:
            return None
        if len(line) > MAX_REPLY_BYTES:
            raise LiveError(f"the controller's reply is longer than {MAX_REPLY_BYTES} bytes; ask for less (a smaller --limit)")
        try:
            frame = json.loads(line)
        except ValueError:
            raise LiveError(f"the controller for {self.client.lab} sent a frame that is not JSON") from None
        if not isinstance(frame, dict):
            raise LiveError(f"the controller for {self.client.lab} sent a frame that is not a JSON object")
        return frame

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()


class Watch:
    """An open watch: iterate it for `EventsFrame` and `StatusFrame` values; it ends when the
    controller closes. `close()` ends it from any thread (a reader blocked in `next` wakes and stops);
    use it as a context manager to close it on the way out."""

    def __init__(self, conn: _Connection):
        self._conn = conn
        self._closed = False

    def __iter__(self) -> Iterator[WatchFrame]:
        return self

    def __next__(self) -> WatchFrame:
        if self._closed:
            raise StopIteration
        try:
            frame = self._conn.receive()
        except (OSError, ValueError):
            if self._closed:  # closed from another thread while this one was reading
                raise StopIteration from None
            raise
        if frame is None:
            self.close()
            raise StopIteration
        if frame.get("ok") is False:
            self.close()
            raise RequestRefused(str(frame.get("error") or "the controller refused the watch"))
        return parse_watch_frame(frame)

    def close(self) -> None:
        """End the watch: the controller sees the connection close and stops streaming."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
