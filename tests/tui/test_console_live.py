"""The console and `charter run`'s output against a real running controller: a real lab on the
tiny training rules, `charter run` as a subprocess (the queue proposer keeps it deterministic) and
the Textual app driven by Pilot. The header follows the gate through a pause and a resume made from
the console, stop needs its confirmation, a note lands and a query renders through the live
channel, and the ledger has every command with the operator's name; the console survives the
controller being killed and picks up the next `charter run`; Ctrl-C stops a run at once, the run
in flight killed and recorded as interrupted. Waits are on conditions; nothing measures time."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time

from lab_helpers import queue_folder, with_constants
from ledger import EventKind, Ledger
from tui.app import CharterApp
from tui.components.modals import ConfirmScreen, PromptScreen
from tui.components.query import QueryScreen
from tui.feed import Source

SAFETY_S = 240  # a safety net against a hang (a tiny run is seconds, a session a minute or two)
SIZE = (160, 50)


async def wait_for(pilot, condition, what: str, timeout: float = SAFETY_S, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None and not condition()):
            app = pilot.app
            raise AssertionError(f"timed out waiting for {what}" + (f" (controller exit {proc.poll()})" if proc else "")
                                 + f"; header {header(app)!r}; said {list(app.messages)}; source {app.source}")
        await pilot.pause(0.1)


def header(app) -> str:
    return str(app.query_one("#gate-badge").render()) + " | " + str(app.query_one("#gate-info").render())


def ledger_events(lab, kind=None):
    with Ledger.open(lab.ledger_path, read_only=True, wait_s=30) as led:
        return led.events(kinds=[kind] if kind else None)


# the cpu clock: a tiny run's budget in CPU seconds holds on a machine busy with other work (the
# tiny rules' 7 wall seconds do not: start-up alone can take them)
ROBUST_RULES = {'clock = "cpu" ': 'clock = "cpu" ', "training_seconds = 60": "training_seconds = 10"}


def queued_lab(make_lab, tmp_path, n: int):
    lab = make_lab(rules=ROBUST_RULES)
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    for i in range(1, n + 1):
        queue_folder(queue, f"{i:03d}-warmdown", {"train.py": with_constants(base, WARMDOWN_RATIO=f"0.{i}")})
    return lab, queue


def start_run(lab, queue, tag: str, *extra: str, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--lab", str(lab.root), "--proposer", "queue",
                             "--queue", str(queue), "--tag", tag, *extra],
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


class PtyReader:
    """A pseudo-terminal for the controller's stdout (so it is a TTY) and a thread draining it."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def test_console_drives_a_live_session(make_lab, tmp_path):
    lab, queue = queued_lab(make_lab, tmp_path, 8)
    term = PtyReader()
    proc = start_run(lab, queue, "tui", stdout=term.slave)
    os.close(term.slave)
    paused_during = [None]  # the experiment whose run was training when `p` was pressed

    async def go():
        app = CharterApp(lab, "alice", refresh_s=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.source == Source.LIVE and app.status is not None and app.status.running,
                           "the live view", proc=proc)
            await wait_for(pilot, lambda: app.status.inflight is not None and app.status.inflight.step == "training",
                           "an experiment in flight", proc=proc)
            assert "live" in header(app) and "session s" in header(app)
            await wait_for(pilot, lambda: "| loss " in str(app.query_one("#now-tail").render()),
                           "the training output's tail in the Now panel", proc=proc)
            paused_during[0] = app.status.inflight.experiment
            await pilot.press("p")
            await wait_for(pilot, lambda: "FREEZE · paused by alice" in header(app), "the header to show the pause", proc=proc)
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the reason prompt")
            app.screen.query_one("Input").value = "logs look fine"
            await pilot.press("enter")
            await wait_for(pilot, lambda: header(app).startswith(" RUN "), "the header to show RUN again", proc=proc)
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the note prompt")
            app.screen.query_one("Input").value = "watching from the console"
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("note by alice: watching from the console" in line for line in app.view.feed),
                           "the note in the live feed", proc=proc)
            await pilot.press("slash")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the query prompt")
            app.screen.query_one("Input").value = "select seq, kind, actor from events order by seq"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen), "the query result")
            assert app.screen.query_one("DataTable").row_count >= 3  # at least lab_created, session_started, the pause
            await pilot.press("escape")
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the stop confirmation")
            await pilot.press("escape")  # not confirmed: nothing is sent
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the modal to close")
            assert not header(app).startswith(" STOP")
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the stop confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: header(app).startswith(" STOP"), "the header to show STOP", proc=proc)
            await wait_for(pilot, lambda: proc.poll() is not None, "the controller to end the session")
            await wait_for(pilot, lambda: app.source in (Source.LEDGER, Source.GONE), "the console to notice the end")
            assert app.view.session_ended  # the whole history stays on screen, read-only
            assert app.query_one("#experiments").row_count >= 1

    try:
        asyncio.run(go())
        proc.wait(timeout=SAFETY_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    commands = [(e.actor, e.payload["command"], e.payload["reason"]) for e in ledger_events(lab, EventKind.OPERATOR_COMMAND)]
    assert [(a, c) for a, c, _ in commands] == [("person:alice", "pause"), ("person:alice", "resume"), ("person:alice", "stop")]
    assert commands[1][2] == "logs look fine"
    # the pause took effect at once, during the run: before that experiment's training finished
    pause = ledger_events(lab, EventKind.OPERATOR_COMMAND)[0]
    finished = [e for e in ledger_events(lab, EventKind.TRAINING_FINISHED) if e.experiment == paused_during[0]]
    assert finished and pause.seq < finished[-1].seq, (pause.seq, [e.seq for e in finished])
    assert [(e.actor, e.payload["text"]) for e in ledger_events(lab, EventKind.NOTE)] == [("person:alice", "watching from the console")]
    # `charter run` talked the whole time, on a terminal
    term.thread.join(10)
    out = term.text
    assert "exp  description" in out and "baseline" in out
    assert "\r\x1b[2K  > #" in out and " s left" in out  # the progress line of the step in flight
    assert "gate RUN -> FREEZE (held by the operator)  by person:alice" in out
    assert "gate FREEZE -> RUN" in out and "-> STOP" in out
    assert "note by alice: watching from the console" in out
    lines = re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out))
    decided = ledger_events(lab, EventKind.DECIDED)
    for e in decided:  # one line per decided experiment, with its decision
        assert any(line.split()[:1] == [str(e.experiment)] and str(e.decision) in line for line in lines), (e, lines)


