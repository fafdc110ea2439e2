"""The live channel on real parts: a LiveServer on a real Unix socket, serving a LiveSource backed
by a real ledger file, the typed client, the status file under concurrent writers, and the CLI's
one-line refusals when no controller runs."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import constitution
from controller.live.client import ControllerUnreachable, LiveClient, ProtocolMismatch, RequestRefused
from controller.live.protocol import (
    MAX_EVENTS,
    MAX_REQUEST_BYTES,
    OPS,
    PROTOCOL_VERSION,
    EventsFrame,
    LiveSource,
    StatusFrame,
    socket_path,
)
from controller.live.server import LiveServer
from controller.live.status import (
    Progress,
    SessionView,
    StatusSnapshot,
    build_status,
    read_status,
    write_status,
)
from controller.operators import status_from_ledger
from controller.policy import budgets
from controller.policy.gates import GateMachine
from controller.workspace.lab import init_lab
from lab_helpers import charter
from ledger import Draft, EventKind, Ledger
from ledger.payloads import GateTransition, Note, OperatorCommand, read

SAFETY_S = 30  # only a safety net against a hang; nothing here measures time
RULES = constitution.load_default()


class LedgerSource:
    """A LiveSource as a session is one: a real ledger, appends that wake waiting watchers."""

    def __init__(self, led: Ledger):
        self.led = led
        self.gate = GateMachine()
        self._new_event = threading.Condition()
        head = led.head()
        self._head = head[0] if head else 0

    def append(self, drafts: list[Draft]) -> int:
        events = self.led.append_many(drafts)
        with self._new_event:
            self._head = events[-1].seq
            self._new_event.notify_all()
        return self._head

    def notes(self, n: int, text: str = "tick") -> int:
        return self.append([Draft(EventKind.NOTE, "controller", "s-test", {"text": f"{text} {i}"}) for i in range(n)])

    # -- the LiveSource methods --
    def status(self) -> StatusSnapshot:
        view = SessionView("s-test", "test", "charter/test", datetime(2026, 1, 2, tzinfo=timezone.utc))
        return build_status(rules=RULES, gate=self.gate, gate_rule=None, gate_evidence=None, session=view,
                            progress=Progress(), usage=budgets.Usage(), inflight=None, running=True,
                            pid=os.getpid(), now=datetime.now(timezone.utc))

    def events_after(self, seq: int, limit: int):
        return self.led.events(seq)[:limit]

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        with self._new_event:
            self._new_event.wait_for(lambda: self._head > after_seq, timeout=timeout)
            return self._head

    def cursor(self):
        return self.led.cursor()

    def note(self, by: str, text: str) -> int:
        return self.append([Draft(EventKind.NOTE, f"person:{by}", None, Note(text=text).to_json())])

    def command(self, op: str, by: str, reason: str) -> dict:
        t = {"pause": self.gate.operator_pause, "stop": self.gate.operator_stop, "resume": self.gate.operator_resume}[op](f"person:{by}", reason)
        self.append([Draft(EventKind.OPERATOR_COMMAND, f"person:{by}", None, OperatorCommand(op, reason).to_json())])
        return {"ok": True, "gate": t.dest.value}


@pytest.fixture
def live():
    # a short directory: a Unix socket's path must fit in 108 bytes, pytest's tmp_path may not
    state = Path(tempfile.mkdtemp(prefix="live-", dir="/tmp")) / ".charter"
    state.mkdir()
    led = Ledger.open(state / "ledger.duckdb")
    source = LedgerSource(led)
    source.notes(3, "before")
    server = LiveServer(state, source)
    server.start()
    try:
        yield source, LiveClient(state, timeout=SAFETY_S), state
    finally:
        server.close()
        led.close()
        shutil.rmtree(state.parent, ignore_errors=True)


def raw_connection(state: Path) -> tuple[socket.socket, object]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(SAFETY_S)
    s.connect(str(socket_path(state)))
    return s, s.makefile("rb")


def send(s: socket.socket, frame) -> None:
    s.sendall((json.dumps(frame) + "\n").encode())


def said_hello(state: Path) -> tuple[socket.socket, object]:
    s, r = raw_connection(state)
    send(s, {"hello": "charter-live", "version": PROTOCOL_VERSION})
    assert json.loads(r.readline()) == {"hello": "charter-live", "version": PROTOCOL_VERSION, "ok": True}
    return s, r


def in_thread(fn):
    """Run fn in a thread; returns a queue that gets ("ok", value) or ("error", exc)."""
    out: queue.Queue = queue.Queue()

    def run():
        try:
            out.put(("ok", fn()))
        except BaseException as e:  # handed to the test thread
            out.put(("error", e))

    threading.Thread(target=run, daemon=True).start()
    return out


def result(q: queue.Queue):
    kind, value = q.get(timeout=SAFETY_S)
    if kind == "error":
        raise value
    return value


# -- hello and framing ------------------------------------------------------------------------------


def test_hello_then_requests_on_one_connection(live):
    source, client, state = live
    s, r = said_hello(state)
    send(s, {"op": "status"})
    assert json.loads(r.readline())["status"]["running"] is True
    send(s, {"op": "frobnicate"})
    reply = json.loads(r.readline())
    assert reply["ok"] is False and reply["error"].startswith("unknown op 'frobnicate'") and "\n" not in reply["error"]
    send(s, {"op": "events", "limit": 0})
    assert "limit must be between 1 and" in json.loads(r.readline())["error"]
    s.sendall(b"{not json\n")
    assert json.loads(r.readline())["ok"] is False
    send(s, {"op": "events", "after_seq": 1, "limit": 1})  # the connection still serves after bad frames
    assert [e["seq"] for e in json.loads(r.readline())["events"]] == [2]
    s.close()


def test_version_mismatch_is_one_line_then_the_connection_closes(live):
    _, client, state = live
    s, r = raw_connection(state)
    send(s, {"hello": "charter-live", "version": PROTOCOL_VERSION + 1})
    line = r.readline()
    reply = json.loads(line)
    assert reply["ok"] is False and reply["version"] == PROTOCOL_VERSION
    assert f"version {PROTOCOL_VERSION}" in reply["error"] and f"version {PROTOCOL_VERSION + 1}" in reply["error"]
    assert line.count(b"\n") == 1 and r.readline() == b""  # closed
    s, r = raw_connection(state)
    send(s, {"op": "status"})  # no hello
    assert "must start with a hello" in json.loads(r.readline())["error"] and r.readline() == b""
    assert client.status().running  # the server is fine


def test_client_names_a_controller_of_another_version(tmp_path):
    state = Path(tempfile.mkdtemp(prefix="live-", dir="/tmp"))
    try:
        for answer, expect in [({"hello": "charter-live", "version": PROTOCOL_VERSION + 1}, f"speaks version {PROTOCOL_VERSION + 1}"),
                               ({"ok": False, "error": "unknown request None"}, "older Charter")]:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socket_path(state).unlink(missing_ok=True)
            listener.bind(str(socket_path(state)))
            listener.listen(1)

            def answer_once(answer=answer, listener=listener):
                conn, _ = listener.accept()
                conn.makefile("rb").readline()
                conn.sendall((json.dumps(answer) + "\n").encode())
                conn.close()

            done = in_thread(answer_once)
            with pytest.raises(ProtocolMismatch) as err:
                LiveClient(state, timeout=SAFETY_S).status()
            assert expect in str(err.value) and "\n" not in str(err.value)
            result(done)
            listener.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_oversize_request_is_refused_and_the_server_goes_on(live):
    _, client, state = live
    s, r = said_hello(state)
    s.sendall(b'{"op": "note", "by": "x", "text": "' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"}\n')
    reply = json.loads(r.readline())
    assert reply["ok"] is False and f"longer than {MAX_REQUEST_BYTES} bytes" in reply["error"]
    assert r.readline() == b""  # a frame that long cannot be resynchronised: closed
    assert client.status().running


def test_no_socket_or_a_stale_one_is_unreachable(tmp_path):
    state = Path(tempfile.mkdtemp(prefix="live-", dir="/tmp"))
    try:
        with pytest.raises(ControllerUnreachable, match="no controller is running"):
            LiveClient(state).status()
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(socket_path(state)))
        dead.close()  # the file stays behind, as after a controller was killed
        with pytest.raises(ControllerUnreachable, match="stale socket"):
            LiveClient(state).status()
    finally:
        shutil.rmtree(state, ignore_errors=True)


OTHER_UID_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
try:
    s.sendall((json.dumps({"hello": "charter-live", "version": int(sys.argv[2])}) + "\\n").encode())
except BrokenPipeError:
    pass  # the server may refuse (and close) before the hello is sent: its answer is still there to read
sys.stdout.write(s.makefile("rb").readline().decode())
"""


