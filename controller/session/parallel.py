"""The loop with several experiments in flight, their runs on Ray workers.

The controller's own steps stay here, in its one thread, in order: the next step (gate, budgets,
proposing: `Session.next_step`), the stage, harm test and commit of each candidate (in a git
worktree of its own, detached at the incumbent it was proposed from), the record of every run
and every decision. Only the runs go to workers (`RayPool`), at most one per worker. An
experiment is `Session.experiment_steps`, the same generator a single worker drives inline: it
asks for a run, and is sent that run's outcome whenever its worker finishes, other experiments'
runs and decisions in between. So each candidate is judged, at each of its runs, against the
incumbent of that moment: the one it was proposed from, or, when another candidate was kept
while it ran, that newer best. It is not re-based onto the newer best and re-run: its runs
measured its own tree, and a merged tree nobody measured can't be kept; a candidate that still
wins replaces the newer best (its reason says so). New candidates start only while the gate
allows and the budgets last; FREEZE (a person's pause) and any reason to end stop new ones and
wait for those in flight; a stop cancels every run in flight, whose experiments are then
recorded as interrupted. A worker lost mid-run is an interrupted experiment; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from constitution import GateState
from controller.execution.runner import RunOutcome
from controller.session.experiment import RunRequest, next_request
from controller.workspace.worktrees import Worktree
from ledger import LedgerError

POLL_S = 0.5  # how long the loop waits for a run to finish before it looks at commands and the gate again


@dataclass
class Flight:
    """One experiment in flight: its steps, its worktree, and the run it is waiting for."""

    slot: int
    steps: Generator[RunRequest, RunOutcome, None]
    tree: Worktree
    request: RunRequest
    stops_at: int  # the session's stop count when the run was submitted

    def close(self) -> None:
        """Its steps (an incumbent's worktree they hold goes with them) and its worktree."""
        self.steps.close()
        self.tree.close()


def parallel_loop(session: Any) -> str:
    """Run experiments on `session.pool`'s workers until a reason to end, then wait for those in
    flight; the session's end reason."""
    pool = session.pool
    done = threading.Event()
    # a stop cancels the runs in flight at once, even while the loop's thread waits on a proposer
    watcher = threading.Thread(target=_cancel_on_stop, args=(session, done), name="charter-stop-watch", daemon=True)
    watcher.start()
    try:
        return _loop(session, pool)
    finally:
        done.set()
        watcher.join()


def _cancel_on_stop(session: Any, done: threading.Event) -> None:
    stops = 0
    while not done.is_set():
        if session.stop_requested.wait(POLL_S) and session.stops != stops:
            stops = session.stops
            session.pool.cancel_all()


def _loop(session: Any, pool: Any) -> str:
    flights: dict[int, Flight] = {}
    ending: str | None = None
    not_before = 0.0  # THROTTLE's cooldown after a decision
    cancelled = False
    while True:
        session.drain_commands()
        if (session.stop_requested.is_set() or session.gate.gate == GateState.STOP) and flights and not cancelled:
            pool.cancel_all()  # their runs come back interrupted, and are decided so
            cancelled = True
        while ending is None and len(flights) < pool.workers and time.time() >= not_before:
            step = session.next_step(busy=bool(flights))
            if step.end is not None:
                ending = step.end
            elif step.wait:
                pass
            elif step.repair:
                session.baseline(repair=True)  # not busy: FREEZE waits for those in flight first
                continue
            elif step.proposal is not None:
                slot = min(set(range(pool.workers)) - set(flights))
                flight = _start(session, step.proposal, slot)
                if flight is not None:
                    flights[slot] = flight
                continue
            else:
                continue
            break
        if not flights:
            if ending is not None:
                return ending
            session.stop_requested.wait(POLL_S)
            continue
        for sub, outcome in pool.finished(POLL_S):
            flight = flights[sub.slot]
            if _answer(session, flight, outcome) is None:
                del flights[sub.slot]
                if session.gate.gate == GateState.THROTTLE and session.rules.gates.throttle.cooldown_seconds:
                    not_before = time.time() + session.rules.gates.throttle.cooldown_seconds
        if not (session.stop_requested.is_set() or session.gate.gate == GateState.STOP):
            cancelled = False


def _start(session: Any, proposal: Any, slot: int) -> Flight | None:
    """Propose-to-commit of one candidate in a fresh worktree at the incumbent, and its first run
    submitted; None when it was decided at once (refused) or could not be carried through."""
    s = session.state
    # a lab whose git can't make a worktree can't go on: that raises, and a resume cleans up
    tree = Worktree.create(session.lab, session.lab.git.head(), f"{s.id}-{s.experiment + 1:04d}")
    steps = session.experiment_steps(proposal, tree)
    try:
        request = next(steps, None)  # its first step numbers it (s.experiment) and records the proposal
        if request is None:
            tree.close()
            return None
        flight = Flight(slot, steps, tree, request, session.stops)
        _submit(session, flight)
        return flight
    except LedgerError:
        raise
    except Exception as e:  # whatever a proposal, git or Ray makes the controller trip on is its outcome
        tree.close()
        session.contain(e, s.experiment)
        return None


def _submit(session: Any, flight: Flight) -> None:
    job = session.start_job(flight.request)
    flight.stops_at = session.stops
    session.pool.submit(flight.slot, job, session.data)


def _answer(session: Any, flight: Flight, outcome: RunOutcome) -> RunRequest | None:
    """Record a finished run and send it to its experiment: the next run it needs (submitted),
    or None once it is decided (its worktree removed)."""
    req = flight.request
    try:
        session.finish_job(req, outcome)
        session.last_run_stopped = (session.stops != flight.stops_at or session.stop_requested.is_set()
                                    or outcome.status == "interrupted")
        nxt = next_request(flight.steps, outcome)
    except LedgerError:
        flight.close()
        raise
    except Exception as e:
        flight.close()
        session.contain(e, req.experiment)
        return None
    if nxt is None:
        flight.close()
        return None
    flight.request = nxt
    try:
        _submit(session, flight)
    except LedgerError:
        raise
    except Exception as e:
        flight.close()
        session.contain(e, req.experiment)
        return None
    return nxt