def test_console_survives_a_killed_controller_and_ctrl_c_stops_a_run(make_lab, tmp_path):
    lab, queue = queued_lab(make_lab, tmp_path, 6)
    first = start_run(lab, queue, "kill")
    second = None

    async def go():
        nonlocal second
        app = CharterApp(lab, "bob", refresh_s=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.source == Source.LIVE and app.status is not None and app.status.inflight is not None
                           and app.status.inflight.step == "training", "a live experiment in flight", proc=first)
            seen = app.view.head_seq
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=SAFETY_S)
            await wait_for(pilot, lambda: app.source == Source.LEDGER and app.status is not None and not app.status.running,
                           "the console to fall back on the ledger")
            assert app.is_running and app.view.head_seq >= seen  # the last view is kept, and the record read on
            assert "the controller died" in header(app)
            # the next `charter run` resumes the session and the console picks it up
            second = start_run(lab, queue, "kill", "--jsonl")
            await wait_for(pilot, lambda: app.source == Source.LIVE and app.status is not None and app.status.running
                           and app.status.inflight is not None and app.status.inflight.step == "training",
                           "the resumed session live", proc=second)
            second.send_signal(signal.SIGINT)  # Ctrl-C
            await wait_for(pilot, lambda: second.poll() is not None, "Ctrl-C to end the run")
            await wait_for(pilot, lambda: app.source == Source.LEDGER and app.view.session_ended is not None,
                           "the console to show the ended session")
            assert "stopped by Ctrl-C" in header(app)

    try:
        asyncio.run(go())
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    out, err = second.communicate(timeout=SAFETY_S)
    assert second.returncode == 0, err[-2000:]
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all({"seq", "kind", "actor", "payload"} <= set(r) for r in rows)
    assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + len(rows)))
    assert rows[0]["kind"] == "session_resumed" and rows[-1]["kind"] == "session_ended"
    assert rows[-1]["payload"]["reason"] == "stopped by Ctrl-C (SIGINT)"
    # the experiment in flight was killed, not run to its end, and recorded as interrupted
    after = [e for e in ledger_events(lab) if e.seq >= rows[0]["seq"]]
    decided = [e for e in after if e.kind == EventKind.DECIDED]
    assert str(decided[-1].decision) == "interrupted"
    last_run = [e for e in after if e.kind == EventKind.TRAINING_FINISHED and e.experiment == decided[-1].experiment][-1]
    assert last_run.payload["returncode"] == -signal.SIGKILL and not last_run.payload["stopped"]


def test_sigterm_stops_a_quiet_run_at_once(make_lab, tmp_path):
    from controller.live.client import LiveClient, LiveError
    lab, queue = queued_lab(make_lab, tmp_path, 3)
    proc = start_run(lab, queue, "term", "--quiet")
    try:
        deadline = time.monotonic() + SAFETY_S
        while True:
            try:
                status = LiveClient(lab.state_dir, timeout=5).status()
                if status.inflight is not None and status.inflight.step == "training":
                    break
            except LiveError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "no run in flight"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=SAFETY_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("charter: session on") and lines[1].startswith("session s") and "stopped by SIGTERM" in lines[1]
    assert not any(line.split()[:1] == ["0"] for line in lines)  # --quiet: no experiment lines
    events = ledger_events(lab)
    decided = [e for e in events if e.kind == EventKind.DECIDED]
    assert str(decided[-1].decision) == "interrupted"
    run = [e for e in events if e.kind == EventKind.TRAINING_FINISHED][-1]
    assert run.payload["returncode"] == -signal.SIGKILL and not run.payload["stopped"]
    assert events[-1].kind == EventKind.SESSION_ENDED and events[-1].payload["reason"] == "stopped by SIGTERM"