def test_only_the_owner_uid_gets_in(live):
    _, client, state = live
    path = socket_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    system_python = shutil.which("python3", path="/usr/bin:/bin")  # one another uid may run (ours is in root's home)
    if os.getuid() != 0 or not hasattr(socket, "SO_PEERCRED") or system_python is None:
        pytest.skip("needs root (to run a client as another uid), SO_PEERCRED and a system python3")
    # let another uid reach the socket past the file modes: the server's own uid check must still refuse
    for p in (state.parent, state):
        os.chmod(p, 0o711)
    os.chmod(path, 0o666)
    other = subprocess.run([system_python, "-c", OTHER_UID_CLIENT, str(path), str(PROTOCOL_VERSION)], user=65534, group=65534,
                           extra_groups=[], capture_output=True, text=True, timeout=SAFETY_S)
    assert other.returncode == 0, other.stderr
    reply = json.loads(other.stdout)
    assert reply["ok"] is False and "only the lab's owner" in reply["error"]
    assert client.status().running  # the owner still gets in


# -- the table --------------------------------------------------------------------------------------


def test_the_table_says_what_is_read_only_and_who_answers():
    assert OPS["note"].read_only is False
    assert all(not OPS[op].read_only for op in ("pause", "stop", "resume"))
    assert all(OPS[op].read_only for op in ("status", "events", "watch", "query", "verify", "report", "export"))
    assert all(callable(getattr(LiveSource, spec.answered_by)) for spec in OPS.values())
    assert {spec.answered_by for spec in OPS.values()} == {"status", "events_after", "wait_for_event", "cursor", "note", "command"}


