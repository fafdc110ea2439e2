"""The governed session: baseline, then propose → harm test → commit → train → evaluate →
post-check → keep or discard, with gates and budgets checked between every step.

`Session.run()` holds the lab's ledger open for the whole session (the controller is its only
writer), records every step as an event, and treats crash, timeout, refusal and interruption as
outcomes with reasons. If a previous controller died mid-session, the next `charter run` resumes
it: the interrupted experiment is recorded as interrupted and the work tree is reset to the last
kept commit before anything else happens. Decisions come from pure modules (harm_test,
keep_rule, gates, budgets); this module is the edge that runs processes, git and the ledger.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import constitution
from constitution import Constitution, GateState
from controller.execution import sandbox
from controller.policy import budgets, keep_rule
from controller.workspace.anchor import write_anchor
from controller.live.server import ControlServer
from controller.policy.gates import GateMachine, Outcome, Transition, firing_rules
from controller.policy.harm_test import diff_line_count, harm_test
from controller.workspace.lab import Lab, file_sha256
from controller.operators import restore_gate
from controller.proposers import HistoryItem, Proposal, ProposalContext, Proposer
from controller.execution.runner import PrepareError, RunOutcome, Runner, verify_data
from controller.workspace.staging import StagingError, apply_to_lab, stage, unified_diff
from controller.live.status import build_status, session_progress, write_status
from ledger import Decision, EventKind, Ledger
from ledger.verify import verify_chain

CONTROLLER = "controller"
MAX_REPAIRS = 2  # baseline re-verifications in one FREEZE before the session ends


class SessionRefused(Exception):
    """The session cannot start (sandbox unavailable, data not prepared, pins broken)."""


def kill_tree(pid: int) -> None:
    """Kill a sandboxed run's whole process group (the sandbox starts each in its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Inflight:
    experiment: int
    description: str
    step: str
    started: float
    deadline: float | None = None
    pid: int | None = None


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
    repairs: int = 0


