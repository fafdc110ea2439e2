"""The governed session: it only sequences steps.

baseline, then, until a budget, the gate, the proposer or --max-experiments says stop:
propose -> stage -> harm test -> commit -> train + evaluate + post-check (one runner job) ->
keep or discard. Each step returns a typed result (`controller.session.experiment`,
`controller.execution.runner`); the policies between them are pure (`controller.policy`); every
result becomes an event through the one `Recorder`. `Session.run()` holds the lab's ledger open
for the whole session (the controller is its only writer) and serves the live channel as its
`LiveSource`. If a previous controller died mid-session, the next run resumes it: the work tree
is reset to the last kept commit, the constitution is checked to be the one in force, and the
interrupted experiment is recorded as interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import secrets
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transitions import MachineError

import constitution
from constitution import Constitution, GateState
from controller.execution import gpu, phases, sandbox
from controller.execution.ray_pool import RayPool, ray_refusal, reap_leftovers
from controller.execution.run_files import RunFileRefused, read_run_tail
from controller.execution.runner import (
    Job, PrepareError, RunOutcome, Runner, cache_dir, data_problems, immutable_problems, time_claim, training_kill_seconds,
    verify_data,
)
from controller.live.server import LiveServer
from controller.live.status import Inflight, Progress, SessionView, build_status
from controller.policy import budgets, keep_rule, noise
from controller.policy.gates import PROPOSER_FAILED, GateMachine, Outcome, Transition, firing_rules, restore_gate, transition_payload
from controller.policy.identity import agent_identity
from controller.policy.device import gpu_refusal
from controller.policy.in_force import check_in_force
from controller.policy.outcomes import (
    MAX_PROPOSER_FAILURES, FreezeStep, budget_stop, decision_for_failed_run, freeze_action, keep_rule_for, outcome_of,
)
from controller.proposers import AgentBudget, HistoryItem, Proposal, ProposalContext, Proposer, ProposerResult, as_result
from controller.proposers.offline import parse_constants
from controller.session import device_use
from controller.session.experiment import (
    DIFF_CAP, Refused, RunRequest, about, commit_step, harm_step, next_request, resource_use, stage_step,
)
from controller.session.parallel import POLL_S, parallel_loop
from controller.session.recorder import CONTROLLER, Recorder
from controller.session.resume import history_item, lab_history, lab_outcomes, open_session, replay_session
from controller.workspace.anchor import write_anchor
from controller.workspace.lab import Lab
from controller.workspace.worktrees import InPlace, Worktree, clean_worktrees
from ledger import Decision, Event, EventKind, Ledger, LedgerError
from ledger import payloads as P

COMMAND_WAIT_S = 20  # how long a command sent before the loop starts waits for it before "queued"
HISTORY_KINDS = [
    EventKind.SESSION_STARTED, EventKind.SESSION_RESUMED, EventKind.SESSION_ENDED, EventKind.GATE_TRANSITION,
    EventKind.DECIDED, EventKind.PROPOSED, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.AGENT_CALL,
    EventKind.CONSTITUTION_LOADED, EventKind.AMENDMENT_APPLIED,
]


class SessionRefused(Exception):
    """The session cannot start (sandbox unavailable, data not prepared, pins broken, rules not in force)."""


def kill_tree(pid: int) -> None:
    """Kill a sandboxed run's whole process group (the sandbox starts each in its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SessionState:
    """What the loop keeps in memory; every field can be rebuilt from the ledger."""

    id: str
    tag: str
    branch: str
    started: datetime
    experiment: int = 0
    baseline_bpb: float | None = None
    best_bpb: float | None = None
    best_commit: str | None = None
    keeps: int = 0
    outcomes: list[Outcome] = field(default_factory=list)  # lab-wide, for the gate rules
    history: list[HistoryItem] = field(default_factory=list)  # this branch's, for proposers
    lab_history: list[HistoryItem] = field(default_factory=list)  # earlier sessions', for proposers
    setup: str = ""  # the measurement setup of the rules in force (noise.measurement_setup)
    runs: dict[str, list[float]] = field(default_factory=dict)  # every scored run per commit, this setup, lab-wide
    repairs: int = 0
    proposer_failures: int = 0  # consecutive


@dataclass(frozen=True)
class Step:
    """What the loop does next (`Session.next_step`): exactly one of these, or none (try again)."""

    end: str | None = None  # the session ends, for this reason
    wait: bool = False  # FREEZE held by a person, or experiments in flight to wait for
    repair: bool = False  # re-verify the baseline (FREEZE by a rule)
    proposal: Proposal | None = None  # run it


@dataclass
class Command:
    """An operator command from the live channel: applied at once once the loop runs, queued
    for the loop's first step before that."""

    op: str
    by: str
    reason: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] = field(default_factory=dict)