# -- requests answered ------------------------------------------------------------------------------


def test_events_are_bounded_by_limit(live):
    source, client, _ = live
    source.notes(27)  # 30 in all
    first = client.events(0, 10)
    assert [e.seq for e in first] == list(range(1, 11))
    assert read(first[0]).text == "before 0" and first[0].ts.tzinfo is not None
    assert [e.seq for e in client.events(10)] == list(range(11, 31))
    source.notes(MAX_EVENTS + 5)
    assert len(client.events(0)) == MAX_EVENTS
    with pytest.raises(RequestRefused, match="limit must be between 1 and"):
        client.events(0, MAX_EVENTS + 1)


def test_query_verify_export_note_and_commands_through_the_socket(live, tmp_path):
    source, client, _ = live
    result_ = client.query("select count(*) as n from events")
    assert result_["columns"] == ["n"] and result_["rows"] == [[3]] and result_["truncated"] is False
    assert client.query("select seq from events order by seq", limit=2) == {
        "columns": ["seq"], "types": ["BIGINT"], "rows": [[1], [2]], "truncated": True}
    with pytest.raises(RequestRefused, match="refused"):
        client.query("delete from events")
    with pytest.raises(RequestRefused, match="limit must be between 0 and"):
        client.query("select 1", limit=-1)
    seq = client.note("dave", "watching live")
    ev = source.led.events(seq - 1)[0]
    assert (ev.actor, read(ev).text) == ("person:dave", "watching live")
    verified = client.verify()
    assert verified.ok and verified.count == 4 and verified.head[0] == 4
    assert not client.verify((4, "0" * 64)).ok
    paths = client.export(tmp_path / "out", "csv")
    assert paths and all(p.is_file() for p in paths)
    with pytest.raises(RequestRefused, match="no session yet"):
        client.report(tmp_path / "report")
    assert client.command("pause", "bob", "lunch").gate == "FREEZE"
    assert client.status().gate.state == "FREEZE"
    with pytest.raises(RequestRefused, match="needs a reason"):
        client.command("resume", "bob", "")