class Session:
    def __init__(self, lab: Lab, proposer: Proposer, tag: str | None = None, max_experiments: int | None = None):
        self.lab = lab
        self.rules: Constitution = lab.load_constitution()
        self.proposer = proposer
        self.tag = tag
        self.max_experiments = max_experiments
        self.gate = GateMachine()
        self.gate_why: tuple[str | None, str | None] = (None, None)  # the last transition's rule and evidence
        self.inflight: Inflight | None = None
        self.led: Ledger | None = None
        self.state: SessionState | None = None
        self.stop_requested = threading.Event()
        self.level = ""
        self._lock = threading.Lock()  # serializes ledger writes between the loop and the control thread

    # -- ledger helpers --------------------------------------------------------------------------
    def record(self, kind: EventKind, payload: dict[str, Any] | None = None, *, actor: str = CONTROLLER, **typed: Any):
        with self._lock:
            ev = self.led.append(kind, actor=actor, session=self.state.id if self.state else None, payload=payload or {}, **typed)
            self._session_events.append(ev)
        self.publish()
        self._maybe_fault(kind)
        return ev

    def _maybe_fault(self, kind: EventKind) -> None:
        """Fault injection for crash-safety tests: CHARTER_FAULT_AFTER=kind[:n] kills this
        process with SIGKILL right after the n-th event of that kind is committed."""
        spec = os.environ.get("CHARTER_FAULT_AFTER")
        if not spec:
            return
        want, _, nth = spec.partition(":")
        if want != kind.value:
            return
        self._fault_count = getattr(self, "_fault_count", 0) + 1
        if self._fault_count >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    def publish(self) -> None:
        """Write the live status file other terminals (status, TUI) read while we run."""
        if self.state is None:
            return
        write_status(self.lab.state_dir, self.status())

    def status(self) -> dict[str, Any]:
        s = self.state
        now = utc_now()
        usage = self.session_usage(now)
        return build_status(
            rules=self.rules, gate=self.gate, session_id=s.id, tag=s.tag, branch=s.branch,
            started=s.started, experiment=s.experiment, baseline=s.baseline_bpb, best=s.best_bpb,
            best_commit=s.best_commit, keeps=s.keeps, usage=usage, inflight=self.inflight, running=True,
            pid=os.getpid(), now=now, gate_rule=self.gate_why[0], gate_evidence=self.gate_why[1],
        )

    def session_usage(self, now: datetime) -> budgets.Usage:
        evs = self._session_events
        return budgets.usage_from_events(evs, None, now, started=self.state.started, disk_mb=self._disk_mb())

    def day_usage(self, now: datetime) -> budgets.Usage:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return budgets.usage_from_events(self._day_events + self._session_events, midnight, now)

    def _disk_mb(self) -> float:
        root = self.lab.runs_dir / self.state.id
        total = 0
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total / 1e6

    # -- the session -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        with Ledger.open(self.lab.ledger_path, wait_s=15) as led:
            self.led = led
            self._session_events = []
            self._day_events = []
            control = ControlServer(self.lab.state_dir, self.answer)
            control.on_command = self._on_command
            self._control = control
            control.start()
            old_term = signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
            try:
                self.start_or_resume()
                reason = self.loop()
                return self.end(reason)
            finally:
                signal.signal(signal.SIGTERM, old_term)
                control.close()
                self.led = None

    def start_or_resume(self) -> None:
        self.level = self.choose_isolation()
        history = self.led.events(kinds=[EventKind.SESSION_STARTED, EventKind.SESSION_ENDED, EventKind.GATE_TRANSITION, EventKind.DECIDED, EventKind.PROPOSED, EventKind.TRAINING_FINISHED, EventKind.EVALUATED, EventKind.AGENT_CALL])
        today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
        self.gate, rule, evidence = restore_gate(history)  # gate state survives restarts
        self.gate_why = (rule, evidence)
        outcomes = [self._outcome(ev) for ev in history if ev.kind == EventKind.DECIDED]
        ended = {ev.session for ev in history if ev.kind == EventKind.SESSION_ENDED}
        open_sessions = [ev for ev in history if ev.kind == EventKind.SESSION_STARTED and ev.session not in ended]
        git = self.lab.git
        if open_sessions:
            start = open_sessions[-1]
            sid = start.session
            evs = [e for e in history if e.session == sid]
            self._session_events = list(evs)
            self._day_events = [e for e in history if e.ts >= today and e.session != sid]
            self.state = SessionState(sid, start.payload["tag"], start.payload["branch"], start.ts)
            self.state.outcomes = outcomes
            self._replay(evs)
            proposed = [e.experiment for e in evs if e.kind == EventKind.PROPOSED]
            decided = {e.experiment for e in evs if e.kind == EventKind.DECIDED}
            interrupted = [n for n in proposed if n not in decided]
            reset_to = self.state.best_commit or start.payload["base_commit"]
            git.checkout(self.state.branch, create_at=reset_to)
            git.reset_hard(reset_to)
            self.record(EventKind.SESSION_RESUMED, {"tag": self.state.tag, "reset_to": reset_to, "interrupted": interrupted, "isolation": self.level, "pid": os.getpid()}, commit_sha=reset_to, gate_state=self.gate.state)
            for n in interrupted:
                prop = next(e.payload for e in evs if e.kind == EventKind.PROPOSED and e.experiment == n)
                extra = {k: prop.get(k) for k in ("description", "source", "params")}
                self.decide(n, Decision.INTERRUPTED, "the controller stopped during this experiment (killed or crashed); its change was reset", None, reset_to, extra)
            return
        tag = self.tag or utc_now().strftime("%Y%m%d-%H%M%S")
        branch = f"charter/{tag}"
        if git.branch_exists(branch):
            raise SessionRefused(f"branch {branch} already exists from an earlier session; choose another --tag")
        dirty = [p for p in git.dirty_paths()]
        if dirty:
            raise SessionRefused(f"the lab has uncommitted changes ({', '.join(dirty[:3])}); commit or discard them first")
        self._day_events = [e for e in history if e.ts >= today]
        base = git.head()
        git.checkout(branch, create_at=base)
        sid = f"s{utc_now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
        self.state = SessionState(sid, tag, branch, utc_now())
        self.state.outcomes = outcomes
        ev = self.record(EventKind.SESSION_STARTED, {
            "tag": tag, "branch": branch, "base_commit": base, "isolation": self.level,
            "proposer": self.proposer.name, "max_experiments": self.max_experiments, "pid": os.getpid(),
            "constitution_hash": constitution.constitution_hash(self.rules), "constitution_version": self.rules.meta.version,
        }, commit_sha=base, gate_state=self.gate.state)
        self.state.started = ev.ts
        self.record(EventKind.CONSTITUTION_LOADED, {"hash": constitution.constitution_hash(self.rules), "version": self.rules.meta.version, "rules": self.rules.model_dump(mode="json")})

    def _replay(self, evs) -> None:
        """Rebuild best/baseline/history of a session from its events (resume)."""
        s = self.state
        prog = session_progress(evs)  # numbers are never reused, even for interrupted ones
        s.experiment, s.baseline_bpb, s.best_bpb, s.best_commit, s.keeps = (
            prog.experiments, prog.baseline_bpb, prog.best_bpb, prog.best_commit, prog.keeps)
        proposals = {e.experiment: e.payload for e in evs if e.kind == EventKind.PROPOSED}
        for e in evs:
            if e.kind != EventKind.DECIDED:
                continue
            p = e.payload
            prop = proposals.get(e.experiment, {})
            s.history.append(HistoryItem(prop.get("description", p.get("description", "")), str(e.decision), e.val_bpb, prop.get("source", ""), p.get("params"), p.get("improvement")))

    def _outcome(self, ev) -> Outcome:
        p = ev.payload
        return Outcome(str(ev.decision), bool(p.get("hard_violation")), bool(p.get("integrity_failure")), bool(p.get("memory_soft_exceeded")), p.get("baseline_drift"))

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

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> str:
        s = self.state
        try:
            self.data = self.check_integrity()
        except SessionRefused as e:
            return str(e)
        if s.baseline_bpb is None and self.gate.gate != GateState.STOP:
            self.baseline()
            if s.baseline_bpb is None:
                return "the baseline did not train and evaluate; nothing to compare against (see its decided event)"
        while True:
            self.drain_commands()
            if self.stop_requested.is_set() or self.gate.gate == GateState.STOP:
                return "gate at STOP: a person must `charter resume --reason ... --by ...`"
            if self.gate.gate == GateState.FREEZE:
                if self.gate.held_by_operator:
                    time.sleep(0.5)
                    continue
                if any(r.metric == "budget_burn" for r in self._firing()):
                    return "gate at FREEZE: budget exhausted"
                if s.repairs >= MAX_REPAIRS:
                    return f"gate at FREEZE after {MAX_REPAIRS} repair runs; the condition has not cleared"
                s.repairs += 1
                self.baseline(repair=True)
                continue
            s.repairs = 0
            now = utc_now()
            for period, usage, limits in (("session", self.session_usage(now), self.rules.budgets.session), ("day", self.day_usage(now), self.rules.budgets.day)):
                why = budgets.exhausted(usage, limits)
                if why:
                    self.record(EventKind.BUDGET_EXHAUSTED, {"period": period, "resource": why, "usage": usage.as_dict()}, rule=f"budgets.{period}")
                    self.evaluate_gates()
                    return f"{period} budget exhausted: {why}"
            done = s.experiment  # experiments after the baseline
            if self.max_experiments is not None and done >= self.max_experiments:
                return f"reached --max-experiments {self.max_experiments}"
            ctx = ProposalContext(self.lab.root, self.rules.scope.editable, self._editable_files(), list(s.history), s.best_bpb, s.experiment + 1)
            proposal = self.proposer.propose(ctx)
            if proposal is None:
                return f"the {self.proposer.name} proposer has nothing more to propose"
            self.experiment(proposal)
            if self.gate.gate == GateState.THROTTLE and self.rules.gates.throttle.cooldown_seconds:
                self.stop_requested.wait(self.rules.gates.throttle.cooldown_seconds)

    def _firing(self):
        return firing_rules(self.rules.gates.rules, self.state.outcomes, self._burn())

    def _burn(self) -> float:
        return budgets.burn(self.session_usage(utc_now()), self.rules.budgets.session)[0]

    def _editable_files(self) -> dict[str, str]:
        out = {}
        for rel in self.rules.scope.editable:
            p = self.lab.root / rel
            if p.is_file():
                out[rel] = p.read_text(errors="replace")
        return out

    def check_integrity(self) -> dict:
        """Immutable files and cached data must match their pins before anything runs."""
        problems = self.immutable_problems()
        try:
            data = verify_data(self.lab.root, self.rules)
        except PrepareError as e:
            raise SessionRefused(f"data not ready: {e}; run `charter prepare`") from None
        problems += self.data_problems(data)
        if problems:
            self.record(EventKind.INTEGRITY_FAILURE, {"problems": problems}, rule="integrity")
            t = self.gate.operator_stop(CONTROLLER, "; ".join(problems))
            self.record_transition(Transition(t.source, t.dest, "integrity", "; ".join(problems), CONTROLLER))
            raise SessionRefused("integrity check failed: " + "; ".join(problems))
        return data

    def immutable_problems(self) -> list[str]:
        problems = []
        for rel, pin in self.rules.evaluation.immutable.items():
            p = self.lab.root / rel
            if not p.is_file() or p.is_symlink():
                problems.append(f"immutable file {rel} is missing")
            elif pin and file_sha256(p) != pin:
                problems.append(f"immutable file {rel} does not match its pin")
        return problems

    def data_problems(self, data: dict) -> list[str]:
        problems = []
        ev = self.rules.evaluation
        if ev.data_hash and data.get("data_hash") != ev.data_hash:
            problems.append("prepared data does not match evaluation.data_hash")
        if ev.tokenizer_hash and data.get("tokenizer_hash") != ev.tokenizer_hash:
            problems.append("tokenizer does not match evaluation.tokenizer_hash")
        if data.get("profile") != ev.profile:
            problems.append(f"prepared profile {data.get('profile')!r} is not the constitution's {ev.profile!r}")
        return problems

    # -- one experiment ----------------------------------------------------------------------
    def baseline(self, repair: bool = False) -> None:
        s = self.state
        git = self.lab.git
        commit = git.head()
        if repair:
            s.experiment += 1  # a repair run is an experiment of its own in the record
        n = s.experiment if repair else 0
        label = f"repair: re-verify the baseline at {commit[:10]}" if repair else "baseline"
        self.record(EventKind.PROPOSED, {"description": label, "source": "repair" if repair else "baseline", "parent_commit": commit, "params": self._params()}, experiment=n, commit_sha=commit)
        runs, outcome = self.train_and_evaluate(n, commit, 1, label)
        if outcome.status != "ok":
            decision = Decision.TIMEOUT if outcome.status == "timeout" else Decision.CRASH
            self.decide(n, decision, f"{label} failed: {outcome.reason}", None, commit, {"repair": repair, **self._resource_flags(outcome)})
            return
        bpb = runs[0]
        drift = None
        if repair and s.best_bpb is not None:
            drift = bpb - s.best_bpb
        elif not repair:
            s.baseline_bpb = s.best_bpb = bpb
            s.best_commit = commit
        reason = f"baseline val_bpb {bpb:.4f}" if not repair else f"re-verified baseline {bpb:.4f} vs recorded {s.best_bpb:.4f} (drift {drift:+.4f})"
        self.decide(n, Decision.BASELINE, reason, bpb, commit, {"repair": repair, "baseline_drift": drift, "params": self._params(), **self._resource_flags(outcome)})

    def _params(self) -> dict[str, float] | None:
        from controller.proposers.offline import parse_constants
        try:
            text = (self.lab.root / "train.py").read_text()
            return {k: c.value for k, c in parse_constants(text).items()}
        except (OSError, SyntaxError, ValueError):
            return None

    def experiment(self, proposal: Proposal) -> None:
        s = self.state
        s.experiment += 1
        n = s.experiment
        git = self.lab.git
        parent = git.head()
        # what every decision of this experiment records about the proposal (proposers learn from it)
        about = {"description": proposal.description[:500], "source": proposal.source, "params": proposal.params}
        self.inflight = Inflight(n, proposal.description, "harm test", time.time())
        self.record(EventKind.PROPOSED, {
            "description": proposal.description[:500], "hypothesis": proposal.hypothesis[:2000],
            "source": proposal.source, "proposer": self.proposer.name, "parent_commit": parent,
            "params": proposal.params,
        }, experiment=n, commit_sha=parent)
        try:
            changes = stage(self.lab.root, proposal)
        except StagingError as e:
            self.record(EventKind.HARM_REFUSED, {"refusals": [{"rule": "malformed", "evidence": str(e)}], "diff": proposal.patch or ""}, experiment=n, rule="malformed")
            self.decide(n, Decision.REFUSED, f"malformed proposal: {e}", None, parent, about)
            return
        diff = unified_diff(changes)
        refusals = harm_test(changes, self.rules.scope) if changes else []
        if not changes:
            self.record(EventKind.HARM_REFUSED, {"refusals": [{"rule": "empty", "evidence": "the proposal changes nothing"}], "diff": ""}, experiment=n, rule="empty")
            self.decide(n, Decision.REFUSED, "the proposal changes nothing", None, parent, about)
            return
        if refusals:
            first = refusals[0]
            hard = any(r.hard for r in refusals)
            self.record(EventKind.HARM_REFUSED, {
                "refusals": [{"rule": r.rule, "path": r.path, "line": r.line, "evidence": r.evidence, "hard": r.hard} for r in refusals],
                "diff": diff[:200_000],
            }, experiment=n, rule=first.rule)
            self.decide(n, Decision.REFUSED, f"harm test: {first.rule} ({first.path}{':' + str(first.line) if first.line else ''}: {first.evidence})", None, parent, about | {"hard_violation": hard})
            return
        self.record(EventKind.HARM_PASSED, {"files": [c.path for c in changes], "diff_lines": diff_line_count(changes)}, experiment=n)
        apply_to_lab(self.lab.root, changes)
        commit = git.commit_all(f"experiment {n}: {proposal.description[:200]}")
        self.record(EventKind.COMMITTED, {"parent": parent, "diff": diff[:200_000]}, experiment=n, commit_sha=commit)
        confirmations = self.rules.decision.confirmation_runs
        if self.gate.gate == GateState.THROTTLE:
            confirmations = max(confirmations, self.rules.gates.throttle.confirmation_runs)
        runs, outcome = self.train_and_evaluate(n, commit, 1, proposal.description)
        extra = about | self._resource_flags(outcome)
        if outcome.status != "ok":
            git.reset_hard(parent)
            decision = Decision.TIMEOUT if outcome.status == "timeout" else Decision.CRASH
            if self.stop_requested.is_set():
                decision = Decision.INTERRUPTED
            self.decide(n, decision, outcome.reason, None, commit, extra)
            return
        verdict = keep_rule.judge(s.best_bpb, runs, self.rules.decision.min_improvement, confirmations, self.rules.decision.noise_sd)
        while verdict.need_more_runs and not self.stop_requested.is_set():
            more, outcome = self.train_and_evaluate(n, commit, len(runs) + 1, proposal.description)
            if outcome.status != "ok":
                break
            runs += more
            verdict = keep_rule.judge(s.best_bpb, runs, self.rules.decision.min_improvement, confirmations, self.rules.decision.noise_sd)
        mean = sum(runs) / len(runs)
        extra |= {"runs": runs, "improvement": verdict.improvement, "best_before": s.best_bpb}
        if verdict.keep:
            s.best_bpb, s.best_commit = mean, commit
            s.keeps += 1
            self.decide(n, Decision.KEEP, verdict.reason, mean, commit, extra)
        else:
            git.reset_hard(parent)
            reason = verdict.reason if not verdict.need_more_runs else "confirmation run failed or was interrupted"
            self.decide(n, Decision.DISCARD, reason, mean, commit, extra)

    def _resource_flags(self, outcome: RunOutcome | None) -> dict[str, Any]:
        if outcome is None or outcome.train is None:
            return {}
        peak = outcome.train.peak_rss_mb
        return {
            "integrity_failure": outcome.integrity_failure,
            "memory_soft_exceeded": peak > self.rules.budgets.experiment.memory_soft_mb,
            "peak_rss_mb": round(peak, 1),
            "train_seconds": round(outcome.train.wall_seconds, 2),
            "eval_seconds": round(outcome.evaluation.wall_seconds, 2) if outcome.evaluation else None,
        }

    def train_and_evaluate(self, n: int, commit: str, run_index: int, description: str) -> tuple[list[float], RunOutcome]:
        s = self.state
        run_dir = self.lab.runs_dir / s.id / f"{n:04d}-{run_index}"
        runner = Runner(self.lab.root, self.lab.state_dir, self.rules, self.level)
        deadline = self.rules.experiment_deadline_seconds
        self.inflight = Inflight(n, description, "training", time.time(), time.time() + deadline)
        self.record(EventKind.TRAINING_STARTED, {"run_dir": str(run_dir), "run": run_index, "deadline_seconds": deadline, "isolation": self.level}, experiment=n, commit_sha=commit)

        def on_start(pid: int) -> None:
            self.inflight.pid = pid
            if self.stop_requested.is_set():
                kill_tree(pid)

        outcome = runner.run(run_dir, self.data, on_start=on_start)
        t = outcome.train
        self.record(EventKind.TRAINING_FINISHED, {
            "run": run_index, "returncode": t.returncode, "timed_out": t.timed_out, "memory_killed": t.memory_killed,
            "wall_seconds": round(t.wall_seconds, 3), "peak_rss_mb": round(t.peak_rss_mb, 1), "isolation": t.level,
            "log_tail_untrusted": t.log_tail[-2000:], "stats": self._read_stats(run_dir),
        }, experiment=n, commit_sha=commit)
        if outcome.evaluation is not None or outcome.eval_result.get("trust") == "reported":
            e = outcome.evaluation
            self.record(EventKind.EVALUATED, {
                "run": run_index, "status": outcome.status, "reason": outcome.reason,
                "wall_seconds": round(e.wall_seconds, 3) if e else 0.0, "returncode": e.returncode if e else None,
                "trust": self.rules.evaluation.trust, "result": outcome.eval_result,
            }, experiment=n, commit_sha=commit, val_bpb=outcome.val_bpb)
        self.inflight = Inflight(n, description, "post-checks", time.time())
        problems = self.immutable_problems()
        if not problems:
            try:
                problems = self.data_problems(verify_data(self.lab.root, self.rules))
            except PrepareError as e:
                problems = [f"data no longer verifies: {e}"]
        if problems:
            self.record(EventKind.POSTCHECK_FAILED, {"problems": problems}, experiment=n, rule="integrity")
            return [], RunOutcome("crash", "post-check failed: " + "; ".join(problems), None, t, outcome.evaluation, outcome.eval_result, integrity_failure=True)
        self.inflight = Inflight(n, description, "deciding", time.time())
        return ([outcome.val_bpb] if outcome.status == "ok" else []), outcome

    @staticmethod
    def _read_stats(run_dir: Path) -> dict:
        try:
            data = json.loads((run_dir / "stats.json").read_text())
            return data if isinstance(data, dict) and len(json.dumps(data)) < 20_000 else {}
        except (OSError, ValueError):
            return {}

    def decide(self, n: int, decision: Decision, reason: str, bpb: float | None, commit: str, extra: dict[str, Any]) -> None:
        payload = {"decision": decision.value, "reason": reason, **extra}
        ev = self.record(EventKind.DECIDED, payload, experiment=n, decision=decision, val_bpb=bpb, commit_sha=commit, gate_state=self.gate.state)
        s = self.state
        s.outcomes.append(self._outcome(ev))
        if n > 0 or decision != Decision.BASELINE:
            s.history.append(HistoryItem(extra.get("description", ""), decision.value, bpb, extra.get("source", ""), extra.get("params"), extra.get("improvement")))
        self.inflight = None
        self.evaluate_gates()

    def evaluate_gates(self) -> None:
        t = self.gate.evaluate(self.rules.gates.rules, self.state.outcomes, self._burn(), self.rules.gates.probation_experiments)
        if t:
            self.record_transition(t)

    def record_transition(self, t: Transition, actor: str = CONTROLLER) -> None:
        self.gate_why = (t.rule, t.evidence)
        self.record(EventKind.GATE_TRANSITION, {
            "from": t.source.value, "to": t.dest.value, "rule": t.rule, "evidence": t.evidence, "by": t.by,
            "held": self.gate.held_by_operator,
        }, actor=actor, gate_state=t.dest.value, rule=t.rule)

    # -- operators ---------------------------------------------------------------------------
    def _on_command(self, msg: dict[str, Any]) -> None:
        """Called on the control thread: a stop must reach an experiment in flight at once."""
        if msg.get("op") == "stop":
            self.stop_requested.set()
            if self.inflight and self.inflight.pid:
                kill_tree(self.inflight.pid)

    def drain_commands(self) -> None:
        while not self._control.commands.empty():
            msg = self._control.commands.get()
            reply = msg["_reply"]
            try:
                reply.update(self.apply_command(msg))
            except Exception as e:  # report to the operator; the loop goes on
                reply.update({"ok": False, "error": str(e)})
            msg["_done"].set()

    def apply_command(self, msg: dict[str, Any]) -> dict[str, Any]:
        op, by = msg["op"], f"person:{msg.get('by') or 'operator'}"
        reason = str(msg.get("reason") or "")
        self.record(EventKind.OPERATOR_COMMAND, {"command": op, "reason": reason}, actor=by)
        if op == "pause":
            t = self.gate.operator_pause(by, reason or "paused by operator")
        elif op == "stop":
            self.stop_requested.set()
            t = self.gate.operator_stop(by, reason or "stopped by operator")
        else:
            self.stop_requested.clear()
            t = self.gate.operator_resume(by, reason)
        self.record_transition(t, actor=by)
        return {"ok": True, "gate": self.gate.state}

    def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Read-only requests from other terminals, answered on the control thread."""
        if msg.get("op") == "status":
            return {"ok": True, "status": self.status()}
        op = msg.get("op")
        if op == "note":
            ev = self.record(EventKind.NOTE, {"text": str(msg.get("text", ""))[:10_000]}, actor=f"person:{msg.get('by') or 'operator'}")
            return {"ok": True, "seq": ev.seq}
        if op not in ("query", "report", "export", "verify"):
            return {"ok": False, "error": f"unknown request {op!r}"}
        from ledger.query import run_readonly_query  # report/export pull in matplotlib: import on use
        cur = self.led.cursor()  # a reader on its own cursor never blocks the loop's appends
        try:
            if op == "query":
                return {"ok": True, **run_readonly_query(cur, str(msg.get("sql", "")), limit=int(msg.get("limit", 10000)))}
            if op == "verify":
                anchor = tuple(msg["anchor"]) if msg.get("anchor") else None
                return {"ok": True, "result": verify_chain(cur, anchor)._asdict()}
            if op == "report":
                from ledger.report import write_report
                md, png = write_report(cur, Path(msg["out"]), session=msg.get("session"))
                return {"ok": True, "markdown": str(md), "chart": str(png)}
            from ledger.export import export_views
            return {"ok": True, "paths": [str(p) for p in export_views(cur, Path(msg["out"]), msg["format"], session=msg.get("session"))]}
        finally:
            cur.close()

    # -- the end -----------------------------------------------------------------------------
    def end(self, reason: str) -> dict[str, Any]:
        s = self.state
        if s is None:
            raise SessionRefused(reason)
        self.inflight = None
        # leave the work tree at the best commit, whatever happened
        if s.best_commit:
            self.lab.git.reset_hard(s.best_commit)
        summary = {
            "reason": reason, "experiments": s.experiment, "keeps": s.keeps, "baseline_bpb": s.baseline_bpb,
            "best_bpb": s.best_bpb, "best_commit": s.best_commit, "gate": self.gate.state, "branch": s.branch,
        }
        ev = self.record(EventKind.SESSION_ENDED, summary, commit_sha=s.best_commit, gate_state=self.gate.state)
        head = (ev.seq, ev.hash)
        write_anchor(self.lab, head, s.id)
        self.publish_final()
        return summary | {"session": s.id}

    def publish_final(self) -> None:
        status = self.status()
        status["running"] = False
        write_status(self.lab.state_dir, status)
