"""A person's pause, resume and stop reach a running session at once, from another thread, and the
loop stays consistent: a proposal that arrives after a pause is held and runs once resumed (the
proposer is not asked again), and a run stopped by a person is an interruption even when a
resume follows before the run is decided.

A real lab (git, DuckDB ledger, the constitution in force) on a real Session; only training is
scripted (the runner returns a known outcome), and each command comes from its own thread, as
the live channel's would. Waits are on conditions, never on time.
"""

import threading
import time

from controller.execution.runner import RunOutcome, Runner
from controller.execution.sandbox import SandboxResult
from controller.proposers import Proposal
from controller.session.loop import Session
from ledger import Decision, EventKind, Ledger
from ledger import payloads as P

SAFETY_S = 60


def from_another_thread(fn, *args):
    """Run `fn(*args)` on a thread of its own and wait for it (a person's command arrives there)."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("reply", fn(*args)))
    t.start()
    t.join(SAFETY_S)
    return out.get("reply")


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Labels:
    """Proposals in order, each a one-line change; `asked` counts the calls."""

    name = "labels"

    def __init__(self, labels, on_propose=None):
        self.labels = list(labels)
        self.asked = 0
        self.on_propose = on_propose or (lambda label: None)

    def propose(self, ctx):
        self.asked += 1
        if not self.labels:
            return None
        label = self.labels.pop(0)
        self.on_propose(label)
        return Proposal(description=label, files={"train.py": (ctx.files["train.py"] + f"\n# {label}\n").encode()},
                        source=f"labels:{label}")


def scripted_runner(monkeypatch, outcome_for):
    """The Runner returns `outcome_for(description_of_job)` instead of training."""
    def run(self, job, data, on_start=None):
        return outcome_for(job)

    monkeypatch.setattr(Runner, "run", run)  # the class the loop builds its runner from


def ok(bpb):
    t = SandboxResult(0, False, False, 1.0, 10.0, "none", "", stopped=True, exit_seconds=1.0)
    return RunOutcome("ok", "", bpb, t, None, {})


def events(lab, kinds=None):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return led.events(kinds=kinds)


def test_a_proposal_that_arrives_after_a_pause_is_held_and_runs_once_resumed(make_lab, monkeypatch):
    lab = make_lab()
    scripted_runner(monkeypatch, lambda job: ok(2.0))
    holder = {}

    def pause_while_proposing(label):
        if label == "first":
            reply = from_another_thread(holder["s"].command, "pause", "alice", "looking")
            assert reply["ok"] and reply["gate"] == "FREEZE", reply  # applied at once, not queued

            def resume_once_held():
                wait_until(lambda: holder["s"].held is not None, "the loop to hold the proposal")
                holder["s"].command("resume", "alice", "fine")
            threading.Thread(target=resume_once_held, daemon=True).start()

    proposer = Labels(["first", "second"], pause_while_proposing)
    holder["s"] = session = Session(lab, proposer, tag="hold", max_experiments=2)
    session.run()

    evs = events(lab)
    kinds = [(e.kind, (P.read(e).command if e.kind == EventKind.OPERATOR_COMMAND else
                       P.read(e).description if e.kind == EventKind.PROPOSED else "")) for e in evs]
    pause = kinds.index((EventKind.OPERATOR_COMMAND, "pause"))
    resume = kinds.index((EventKind.OPERATOR_COMMAND, "resume"))
    first = kinds.index((EventKind.PROPOSED, "first"))
    assert pause < resume < first  # nothing of "first" started while paused
    assert [d.payload["description"] for d in events(lab, [EventKind.DECIDED])] == ["baseline", "first", "second"]
    assert proposer.asked == 2  # the held proposal was not asked for again


def test_a_run_stopped_by_a_person_is_interrupted_even_if_a_resume_follows_at_once(make_lab, monkeypatch):
    lab = make_lab()
    holder = {}

    def outcome_for(job):
        if job.experiment == 1:  # a person stops the run, then resumes before it is decided
            s = holder["s"]
            assert from_another_thread(s.command, "stop", "bob", "wrong change")["ok"]
            assert from_another_thread(s.command, "resume", "bob", "my mistake")["ok"]
            assert not s.stop_requested.is_set()  # the resume cleared it before this run is decided
            killed = SandboxResult(None, True, False, 1.0, 10.0, "none", "", kill_reason="timeout")
            return RunOutcome("timeout", "killed", None, killed, None, {})
        return ok(2.0)

    scripted_runner(monkeypatch, outcome_for)
    holder["s"] = Session(lab, Labels(["victim", "next"]), tag="stop", max_experiments=2)
    holder["s"].run()

    decisions = {d.payload["description"]: d.decision for d in events(lab, [EventKind.DECIDED])}
    assert decisions["victim"] == Decision.INTERRUPTED  # not the change's fault: no timeout counted against it
    assert decisions["next"] in (Decision.KEEP, Decision.DISCARD)  # the session went on after the resume