# -- watch ------------------------------------------------------------------------------------------


def test_watch_catches_up_in_bounded_batches_then_streams_new_events_with_status(live):
    source, client, _ = live
    source.append([Draft(EventKind.NOTE, "controller", "s-test", {"text": str(i)}) for i in range(2 * MAX_EVENTS + 7)])
    head = source.led.head()[0]
    with client.watch(after_seq=0, with_status=True) as watch:
        def until_caught_up():
            batches = []
            for frame in watch:
                if isinstance(frame, StatusFrame):
                    return batches, frame
                batches.append([e.seq for e in frame.events])
        batches, status = result(in_thread(until_caught_up))
        assert [len(b) for b in batches] == [MAX_EVENTS, MAX_EVENTS, head - 2 * MAX_EVENTS]
        assert sum(batches, []) == list(range(1, head + 1)) and status.status.running

        # the watcher is up to date and waiting: what is appended now reaches it
        later = in_thread(lambda: [next(watch), next(watch)])
        last = source.notes(2, "after")
        frames = result(later)
        assert isinstance(frames[0], EventsFrame) and isinstance(frames[1], StatusFrame)
        assert [e.seq for e in frames[0].events] == [head + 1, head + 2] == [last - 1, last]  # one append, one batch
        assert read(frames[0].events[0]).text == "after 0"


def test_watch_without_status_sends_only_events(live):
    source, client, _ = live
    with client.watch(after_seq=3) as watch:
        got = in_thread(lambda: next(watch))
        source.notes(1)
        frame = result(got)
        assert isinstance(frame, EventsFrame) and [e.seq for e in frame.events] == [4]


def test_a_slow_or_closed_watcher_blocks_no_append(live):
    source, client, _ = live
    stuck = client.watch(after_seq=0, with_status=True)  # never read: the server's send fills up and waits
    closed = client.watch(after_seq=0)
    closed.close()
    big = "x" * 4000
    appended = in_thread(lambda: [source.append([Draft(EventKind.NOTE, "controller", "s-test", {"text": big})] * 50)
                                  for _ in range(40)][-1])
    assert result(appended) == 3 + 50 * 40  # ~8 MB went past a watcher that reads nothing
    assert client.status().running and client.events(2000, 5)[0].seq == 2001  # and others are still served
    assert source.led.verify().ok
    stuck.close()


# -- status -----------------------------------------------------------------------------------------


def test_status_snapshot_keeps_its_json_shape(tmp_path):
    lab = init_lab(tmp_path / "lab")
    shown = status_from_ledger(lab).to_json()
    assert list(shown) == ["running", "pid", "updated", "gate", "session", "inflight", "budgets", "best"]
    assert shown["session"] == {"id": None, "tag": None, "branch": None, "started": None, "experiments": 0, "keeps": 0}
    assert list(shown["budgets"]) == ["session", "burn", "burn_resource"]
    assert list(shown["budgets"]["session"]) == list(budgets.Usage().as_dict())
    assert StatusSnapshot.from_json(shown).to_json() == shown
    stale = StatusSnapshot.from_json({**shown, "stale": True, "session": {**shown["session"], "ended": "done"}})
    assert stale.stale and stale.to_json()["stale"] is True and stale.to_json()["session"]["ended"] == "done"
    used = budgets.Usage(agent_dollars=1.0)
    zero_limit = RULES.model_copy(update={"budgets": RULES.budgets.model_copy(update={
        "session": RULES.budgets.session.model_copy(update={"agent_dollars": 0})})})
    snap = build_status(rules=zero_limit, gate=GateMachine(), gate_rule=None, gate_evidence=None, session=None,
                        progress=Progress(), usage=used, inflight=None, running=False, pid=None, now=datetime.now(timezone.utc))
    assert snap.to_json()["budgets"]["burn"] == "inf" and StatusSnapshot.from_json(snap.to_json()) == snap


