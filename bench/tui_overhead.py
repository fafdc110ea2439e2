"""What `charter tui` costs a running controller, what it costs itself, and how fast it shows a gate change.

A real lab's ledger is served by a real `LiveServer` (the source is the ledger plus a gate machine,
as a session is to the server); the console is the real `tui.app.CharterApp`, headless. Measured:

1. the controller's single-event append latency (p50 / p95, with the recorder's wake-up of
   watchers) with no console attached and with one attached (a separate process, as an operator's
   terminal is): target within 10%;
2. the console's own CPU while idle (nothing recorded for `--idle` seconds; the process's user +
   system time over the wall time): target under 5% of one core;
3. the time from recording a gate transition to the console's header showing it (in-process, the
   app driven by Pilot; the header is read when the app's loop has drawn it): target under 1 s.

    python bench/tui_overhead.py [--appends 400] [--idle 20] [--transitions 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.live.server import LiveServer  # noqa: E402
from controller.live.status import Progress, SessionView, build_status  # noqa: E402
from controller.policy import budgets  # noqa: E402
from controller.policy.gates import GateMachine, transition_payload  # noqa: E402
from controller.workspace.lab import Lab, init_lab  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger import payloads as P  # noqa: E402

SESSION = "s-bench"


class BenchSource:
    """A LiveSource over a real ledger: appends wake watchers as the session's recorder does."""

    def __init__(self, lab: Lab, led: Ledger):
        self.lab, self.led = lab, led
        self.rules = lab.load_constitution()
        self.gate = GateMachine()
        self.cond = threading.Condition()
        head = led.head()
        self.head = head[0] if head else 0
        self.started = datetime.now(timezone.utc)

    def record(self, payload: P.Payload, **typed) -> int:
        with self.cond:
            ev = self.led.record(payload, actor=typed.pop("actor", "controller"), session=SESSION, **typed)
            self.head = ev.seq
            self.cond.notify_all()
        return ev.seq

    def status(self):
        view = SessionView(SESSION, "bench", "charter/bench", self.started)
        return build_status(rules=self.rules, gate=self.gate, gate_rule=None, gate_evidence=None, session=view,
                            progress=Progress(), usage=budgets.Usage(), inflight=None, running=True, pid=os.getpid(),
                            now=datetime.now(timezone.utc))

    def events_after(self, seq, limit):
        return self.led.events(since_seq=seq, limit=limit)

    def wait_for_event(self, after_seq, timeout):
        with self.cond:
            self.cond.wait_for(lambda: self.head > after_seq, timeout=timeout)
            return self.head

    def cursor(self):
        return self.led.cursor()

    def note(self, by, text):
        return self.record(P.Note(text), actor=f"person:{by}")

    def command(self, op, by, reason):
        return {"ok": False, "error": "not in this benchmark"}


def append_latencies(source: BenchSource, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        source.record(P.Note(f"tick {i}"))
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.01)  # a session records a few events a second at most; this is already busy
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1]


CONSOLE = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from controller.workspace.lab import Lab
from tui.app import CharterApp
CharterApp(Lab(Path({lab!r})), "bench").run(headless=True)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def header_latency(lab: Lab, source: BenchSource, transitions: int) -> list[float]:
    from tui.app import CharterApp
    from tui.feed import Source
    app = CharterApp(lab, "bench", refresh_s=1.0)
    out = []
    async with app.run_test(size=(150, 48)) as pilot:
        while app.source != Source.LIVE or app.status is None:
            await pilot.pause(0.05)
        for i in range(transitions):
            op = "pause" if source.gate.state == "RUN" else "resume"
            want = "FREEZE" if op == "pause" else "RUN"
            t = source.gate.operator(op, "person:bench", "bench")
            start = time.perf_counter()
            source.record(transition_payload(t, source.gate.held_by_operator), gate_state=t.dest.value, rule=t.rule,
                          actor="person:bench")
            while not str(app.query_one("#gate-badge").render()).strip().startswith(want):
                await pilot.pause(0.005)
            out.append((time.perf_counter() - start) * 1000)
            await pilot.pause(0.3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=400)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--transitions", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tuib-", dir="/tmp"))  # a socket path must be short
    try:
        lab = init_lab(tmp / "lab")
        led = Ledger.open(lab.ledger_path)
        source = BenchSource(lab, led)
        source.record(P.SessionStarted(tag="bench", branch="charter/bench", constitution_version=1))
        server = LiveServer(lab.state_dir, source)
        server.start()
        try:
            append_latencies(source, 50)  # warm-up
            alone = append_latencies(source, args.appends)
            root = str(Path(__file__).resolve().parents[1])
            console = subprocess.Popen([sys.executable, "-c", CONSOLE.format(root=root, lab=str(lab.root))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                time.sleep(3.0)  # the console starts and catches up: wait until it is quiet
                settle = time.monotonic() + 60
                while time.monotonic() < settle and console.poll() is None:
                    c0 = cpu_seconds(console.pid)
                    time.sleep(1.0)
                    if cpu_seconds(console.pid) - c0 < 0.1:
                        break
                if console.poll() is not None:
                    raise SystemExit(f"the console did not start: {console.stderr.read().decode()[-2000:]}")
                attached = append_latencies(source, args.appends)
                cpu0, wall0 = cpu_seconds(console.pid), time.monotonic()
                time.sleep(args.idle)
                idle_cpu = (cpu_seconds(console.pid) - cpu0) / (time.monotonic() - wall0)
                startup_cpu = cpu0
                if console.poll() is not None:
                    raise SystemExit("the console exited while idle")
            finally:
                console.terminate()
                console.wait(10)
            shown = asyncio.run(header_latency(lab, source, args.transitions))
        finally:
            server.close()
            led.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p50a, p95a, p50t, p95t = pct(alone, 50), pct(alone, 95), pct(attached, 50), pct(attached, 95)
    print(f"{'measure':<48} {'value':>12}   target")
    print(f"{'append p50 / p95, no console (ms)':<48} {p50a:>5.2f} / {p95a:<5.2f}")
    print(f"{'append p50 / p95, console attached (ms)':<48} {p50t:>5.2f} / {p95t:<5.2f}   within 10%: "
          f"{(p50t / p50a - 1) * 100:+.1f}% / {(p95t / p95a - 1) * 100:+.1f}%")
    print(f"{'console CPU while idle (% of one core)':<48} {idle_cpu * 100:>12.2f}   < 5%")
    print(f"{'console CPU to start and catch up (s)':<48} {startup_cpu:>12.2f}")
    print(f"{'gate transition -> header shows it (ms), p50/max':<48} {statistics.median(shown):>5.0f} / {max(shown):<5.0f}   < 1000")


if __name__ == "__main__":
    main()