class Session:
    def __init__(self, lab: Lab, proposer: Proposer, tag: str | None = None, max_experiments: int | None = None,
                 workers: int | None = None):
        self.lab = lab
        self.workers_wanted = workers  # charter run --workers N; None: the constitution's scale.workers
        self.workers = 1
        self.proposer = proposer
        self.tag = tag
        self.max_experiments = max_experiments
        self.rules: Constitution | None = None  # loaded after a resume's reset, never before
        self.gate = GateMachine()
        self.gate_why: tuple[str | None, str | None] = (None, None)  # the last transition's rule and evidence
        self.inflight: Inflight | None = None  # what the loop is doing now (proposing, or its one experiment)
        self.flights: dict[int, Inflight] = {}  # with several workers: every experiment in flight
        self.pool = None  # with several workers: the RayPool their runs go to (controller.session.parallel)
        self.led: Ledger | None = None
        self.recorder: Recorder | None = None
        self.state: SessionState | None = None
        self.stop_requested = threading.Event()
        self.stops = 0  # how many stops came (a resume may clear stop_requested before a killed run is decided)
        self.last_run_stopped = False  # a stop came while the last run_job ran: its failure is an interruption
        self.held: ProposerResult | None = None  # a proposal that arrived after a pause: run once resumed
        self.held_at = ""  # the incumbent it was proposed from
        self.stop_reason: str | None = None  # a signal's stop: why the session ended
        self.listeners: list[Callable[[Event], None]] = []  # told of every recorded event (Recorder.listeners)
        self.commands: queue.Queue[Command] = queue.Queue()
        # the gate moves on the loop's thread (rules) and on live-channel threads (a person's
        # pause, resume or stop, applied at once): one lock, so each move sees the last
        self.gate_lock = threading.RLock()
        self.commands_at_once = False  # set when the loop starts: the gate is restored by then
        self.commands_closed = False  # set when the session ends: nothing is applied after its last event
        self.level = ""
        self.proposals: dict[int, P.Proposed] = {}  # the experiments in hand and their proposed events
        self.proposer_overran = False  # a proposer thread abandoned at its deadline: never call it again
        self.decided: set[int] = set()  # the experiments decided while this controller ran
        # runs of an incumbent made for an undecided experiment's decision, as its decided payload
        # will carry them (a crash the controller trips on records them too), and their numbering
        self.incumbent_added: dict[int, P.Decided] = {}
        self.incumbent_run_count: dict[int, int] = {}
        self.next_seed: dict[str, int] = {}  # per incumbent: seed offsets handed to its runs so far
        self._day_events: list[Event] = []
        self.data: dict = {}

    # -- recording -------------------------------------------------------------------------------
    def record(self, payload: P.Payload, *, actor: str = CONTROLLER, **typed: Any) -> Event:
        return self.recorder.record(payload, actor=actor, **typed)

    def set_inflight(self, inflight: Inflight | None) -> None:
        self.inflight = inflight
        self.recorder.publish()

    def set_flight(self, inflight: Inflight | None, n: int | None = None) -> None:
        """What experiment `n` (or inflight's) is doing now; None once it is decided. One at a
        time, that is the loop's `inflight`; with several workers each has its entry in `flights`."""
        key = n if n is not None else inflight.experiment
        if self.pool is None:
            self.inflight = inflight
        elif inflight is None:
            self.flights.pop(key, None)
        else:
            self.flights[key] = inflight
        if inflight is not None:
            self.recorder.publish()

    # -- the live channel (LiveSource) ------------------------------------------------------------
    def status(self):
        return self._snapshot(running=True)

    def _snapshot(self, running: bool):
        s = self.state
        if s is None:
            return None
        now = utc_now()
        progress = Progress(s.experiment, s.baseline_bpb, s.best_bpb, s.best_commit, s.keeps)
        return build_status(
            rules=self.rules, gate=self.gate, gate_rule=self.gate_why[0], gate_evidence=self.gate_why[1],
            session=SessionView(s.id, s.tag, s.branch, s.started), progress=progress, usage=self.session_usage(now),
            inflight=self.inflight, running=running, pid=os.getpid() if running else None, now=now,
            flights=list(self.flights.copy().values()),  # copy(): one C call, safe against the loop thread
        )

    def events_after(self, seq: int, limit: int) -> list[Event]:
        return self.led.events(since_seq=seq, limit=limit)

    def wait_for_event(self, after_seq: int, timeout: float) -> int:
        return self.recorder.wait_for_event(after_seq, timeout)

    def cursor(self):
        return self.led.cursor()  # a reader on its own cursor never blocks the loop's appends

    def note(self, by: str, text: str) -> int:
        return self.record(P.Note(text[:10_000]), actor=f"person:{by or 'operator'}").seq

    def command(self, op: str, by: str, reason: str) -> dict[str, Any]:
        """Called on a live-channel thread. Once the loop runs, the command is applied and ledgered
        at once: a pause holds FREEZE while the experiment in flight finishes (its confirmation
        runs included; nothing new starts), and a stop also kills the run in flight. Before that
        (a session still starting) it is queued for the loop's first step."""
        cmd = Command(op, by or "operator", reason or "")
        with self.gate_lock:  # the loop sets commands_at_once and drains the queue under it too
            if self.commands_closed:
                return {"ok": False, "error": "the session is ending; a command now would change nothing"}
            if self.commands_at_once:
                reply = self.apply_command(cmd)
            else:
                self.commands.put(cmd)  # whatever happens next, the loop ledgers and applies it
                reply = None
                if op == "stop":
                    self.stop_requested.set()
                    self.stops += 1
        if reply is not None:
            if op == "stop" and reply.get("ok"):
                self.kill_inflight()
            return reply
        if op == "stop":
            self.kill_inflight()
        if not cmd.done.wait(timeout=COMMAND_WAIT_S):
            return {"ok": True, "queued": True, "message": f"{op} queued; the session is starting and applies it at its first step"}
        return cmd.reply

    def kill_inflight(self) -> None:
        """Kill the run in flight (a stop). With several workers the loop cancels their runs
        itself, within a poll (Ray is not called from a signal handler or another thread)."""
        flight = self.inflight  # read once: the loop may clear it at any moment
        if flight is not None and flight.pid:
            kill_tree(flight.pid)

    def drain_commands(self) -> None:
        with self.gate_lock:
            while not self.commands.empty():
                cmd = self.commands.get()
                cmd.reply.update(self.apply_command(cmd))
                cmd.done.set()

    def apply_command(self, cmd: Command) -> dict[str, Any]:
        try:
            return self._apply_command(cmd)
        except LedgerError:
            raise
        except Exception as e:  # report to the operator; the loop goes on
            return {"ok": False, "error": str(e) or type(e).__name__}

    def _apply_command(self, cmd: Command) -> dict[str, Any]:
        by = f"person:{cmd.by}"
        a = self.rules.amendment
        if cmd.op == "resume" and self.gate.gate == GateState.STOP and a.require_signatures and a.ratifiers:
            # the live channel carries no signature: a signed resume is made once the session has ended
            return {"ok": False, "error": "resume from STOP needs a ratifier's signature in this lab; the session "
                                          "ends at STOP: then `charter resume --key PRIVATE_KEY ...`"}
        try:
            t = self.gate.operator(cmd.op, by, cmd.reason)
        except MachineError as e:  # e.g. a pause at STOP: refused, and nothing is recorded
            return {"ok": False, "error": e.value}
        if cmd.op == "stop":
            self.stop_requested.set()
            self.stops += 1
        elif cmd.op == "resume" and self.stop_reason is None:  # a signal's stop is not a person's to undo
            self.stop_requested.clear()
        self.record(P.OperatorCommand(cmd.op, cmd.reason), actor=by)
        self.record_transition(t, actor=by)
        return {"ok": True, "gate": self.gate.state}

    # -- budgets ---------------------------------------------------------------------------------
    def session_usage(self, now: datetime) -> budgets.Usage:
        return budgets.usage_from_events(self.recorder.session_events, None, now, started=self.state.started,
                                         disk_mb=self._disk_mb())

    def day_usage(self, now: datetime) -> budgets.Usage:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return budgets.usage_from_events(self._day_events + self.recorder.session_events, midnight, now)

    def _disk_mb(self) -> float:
        total = 0
        for dirpath, _, files in os.walk(self.lab.runs_dir / self.state.id):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total / 1e6

    def _burn(self) -> float:
        return budgets.burn(self.session_usage(utc_now()), self.rules.budgets.session)[0]

    def _tighter(self, resource: str, now: datetime) -> tuple[str, budgets.Usage]:
        """The period ("session" or "day") with less of `resource` left, and its usage."""
        s, d = self.session_usage(now), self.day_usage(now)
        ls, ld = self.rules.budgets.session, self.rules.budgets.day
        left_s = getattr(ls, resource) - getattr(s, resource)
        left_d = getattr(ld, resource) - getattr(d, resource)
        return ("session", s) if left_s <= left_d else ("day", d)

    def _agent_budget(self) -> AgentBudget:
        now = utc_now()
        s, d = self.session_usage(now), self.day_usage(now)
        ls, ld = self.rules.budgets.session, self.rules.budgets.day
        return AgentBudget(max(0, min(ls.agent_tokens - s.agent_tokens, ld.agent_tokens - d.agent_tokens)),
                           max(0.0, min(ls.agent_dollars - s.agent_dollars, ld.agent_dollars - d.agent_dollars)))

    # -- the session -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        with Ledger.open(self.lab.ledger_path, wait_s=15) as led:
            self.led = led
            self.recorder = Recorder(led, self.lab.state_dir, listeners=self.listeners)
            server = LiveServer(self.lab.state_dir, self)
            server.start()
            old_term = signal.signal(signal.SIGTERM, lambda *_: self.request_stop("stopped by SIGTERM"))
            old_int = signal.signal(signal.SIGINT, self._on_interrupt)
            try:
                self.start_or_resume()
                reason = self.loop()
                return self.end(reason)
            finally:
                with self.gate_lock:  # a loop that raised: nothing more is applied or ledgered
                    self.commands_closed = True
                if self.pool is not None:
                    self.pool.close()  # every run cancelled, a local cluster shut down
                signal.signal(signal.SIGTERM, old_term)
                signal.signal(signal.SIGINT, old_int)
                self.recorder.wake()
                server.close()
                self.led = None

    def request_stop(self, why: str) -> None:
        """Stop at once (a signal): nothing new starts and the run in flight is killed, so its
        experiment is recorded as interrupted; the session then ends with `why` as its reason."""
        self.stop_reason = self.stop_reason or why
        self.stop_requested.set()
        self.stops += 1
        self.kill_inflight()

    def _on_interrupt(self, *_: object) -> None:
        """Ctrl-C: the first stops the session as SIGTERM does; a second one quits at once."""
        if self.stop_requested.is_set() and self.stop_reason:
            raise KeyboardInterrupt
        self.request_stop("stopped by Ctrl-C (SIGINT)")

    def _load_rules(self, history: list[Event]) -> None:
        """The committed constitution, which must be the one in force (or its recorded successor)."""
        self.rules = self.lab.load_constitution()
        problem = check_in_force(self.rules, history) or gpu_refusal(self.rules, gpu.probe())
        scale = self.rules.scale
        if self.workers_wanted is not None:
            scale = scale.model_copy(update={"workers": self.workers_wanted})
        problem = problem or ray_refusal(scale, self.rules.evaluation.profile, self.rules.budgets.experiment.memory_hard_mb)
        if problem:
            raise SessionRefused(problem)
        self.workers = scale.workers
        self.level = self.choose_isolation()

    def _measurements(self, history: list[Event], sid: str) -> None:
        """What the lab has measured under the rules in force: every run per commit (the noise and
        the incumbent's value come from them) and the earlier sessions' experiments."""
        s = self.state
        s.setup = noise.measurement_setup(self.rules, self.workers)
        s.runs = noise.runs_by_commit(history, s.setup)
        s.lab_history = lab_history(history, exclude_session=sid)

    def noise_estimate(self) -> noise.NoiseEstimate:
        d = self.rules.decision
        return noise.estimate(self.state.runs.values(), d.noise_sd, d.noise_prior_df)

    def start_or_resume(self) -> None:
        # what a controller killed with -9 while several experiments ran left: none of it is in flight now
        reap_leftovers(self.lab.state_dir)
        clean_worktrees(self.lab)
        history = self.led.events(kinds=HISTORY_KINDS)
        today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
        self.gate, rule, evidence = restore_gate(history)  # gate state survives restarts
        self.gate_why = (rule, evidence)
        start = open_session(history)
        if start is not None:
            self._resume(start, history, today)
            return
        git = self.lab.git
        dirty = git.dirty_paths()
        if dirty:
            raise SessionRefused(f"the lab has uncommitted changes ({', '.join(dirty[:3])}); commit or discard them first")
        self._load_rules(history)
        tag = self.tag or utc_now().strftime("%Y%m%d-%H%M%S")
        branch = f"charter/{tag}"
        if git.branch_exists(branch):
            raise SessionRefused(f"branch {branch} already exists from an earlier session; choose another --tag")
        self._day_events = [e for e in history if e.ts >= today]
        base = git.head()
        git.checkout(branch, create_at=base)
        sid = f"s{utc_now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
        self.state = SessionState(sid, tag, branch, utc_now(), outcomes=lab_outcomes(history))
        self._measurements(history, sid)
        self.recorder.session = sid
        self.recorder.snapshot = lambda: self._snapshot(running=True)
        digest = constitution.constitution_hash(self.rules)
        ev = self.record(P.SessionStarted(
            tag=tag, branch=branch, base_commit=base, isolation=self.level, proposer=self.proposer.name,
            max_experiments=self.max_experiments, pid=os.getpid(), constitution_hash=digest,
            constitution_version=self.rules.meta.version, workers=self.workers,
        ), commit_sha=base, gate_state=self.gate.state)
        self.state.started = ev.ts
        self.record(P.ConstitutionLoaded(hash=digest, version=self.rules.meta.version, rules=self.rules.model_dump(mode="json")))

    def _resume(self, start: Event, history: list[Event], today: datetime) -> None:
        sid = start.session
        mine = [e for e in history if e.session == sid]
        replay = replay_session(mine)
        git = self.lab.git
        # a session keeps its workers: runs on another number of them are another measurement setup,
        # and its incumbent's runs would not count against the new ones
        ran_with = replay.start.workers
        if self.workers_wanted is not None and self.workers_wanted != ran_with:
            raise SessionRefused(f"session {sid} ran with {ran_with} worker(s); resume it with --workers {ran_with}")
        self.workers_wanted = ran_with
        reset_to = replay.progress.best_commit or replay.start.base_commit
        git.checkout(replay.start.branch, create_at=reset_to)
        git.reset_hard(reset_to)  # first the reset, then the rules: never load an experiment's edit
        self._load_rules(history)
        self.recorder.session = sid
        self.recorder.session_events = list(mine)
        self._day_events = [e for e in history if e.ts >= today and e.session != sid]
        s = self.state = SessionState(sid, replay.start.tag, replay.start.branch, start.ts, outcomes=lab_outcomes(history, sid))
        p = replay.progress  # numbers are never reused, even for interrupted ones
        s.experiment, s.baseline_bpb, s.best_bpb, s.best_commit, s.keeps = p.experiments, p.baseline_bpb, p.best_bpb, p.best_commit, p.keeps
        s.history = replay.history
        self._measurements(history, sid)
        self.recorder.snapshot = lambda: self._snapshot(running=True)
        digest = constitution.constitution_hash(self.rules)
        self.record(P.SessionResumed(
            tag=s.tag, reset_to=reset_to, interrupted=[n for n, _ in replay.interrupted], isolation=self.level,
            pid=os.getpid(), constitution_hash=digest, constitution_version=self.rules.meta.version,
        ), commit_sha=reset_to, gate_state=self.gate.state)
        # the rules as read now (a newer schema may fill defaults): what a later refusal diffs against
        self.record(P.ConstitutionLoaded(hash=digest, version=self.rules.meta.version, reason="loaded at resume",
                                         rules=self.rules.model_dump(mode="json")))
        for n, prop in replay.interrupted:
            base = P.Decided(description=prop.description, source=prop.source, params=prop.params)
            self.decide(n, Decision.INTERRUPTED, "the controller stopped during this experiment (killed or crashed); its change was reset",
                        None, reset_to, base)

    def choose_isolation(self) -> str:
        want = self.rules.sandbox.level
        if want == "none":
            return "none"
        level, detail = sandbox.detect_level()
        if level == "bubblewrap":
            return level
        if self.rules.sandbox.allow_weaker:
            return "none"
        raise SessionRefused(f"bubblewrap is required by the constitution but can't run here ({detail}); install it with `apt-get install bubblewrap`, or amend sandbox.allow_weaker")

    # -- the loop --------------------------------------------------------------------------------
    def loop(self) -> str:
        s = self.state
        with self.gate_lock:
            self.commands_at_once = True  # from here a command is applied on arrival; those queued before, now
            self.drain_commands()
        try:
            self.data = self.check_integrity()
        except SessionRefused as e:
            return str(e)
        if self.workers > 1 and self.pool is None:
            self.pool = RayPool(self.lab.state_dir, self.rules, self.level, self.workers,
                                gpu=self.rules.evaluation.profile == "gpu")
        if s.baseline_bpb is None and self.gate.gate != GateState.STOP:
            self.baseline()
            if s.baseline_bpb is None:
                return self.stop_reason or "the baseline did not train and evaluate; nothing to compare against (see its decided event)"
        if self.pool is not None:
            return parallel_loop(self)
        while True:
            step = self.next_step()
            if step.end is not None:
                return step.end
            if step.wait:
                self.stop_requested.wait(0.5)
                continue
            if step.repair:
                self.baseline(repair=True)
                continue
            if step.proposal is None:
                continue
            try:
                self.experiment(step.proposal)
            except LedgerError:
                raise  # the record itself failed: nothing can be decided without it
            except Exception as e:  # whatever a proposal makes the controller trip on is an outcome
                self.contain(e)
            if self.gate.gate == GateState.THROTTLE and self.rules.gates.throttle.cooldown_seconds:
                self.stop_requested.wait(self.rules.gates.throttle.cooldown_seconds)

    def next_step(self, busy: bool = False) -> Step:
        """What the loop does before an experiment starts: end (and why), wait, re-verify the
        baseline under FREEZE, try again (a proposer failed, a pause came while it thought), or
        run a proposal. `busy`: experiments are in flight (several workers), so FREEZE waits for
        them rather than re-verifying."""
        s = self.state
        self.drain_commands()
        if self.stop_requested.is_set() or self.gate.gate == GateState.STOP:
            return Step(end=self.stop_reason or "gate at STOP: a person must `charter resume --reason ... --by ...`")
        if self.gate.gate == GateState.FREEZE:
            if busy:
                return Step(wait=True)
            action = freeze_action(self.gate.held_by_operator, self._firing(), s.repairs)
            if action.step == FreezeStep.WAIT:
                return Step(wait=True)
            if action.step == FreezeStep.END:
                return Step(end=action.reason)
            s.repairs += 1
            return Step(repair=True)
        s.repairs = 0
        now = utc_now()
        stop = budget_stop(self.rules, self.session_usage(now), self.day_usage(now))
        if stop:
            self.record(P.BudgetExhausted(stop.period, stop.resource, stop.usage.as_dict()), rule=f"budgets.{stop.period}")
            self.evaluate_gates()
            return Step(end=stop.reason)
        if self.max_experiments is not None and s.experiment >= self.max_experiments:
            return Step(end=f"reached --max-experiments {self.max_experiments}")
        if self.held is not None and self.held_at != self.lab.git.head():
            self.held = None  # a keep moved the incumbent while it was held: a full-file edit would undo it
        result, self.held = (self.held, None) if self.held is not None else (self.propose(), None)
        if self.proposer_overran:
            return Step(end=f"the {self.proposer.name} proposer did not return within proposer.deadline_seconds = "
                            f"{self.rules.proposer.deadline_seconds:g}; a stuck proposer is never called again")
        if result is None:  # the proposer failed; recorded
            if s.proposer_failures >= MAX_PROPOSER_FAILURES:
                return Step(end=f"the {self.proposer.name} proposer failed {s.proposer_failures} times in a row "
                                "(see its proposer_failed events)")
            return Step()
        if result.out_of_budget is not None:  # the proposer did not make a call the budgets can't pay
            resource, now = result.out_of_budget, utc_now()
            period, usage = self._tighter(resource, now)
            self.record(P.BudgetExhausted(period, resource, usage.as_dict()), rule=f"budgets.{period}")
            self.evaluate_gates()
            return Step(end=f"{period} budget for {resource} would be exceeded by the next agent call; proposing ended")
        if self.stop_requested.is_set():
            return Step()  # a stop came while the proposer thought: nothing starts
        if result.proposal is not None and self.gate.gate in (GateState.FREEZE, GateState.STOP):
            self.held, self.held_at = result, self.lab.git.head()  # a pause came while the proposer thought: run it once resumed
            return Step()
        if result.proposal is None:
            return Step(end=f"the {self.proposer.name} proposer has nothing more to propose")
        return Step(proposal=result.proposal)

    def _firing(self):
        return firing_rules(self.rules.gates.rules, self.state.outcomes, self._burn())

    def check_integrity(self) -> dict:
        """Immutable files and cached data must match their pins before anything runs."""
        problems = immutable_problems(self.lab.root, self.rules)
        try:
            data = verify_data(self.lab.root, self.rules)
        except PrepareError as e:
            raise SessionRefused(f"data not ready: {e}; run `charter prepare`") from None
        problems += data_problems(data, self.rules)
        if problems:
            self.record(P.IntegrityFailure(problems), rule="integrity")
            with self.gate_lock:
                t = self.gate.operator_stop(CONTROLLER, "; ".join(problems))
                self.record_transition(Transition(t.source, t.dest, "integrity", "; ".join(problems), CONTROLLER))
            raise SessionRefused("integrity check failed: " + "; ".join(problems))
        return data

    # -- proposing -------------------------------------------------------------------------------
    def propose(self) -> ProposerResult | None:
        """One proposing step in flight, under its own deadline, on a scratch copy of the editable
        files. Whatever the proposer raises or returns, it becomes a result or a recorded failure."""
        s = self.state
        limit = self.rules.proposer.deadline_seconds
        started = time.time()
        self.set_inflight(Inflight(s.experiment + 1, f"{self.proposer.name} proposer", "proposing", started, started + limit))
        # the scratch dir belongs to the proposer's thread, which removes it when it returns (a
        # thread abandoned at its deadline may still be writing there)
        scratch = Path(tempfile.mkdtemp(prefix="charter-propose-"))
        files = self._copy_editable(scratch)
        n = s.experiment + 1
        ctx = ProposalContext(scratch, list(self.rules.scope.editable), files, list(s.history), s.best_bpb,
                              n, started + limit, self._agent_budget(), list(s.lab_history),
                              readable=self._readable(), run_log=self._run_log,
                              protected=(self.lab.root, cache_dir()),
                              in_flight=[HistoryItem(p.description, "in flight", None, p.source, p.params, None,
                                                     session=s.id, experiment=k) for k, p in self.proposals.items()])
        value, error, self.proposer_overran = _call_with_deadline(self.proposer.propose, ctx, limit, cleanup=scratch)
        seconds = time.time() - started
        self.set_inflight(None)
        result = None
        if error is None:
            try:
                result = as_result(value)
            except TypeError as e:
                error = f"malformed result: {e}"
        if result is not None:
            self.recorder.record_many([(dataclasses.replace(call, proposer=self.proposer.name),
                                        self.agent_actor(call.model), {"experiment": n}) for call in result.calls])
            if result.usage is not None:
                self.record(dataclasses.replace(result.usage, proposer=self.proposer.name,
                                                seconds=result.usage.seconds or round(seconds, 3)),
                            actor=self.agent_actor(result.usage.model), experiment=n)
            if result.failure is not None and result.out_of_budget is None:
                error = result.failure
        if error is not None:
            s.proposer_failures += 1
            self.record(P.ProposerFailed(self.proposer.name, error[:2000], round(seconds, 3)), experiment=n)
            s.outcomes.append(Outcome(PROPOSER_FAILED))
            self.evaluate_gates(escalate_only=True)
            return None
        s.proposer_failures = 0
        return result

    def agent_actor(self, model: str) -> str:
        """Who the ledger says acted: `agent:<model>` for a model's calls and proposals (an agent can
        never be the `--by` of a person's command), else the controller."""
        return agent_identity(model) if model else CONTROLLER

    def _readable(self) -> dict[str, str]:
        """Text of the lab files an agent may read besides the editable ones, and program.md (the
        brief every agent gets): plain files inside the lab, at most 1 MB each; a link or anything
        else is left out, never followed."""
        out = {}
        for rel in dict.fromkeys(["program.md", *self.rules.proposer.readable]):
            path = self.lab.root / rel
            try:
                if path.resolve() != self.lab.root.resolve() / rel:  # a link somewhere on the way
                    continue
                if path.is_file() and path.stat().st_size <= 1_000_000:
                    out[rel] = path.read_text(errors="replace")
            except (OSError, RuntimeError):
                continue
        return out

    def _run_log(self, experiment: int, max_bytes: int) -> str | None:
        """The raw tail of the training log of this session's experiment (its first run), or None;
        read without following links (the run wrote it)."""
        if not isinstance(experiment, int) or not 0 <= experiment <= self.state.experiment:
            return None
        run_dir = self.lab.runs_dir / self.state.id / f"{experiment:04d}-1"
        try:
            data, _ = read_run_tail(run_dir, "train.log", max(0, max_bytes))
        except (RunFileRefused, OSError, ValueError):
            return None
        return data.decode("utf-8", "replace")

    def _copy_editable(self, scratch: Path) -> dict[str, str]:
        """Copy the editable files (plain files only) into the proposer's scratch dir; their text."""
        files = {}
        for rel in self.rules.scope.editable:
            src = self.lab.root / rel
            if src.is_file() and not src.is_symlink():
                dst = scratch / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                files[rel] = src.read_text(errors="replace")
        return files

    # -- one experiment --------------------------------------------------------------------------
    def baseline(self, repair: bool = False) -> None:
        """Measure the commit in the work tree once: at session start (a promising candidate's
        judge asks for the incumbent's further runs, up to `decision.baseline_runs`, when a
        decision can depend on them); while FREEZE, once more to re-verify the incumbent."""
        s = self.state
        commit = self.lab.git.head()
        if repair:
            s.experiment += 1  # a repair run is an experiment of its own in the record
        n = s.experiment if repair else 0
        label = f"repair: re-verify the baseline at {commit[:10]}" if repair else "baseline"
        base = P.Decided(description=label, source="repair" if repair else "baseline", params=self._params(),
                         repair=repair, setup=s.setup)
        self.record(P.Proposed(description=label, source=base.source, parent_commit=commit, params=base.params),
                    experiment=n, commit_sha=commit)
        # one run: its repeats (decision.baseline_runs) run when a promising candidate's judge asks for them
        outcome = None if self.stop_requested.is_set() else self.run_job(n, commit, 1, label, len(s.runs.get(commit, [])))
        use = resource_use([outcome] if outcome else [], self.rules.budgets.experiment.memory_soft_mb)
        if outcome is None or outcome.status != "ok" or outcome.integrity_failure:  # a broken pin voids it too
            decision = decision_for_failed_run(outcome.status if outcome else "interrupted",
                                               self.last_run_stopped if outcome else self.stop_requested.is_set())
            self.decide(n, decision, f"{label} failed: {outcome.reason if outcome else 'stopped before it ran'}", None,
                        commit, dataclasses.replace(base, **use))
            return
        bpb = outcome.val_bpb
        s.runs = noise.merge(s.runs, commit, [bpb])
        all_runs = s.runs[commit]
        mean = statistics.fmean(all_runs)
        est = self.noise_estimate()
        evidence = dict(runs=[bpb], noise_sd=round(est.sd, 6), noise_df=est.df)
        drift = None
        if repair and s.best_bpb is not None:
            drift = bpb - s.best_bpb
            reason = f"re-verified baseline {bpb:.4f} vs recorded {s.best_bpb:.4f} (drift {drift:+.4f})"
            # best_bpb stays the recorded figure (as a resume rebuilds it); the keep rule reads
            # the incumbent's runs, this one included, from s.runs
        else:
            s.baseline_bpb = s.best_bpb = mean
            s.best_commit = commit
            earlier = (f"; with {len(all_runs) - 1} earlier run(s) of this commit the mean is {mean:.4f}"
                       if len(all_runs) > 1 else "")
            reason = f"baseline val_bpb {bpb:.4f} over 1 run(s){earlier}; {est.describe()}"
        self.decide(n, Decision.BASELINE, reason, mean, commit,
                    dataclasses.replace(base, baseline_drift=drift, **use, **evidence))

    def _params(self) -> dict[str, float] | None:
        try:
            text = (self.lab.root / "train.py").read_text()
            return {k: c.value for k, c in parse_constants(text).items()}
        except Exception:  # a weird but valid train.py (e.g. too deeply nested): no params, never a dead loop
            return None

    def experiment(self, proposal: Proposal) -> None:
        """One experiment in the lab's work tree, its runs here one after another."""
        steps = self.experiment_steps(proposal, InPlace(self.lab))
        try:
            request = next(steps, None)
            while request is not None:
                r = request
                request = next_request(steps, self.run_job(r.experiment, r.commit, r.run_index, r.description,
                                                           r.seed_offset, work_dir=r.work_dir, name=r.name))
        finally:
            steps.close()  # a run that raised: an incumbent's worktree goes now, not when collected

    def experiment_steps(self, proposal: Proposal, tree: InPlace | Worktree) -> Generator[RunRequest, RunOutcome, None]:
        """One experiment from its proposal to its decision, in `tree`. It yields each run it needs
        and is sent that run's outcome (with `last_run_stopped` set for it): `experiment` runs them
        here one after another; with several workers they run on workers, other experiments' runs
        in between. Each judgement is against the incumbent of the moment: the one it was proposed
        from, or, if another candidate was kept while it ran, that newer best (its change is not in
        this commit: a keep here replaces it)."""
        s = self.state
        s.experiment += 1
        n = s.experiment
        parent = tree.git.head()
        base = about(proposal)
        rule = keep_rule_for(self.rules, self.gate.gate)  # the gate's demand when it started holds to its decision
        self.set_flight(Inflight(n, proposal.description, "harm test", time.time()))
        proposed = P.Proposed(description=proposal.description[:500], hypothesis=proposal.hypothesis[:2000],
                              source=proposal.source, proposer=self.proposer.name, parent_commit=parent,
                              params=proposal.params, lesson=proposal.lesson[:300])
        self.proposals[n] = proposed  # its history item carries the agent's lesson
        self.record(proposed, experiment=n, commit_sha=parent, actor=self.agent_actor(getattr(self.proposer, "model", "")))
        staged = stage_step(tree.root, proposal)
        refused = staged if isinstance(staged, Refused) else harm_step(staged, self.rules.scope)
        if refused is not None:
            self.refuse(n, refused, parent, base)
            return
        self.record(P.HarmPassed([c.path for c in staged.changes], staged.diff_lines), experiment=n)
        commit = commit_step(tree.git, tree.root, staged, n, proposal.description)
        self.record(P.Committed(parent, staged.diff[:DIFF_CAP]), experiment=n, commit_sha=commit)
        outcome = yield RunRequest(n, commit, 1, proposal.description, 0, tree.root)
        outcomes = [outcome]
        if outcome.status != "ok":
            tree.discard(parent)
            decision = decision_for_failed_run(outcome.status, self.last_run_stopped)
            base = dataclasses.replace(base, **resource_use(outcomes, self.rules.budgets.experiment.memory_soft_mb))
            self.decide(n, decision, outcome.reason, None, commit, base)
            return
        runs = [outcome.val_bpb]
        lost: RunOutcome | None = None  # a run of the incumbent whose worker was lost
        verdict = self.judge(self.incumbent_runs(), runs, rule)
        while ((verdict.need_more_runs or verdict.need_incumbent_runs)
               and not self.stop_requested.is_set() and self.room_for_a_run()):
            if verdict.need_incumbent_runs:
                incumbent = s.best_commit  # another candidate's keep may move it while this runs
                top = yield from self.incumbent_run(n, incumbent)
                if top.status == "interrupted":  # its worker was lost: as under a confirmation run
                    lost = top
                    break
                if top.status != "ok" and self.last_run_stopped:  # a stop: no decision on fewer runs
                    break
                if top.status != "ok" or top.integrity_failure:  # judged on the incumbent's runs as they are
                    rule = dataclasses.replace(rule, incumbent_runs=0)
                elif incumbent == (base.incumbent_commit or incumbent):  # the record holds one incumbent's
                    # (a run of a second one, after a keep moved it mid-decision, counts in this session only)
                    base = dataclasses.replace(base, incumbent_commit=incumbent, setup=s.setup,
                                               incumbent_added=[*base.incumbent_added, top.val_bpb])
                    self.incumbent_added[n] = base
            else:
                more = yield RunRequest(n, commit, len(runs) + 1, proposal.description, len(runs), tree.root)
                outcomes.append(more)
                if more.status != "ok":
                    break
                runs.append(more.val_bpb)
            verdict = self.judge(self.incumbent_runs(), runs, rule)
        self.incumbent_added.pop(n, None)  # from here on every decision carries `base`
        use = resource_use(outcomes, self.rules.budgets.experiment.memory_soft_mb)
        interrupted = lost or (outcomes[-1] if outcomes[-1].status == "interrupted" else None)
        if interrupted is not None:  # its worker was lost under a later run: not its fault
            tree.discard(parent)
            self.decide(n, Decision.INTERRUPTED, interrupted.reason, None, commit, dataclasses.replace(base, **use))
            return
        if use["integrity_failure"]:  # a confirmation run broke a pin: none of its runs count
            tree.discard(parent)
            self.decide(n, Decision.CRASH, outcomes[-1].reason, None, commit, dataclasses.replace(base, **use))
            return
        s.runs = noise.merge(s.runs, commit, runs)
        mean = statistics.fmean(runs)
        ev = verdict.evidence
        base = dataclasses.replace(
            base, **use, runs=runs,
            improvement=round(ev.improvement, 6), best_before=s.best_bpb, incumbent_runs=list(ev.incumbent_runs),
            threshold=round(ev.threshold, 6), noise_sd=round(ev.sd, 6), noise_df=ev.df, confidence=ev.confidence,
            setup=s.setup)
        newer = "" if s.best_commit in (parent, None) else (
            f"proposed from {parent[:10]}, judged against {s.best_commit[:10]}, kept while it ran "
            f"(whose change this commit does not have); ")
        if verdict.keep:
            tree.keep(commit)
            s.best_bpb, s.best_commit = mean, commit
            s.keeps += 1
            self.decide(n, Decision.KEEP, newer + verdict.reason, mean, commit, base)
        else:
            tree.discard(parent)
            reason = verdict.reason
            if verdict.need_more_runs or verdict.need_incumbent_runs:
                last = outcomes[-1]
                why = (f"run {len(outcomes)} failed: {last.reason}" if last.status != "ok" else
                       "a stop came" if self.stop_requested.is_set() else "no budget was left for it")
                which = "a confirmation run" if verdict.need_more_runs else "the incumbent's run"
                reason = f"discarded: {which} did not complete ({why}); {verdict.reason}"
            self.decide(n, Decision.DISCARD, newer + reason, mean, commit, base)

    def incumbent_run(self, n: int, incumbent: str) -> Generator[RunRequest, RunOutcome, RunOutcome]:
        """One more run of the incumbent for experiment `n`'s decision, in a worktree of its own
        (the candidate's tree holds the candidate); its outcome, its val_bpb added to the
        incumbent's runs if it scored. Each draws a seed no other run of the incumbent drew,
        including one in flight for another candidate."""
        s = self.state
        k = self.incumbent_run_count[n] = self.incumbent_run_count.get(n, 0) + 1
        seed = self.next_seed[incumbent] = max(self.next_seed.get(incumbent, 0), len(s.runs.get(incumbent, []))) + 1
        tree = Worktree.create(self.lab, incumbent, f"{s.id}-{n:04d}-incumbent{k}")
        try:
            outcome = yield RunRequest(n, incumbent, 0, f"the incumbent {incumbent[:10]}, for experiment {n}",
                                       seed - 1, tree.root, name=f"incumbent{k}")
        finally:
            tree.close()
        if outcome.status == "ok" and not outcome.integrity_failure:
            s.runs = noise.merge(s.runs, incumbent, [outcome.val_bpb])
        return outcome

    def incumbent_runs(self) -> list[float]:
        """The scored runs of the best commit now: what a candidate is judged against."""
        s = self.state
        return list(s.runs.get(s.best_commit) or [s.best_bpb])

    def room_for_a_run(self) -> bool:
        """May one more run of this experiment start? Budgets are checked before every run, not
        only between experiments (a baseline and confirmations are several runs)."""
        now = utc_now()  # the experiment in flight is not counted until it is decided
        return budget_stop(self.rules, self.session_usage(now), self.day_usage(now)) is None

    def judge(self, incumbent: list[float], runs: list[float], rule: keep_rule.KeepRule) -> keep_rule.KeepVerdict:
        """`rule` (the keep rule in force when the experiment started, THROTTLE's demand included)
        with the noise measured so far: a person's pause or resume mid-experiment changes neither."""
        return keep_rule.judge(incumbent, runs, rule, self.noise_estimate())

    def contain(self, error: Exception, n: int | None = None) -> None:
        """An experiment the controller could not carry through (the latest, or `n`): reset the
        work tree to the best commit and, if it was not decided yet, record it as a crash with
        the error as its reason."""
        s = self.state
        n = s.experiment if n is None else n
        reset_to = s.best_commit or self.lab.git.head()
        self.lab.git.reset_hard(reset_to)
        self.set_flight(None, n)
        if n not in self.decided:
            why = f"the controller could not carry this experiment through ({type(error).__name__}: {error})"[:1000]
            proposed = self.proposals.get(n)
            base = P.Decided() if proposed is None else P.Decided(  # what it was, for readers of the decision
                description=proposed.description, source=proposed.source, params=proposed.params)
            if (made := self.incumbent_added.pop(n, None)) is not None:  # its incumbent's runs still count
                base = dataclasses.replace(base, incumbent_commit=made.incumbent_commit, setup=made.setup,
                                           incumbent_added=made.incumbent_added)
            self.decide(n, Decision.CRASH, why + "; its change was reset", None, reset_to, base)

    def refuse(self, n: int, refused: Refused, parent: str, base: P.Decided) -> None:
        self.record(P.HarmRefused(refused.items, refused.diff), experiment=n, rule=refused.rule)
        self.decide(n, Decision.REFUSED, refused.reason, None, parent,
                    dataclasses.replace(base, hard_violation=refused.hard, refusal_rule=refused.rule))

    def run_job(self, n: int, commit: str, run_index: int, description: str, seed_offset: int = 0,
                work_dir: Path | None = None, name: str = "") -> RunOutcome:
        """Train, evaluate and post-check one commit here, in this process (in `work_dir`, by default
        the lab's work tree); record what came back. `seed_offset`: how many runs of this commit
        were scored before (each repeat draws another seed)."""
        req = RunRequest(n, commit, run_index, description, seed_offset, work_dir, name)
        if self.pool is not None:
            return self._run_on_pool(req)
        job = self.start_job(req)
        runner = Runner(self.lab.state_dir, self.rules, self.level)

        def on_start(pid: int) -> None:
            self.inflight.pid = pid
            if self.stop_requested.is_set():
                kill_tree(pid)

        stops_before = self.stops
        outcome = runner.run(job, self.data, on_start=on_start)
        self.last_run_stopped = self.stops != stops_before or self.stop_requested.is_set()
        self.finish_job(req, outcome)
        return outcome

    def _run_on_pool(self, req: RunRequest) -> RunOutcome:
        """One run on a worker, waited for: the baseline and its re-verifications, with several workers."""
        job = self.start_job(req)
        stops_before = self.stops
        self.pool.submit(0, job, self.data)
        cancelled = False
        while not (done := self.pool.finished(POLL_S)):
            if self.stop_requested.is_set() and not cancelled:
                self.pool.cancel_all()
                cancelled = True
        outcome = done[0][1]
        self.last_run_stopped = self.stops != stops_before or self.stop_requested.is_set()
        self.finish_job(req, outcome)
        return outcome

    def start_job(self, req: RunRequest) -> Job:
        """The job for one run, with its training_started event, wherever it then runs."""
        n = req.experiment
        run_dir = self.lab.runs_dir / self.state.id / f"{n:04d}-{req.name or req.run_index}"
        job = Job(n, req.run_index, req.commit, req.work_dir or self.lab.root, run_dir, seed_offset=req.seed_offset)
        deadline = training_kill_seconds(self.rules)  # the hard kill, whichever clock stops the run
        self.set_flight(Inflight(n, req.description, "training", time.time(), time.time() + deadline), n)
        self.record(P.TrainingStarted(str(run_dir), req.run_index, deadline, self.level), experiment=n, commit_sha=req.commit)
        return job

    def finish_job(self, req: RunRequest, outcome: RunOutcome) -> None:
        """Record what one run came back with: training, evaluation, post-check failures."""
        n, commit, run_index = req.experiment, req.commit, req.run_index
        t = outcome.train
        measured = None if t.exit_seconds is None else round(t.exit_seconds, 3)
        claimed, claim = time_claim(outcome.stats, measured)
        self.record(P.TrainingFinished(
            run_index, t.returncode, t.timed_out, t.memory_killed, round(t.wall_seconds, 3), round(t.peak_rss_mb, 1),
            t.level, t.log_tail[-2000:], outcome.stats, t.stopped, measured, claimed, claim, t.limits,
            t.clock, None if t.cpu_seconds is None else round(t.cpu_seconds, 3), t.cpu_threads, t.stopped_by,
            **device_use.training_fields(outcome), **phases.training_fields(outcome.phases),
            counted_seconds=None if t.counted_seconds is None else round(t.counted_seconds, 3),
        ), experiment=n, commit_sha=commit)
        if outcome.evaluation is not None or outcome.eval_result.get("trust") == "reported":
            e = outcome.evaluation
            status, reason, bpb = outcome.evaluated or (outcome.status, outcome.reason, outcome.val_bpb)
            self.record(P.Evaluated(
                run_index, status, reason, round(e.wall_seconds, 3) if e else 0.0,
                e.returncode if e else None, self.rules.evaluation.trust, outcome.eval_result,
                **phases.evaluation_fields(outcome.phases),
            ), experiment=n, commit_sha=commit, val_bpb=bpb)
        if outcome.postcheck_problems:
            self.record(P.PostcheckFailed(list(outcome.postcheck_problems)), experiment=n, rule="integrity")
        self.set_flight(Inflight(n, req.description, "deciding", time.time()), n)

    def decide(self, n: int, decision: Decision, reason: str, bpb: float | None, commit: str, payload: P.Decided) -> None:
        payload = dataclasses.replace(payload, decision=decision.value, reason=reason)
        self.record(payload, experiment=n, decision=decision, val_bpb=bpb, commit_sha=commit, gate_state=self.gate.state)
        self.decided.add(n)
        s = self.state
        s.outcomes.append(outcome_of(decision, payload))
        proposed = self.proposals.pop(n, None)
        s.history.append(history_item(proposed, payload, decision, bpb, s.id, n))
        self.set_flight(None, n)
        self.evaluate_gates()

    def evaluate_gates(self, escalate_only: bool = False) -> None:
        with self.gate_lock:
            t = self.gate.evaluate(self.rules.gates.rules, self.state.outcomes, self._burn(),
                                   self.rules.gates.probation_experiments, escalate_only)
            if t:
                self.record_transition(t)

    def record_transition(self, t: Transition, actor: str = CONTROLLER) -> None:
        self.gate_why = (t.rule, t.evidence)
        self.record(transition_payload(t, self.gate.held_by_operator), actor=actor, gate_state=t.dest.value, rule=t.rule)

    # -- the end ---------------------------------------------------------------------------------
    def end(self, reason: str) -> dict[str, Any]:
        s = self.state
        if s is None:
            raise SessionRefused(reason)
        self.inflight = None
        with self.gate_lock:  # the gate the summary records is the last one
            self.commands_closed = True
        if s.best_commit:  # leave the work tree at the best commit, whatever happened
            self.lab.git.reset_hard(s.best_commit)
        summary = P.SessionEnded(reason, s.experiment, s.keeps, s.baseline_bpb, s.best_bpb, s.best_commit, self.gate.state, s.branch)
        ev = self.record(summary, commit_sha=s.best_commit, gate_state=self.gate.state)
        write_anchor(self.lab, (ev.seq, ev.hash), s.id)
        self.recorder.snapshot = lambda: self._snapshot(running=False)
        self.recorder.publish()
        return summary.to_json() | {"session": s.id}


def _call_with_deadline(fn, ctx: ProposalContext | None, limit_s: float, cleanup: Path | None = None) -> tuple[Any, str | None, bool]:
    """Call a proposer in a worker thread: (value, None, False), (None, why, False) if it raised,
    or (None, why, True) if it overran. A thread that overran is abandoned (daemon) and its
    answer, if it ever comes, dropped; `cleanup` is removed when the thread ends, not before."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(ctx)
        except BaseException as e:  # a proposer's failure is an outcome, never a dead controller
            box["error"] = f"{type(e).__name__}: {e}"
        finally:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)

    worker = threading.Thread(target=target, name="charter-proposer", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        return None, f"the proposer did not return within proposer.deadline_seconds = {limit_s:g}", True
    if "error" in box:
        return None, box["error"], False
    return box.get("value"), None, False