def test_concurrent_status_writers_never_break_the_file(live):
    source, _, state = live
    snapshot = source.status()
    write_status(state, snapshot)
    problems: list[str] = []
    done = threading.Event()

    def writer():
        for _ in range(300):
            write_status(state, snapshot)

    def reader():
        while not done.is_set():
            if read_status(state) is None:
                problems.append("status.json did not parse")

    threads = [threading.Thread(target=writer) for _ in range(8)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY_S)
    done.set()
    watcher.join(SAFETY_S)
    assert not problems and read_status(state) == snapshot
    assert sorted(p.name for p in state.iterdir() if "status" in p.name) == ["status.json"]  # no temp file left


# -- the CLI through a live controller --------------------------------------------------------------


def test_cli_commands_go_through_a_live_controller():
    root = Path(tempfile.mkdtemp(prefix="live-", dir="/tmp"))  # short: the socket path must fit
    try:
        lab = init_lab(root / "lab")
        with Ledger.open(lab.ledger_path) as led:  # held, as a session holds it: no other process may open it
            source = LedgerSource(led)
            with LiveServer(lab.state_dir, source):
                shown = json.loads(charter("status", "--lab", lab.root, "--json").stdout)
                assert shown["running"] is True and shown["session"]["id"] == "s-test"
                note = charter("ledger", "note", "--lab", lab.root, "--by", "dave", "watching", "live")
                assert note.returncode == 0 and note.stdout == "noted as seq 2\n", note.stderr
                rows = json.loads(charter("ledger", "query", "--lab", lab.root, "--json", "select count(*) as n from events").stdout)
                assert rows == [{"n": 2}]
                refused = charter("ledger", "query", "--lab", lab.root, "delete from events")
                assert refused.returncode == 1 and "refused" in refused.stderr and refused.stderr.count("\n") == 1
                assert charter("ledger", "verify", "--lab", lab.root).stdout.startswith("ok: 2 events")
                paused = charter("pause", "--lab", lab.root, "--by", "bob", "--reason", "lunch")
                assert paused.returncode == 0 and "gate now FREEZE (applied by the running controller)" in paused.stdout
                assert "(held by operator)" in charter("status", "--lab", lab.root).stdout
            assert [(e.actor, e.kind) for e in led.events(1)] == [("person:dave", "note"), ("person:bob", "operator_command")]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the CLI with no controller ---------------------------------------------------------------------


def test_pause_at_stop_is_a_one_line_refusal(tmp_path):
    lab = init_lab(tmp_path / "lab")
    with Ledger.open(lab.ledger_path) as led:
        led.record(GateTransition(from_state="RUN", to_state="STOP", rule="operator-stop", evidence="end of day",
                                  by="person:carol"), actor="person:carol", gate_state="STOP", rule="operator-stop")
        head = led.head()
    r = charter("pause", "--lab", lab.root, "--by", "bob")
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "STOP" in r.stderr
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert led.head() == head  # a refused command records nothing
    assert charter("resume", "--lab", lab.root, "--by", "bob", "--reason", "new day").returncode == 0
    assert json.loads(charter("status", "--lab", lab.root, "--json").stdout)["gate"]["state"] == "RUN"


def test_negative_query_limit_is_a_usage_error(tmp_path):
    lab = init_lab(tmp_path / "lab")
    r = charter("ledger", "query", "--lab", lab.root, "--limit", "-1", "select 1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "--limit" in r.stderr
