"""The live channel's server: a running controller's Unix socket in the lab's `.charter/` directory.

DuckDB lets no second process open a file that one process writes, so while a session runs every
other `charter` command (and the TUI) talks to the controller instead of the file. `LiveServer`
listens on `.charter/control.sock` (mode 0600, and a peer of another uid is refused: a sandboxed
run never gets in), speaks `controller.live.protocol` on a thread per connection, and answers
each request through the session's `LiveSource`: status, events and notes from the source itself,
pause / stop / resume through `source.command`, and the read-only `query` / `verify` / `report` /
`export` on a cursor of the controller's own connection (`source.cursor()`) with the `ledger`
functions, so a reader never blocks a write and the session need not know about them. `watch`
waits for new events in `source.wait_for_event` and writes them holding no lock of the loop, so
a slow watcher slows only its own thread. A bad request gets `{"ok": false, "error": ...}` and
never takes the controller down.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any, BinaryIO

from controller.live.protocol import (
    MAX_EVENTS,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    CommandRequest,
    EventsFrame,
    EventsRequest,
    ExportRequest,
    LiveSource,
    NoteRequest,
    ProtocolError,
    QueryRequest,
    ReportRequest,
    Request,
    StatusFrame,
    StatusRequest,
    VerifyRequest,
    WatchRequest,
    WireEvent,
    check_hello,
    hello,
    parse_request,
    socket_path,
)
from ledger.query import run_readonly_query
from ledger.verify import verify_chain

CONNECTION_TIMEOUT_S = 60.0  # a client that sends nothing, or reads nothing, this long is dropped
WATCH_WAIT_S = 1.0  # how long a watch waits for an event before it checks its client and the server


class FrameTooLarge(ProtocolError):
    """A request frame longer than MAX_REQUEST_BYTES (the connection cannot be resynchronised)."""


class LiveServer:
    """Serves `source` on state_dir/control.sock from background threads; `start()`, then `close()`."""

    def __init__(self, state_dir: Path, source: LiveSource):
        self.path = socket_path(Path(state_dir))
        self.source = source
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        # A socket file left by a controller that died: the ledger's lock already says no other
        # controller runs for this lab, so it is safe to replace.
        self.path.unlink(missing_ok=True)
        server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        server.daemon_threads = True
        os.chmod(self.path, 0o600)  # only the owner; _serve also checks the peer's uid (closes the race until here)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="charter-live", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, end every connection (watches included) and remove the socket file."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:  # wakes handlers blocked reading or writing
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._server.server_close()
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection ----------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
        conn.settimeout(CONNECTION_TIMEOUT_S)
        reader = conn.makefile("rb")
        try:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.getuid():
                _send(conn, {"ok": False, "error": f"only the lab's owner (uid {os.getuid()}) may use this controller's socket",
                             "version": PROTOCOL_VERSION})
                return
            try:
                check_hello(_read_frame(reader))
            except (ProtocolError, ValueError) as e:  # ValueError: not JSON
                _send(conn, {"ok": False, "error": _one_line(e), "version": PROTOCOL_VERSION})
                return
            _send(conn, {**hello(), "ok": True})
            while not self._closing.is_set():
                try:
                    frame = _read_frame(reader)
                    if frame is None:
                        return  # the client is done
                    request = parse_request(frame)
                except FrameTooLarge as e:
                    _send(conn, {"ok": False, "error": _one_line(e)})
                    return
                except ValueError as e:  # ProtocolError or not JSON: the next frame may be fine
                    _send(conn, {"ok": False, "error": _one_line(e)})
                    continue
                if isinstance(request, WatchRequest):
                    self._watch(conn, request)
                    return
                _send(conn, self._reply(request))
        except OSError:
            pass  # the client went away, or was too slow, or the server is closing
        except Exception as e:  # the source failed mid-watch (e.g. the session closed its ledger)
            with contextlib.suppress(OSError):
                _send(conn, {"ok": False, "error": _one_line(e)})
        finally:
            with self._lock:
                self._connections.discard(conn)
            reader.close()

    def _reply(self, request: Request) -> dict[str, Any]:
        try:
            return self._answer(request)
        except Exception as e:  # a failing request must never take the controller down
            return {"ok": False, "error": _one_line(e)}

    def _answer(self, request: Request) -> dict[str, Any]:
        """The reply to one request (OPS in protocol.py says which source method answers each)."""
        match request:
            case StatusRequest():
                return {"ok": True, "status": self.source.status().to_json()}
            case EventsRequest(after_seq=after, limit=limit):
                events = self.source.events_after(after, limit)[:limit]
                return {"ok": True, "events": [WireEvent.from_event(e).to_json() for e in events]}
            case QueryRequest(sql=sql, limit=limit):
                with self._cursor() as cur:
                    return {"ok": True, **run_readonly_query(cur, sql, limit=limit)}
            case VerifyRequest(anchor=anchor):
                with self._cursor() as cur:
                    return {"ok": True, "result": verify_chain(cur, anchor)._asdict()}
            case ReportRequest(out=out, session=session):
                from ledger.report import write_report  # pulls in matplotlib: import on first use
                with self._cursor() as cur:
                    md, png = write_report(cur, Path(out), session=session)
                return {"ok": True, "markdown": str(md), "chart": str(png)}
            case ExportRequest(out=out, format=fmt, session=session):
                from ledger.export import export_views
                with self._cursor() as cur:
                    paths = export_views(cur, Path(out), fmt, session=session)
                return {"ok": True, "paths": [str(p) for p in paths]}
            case NoteRequest(by=by, text=text):
                return {"ok": True, "seq": int(self.source.note(by, text))}
            case CommandRequest(op=op, by=by, reason=reason):
                reply = self.source.command(op, by, reason)
                if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
                    raise TypeError(f"the controller answered {op} with {reply!r:.80}, not a reply")
                return dict(reply)
        raise ProtocolError(f"op {request.op!r} has no answer in this server")

    def _cursor(self):
        return contextlib.closing(self.source.cursor())

    def _watch(self, conn: socket.socket, request: WatchRequest) -> None:
        """Stream events after request.after_seq until the client leaves or the server closes.

        Reads go through the source and return before anything is written, so however slowly the
        client reads, only this thread waits (and a client that reads nothing for
        CONNECTION_TIMEOUT_S is dropped).
        """
        seq, sent_status = request.after_seq, False
        while not self._closing.is_set():
            batch = self.source.events_after(seq, MAX_EVENTS)[:MAX_EVENTS]
            if batch:
                _send(conn, EventsFrame([WireEvent.from_event(e) for e in batch]).to_json())
                seq = batch[-1].seq
                if len(batch) == MAX_EVENTS:
                    continue  # still catching up: the rest first, the status when up to date
            if request.with_status and (batch or not sent_status):
                _send(conn, StatusFrame(self.source.status()).to_json())
                sent_status = True
            head = self.source.wait_for_event(seq, WATCH_WAIT_S)
            if head <= seq and _client_left(conn):
                return


def _read_frame(reader: BinaryIO) -> Any:
    """The next JSON frame, or None at the end of the connection."""
    line = reader.readline(MAX_REQUEST_BYTES + 1)
    if not line:
        return None
    if len(line.rstrip(b"\n")) > MAX_REQUEST_BYTES:
        raise FrameTooLarge(f"request frame longer than {MAX_REQUEST_BYTES} bytes; the connection is closed")
    return json.loads(line)


def _send(conn: socket.socket, frame: dict[str, Any]) -> None:
    conn.sendall((json.dumps(frame, default=str) + "\n").encode())


def _client_left(conn: socket.socket) -> bool:
    """True if the client closed its side, or sent anything (which also ends a watch)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux), or None where the OS cannot say."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
