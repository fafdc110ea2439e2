"""The phases of one run, timed by the controller: where an experiment's wall time goes.

A run passes, in this order: the training sandbox starts; the trainer's start-up is done (the
marker line train.py prints once its model is built and its first batch loaded); the training
budget ends (the controller's stop signal, or the run's own exit before it); the run is saved
(its process tree exited cleanly); the evaluator is released to read the run; its model worker is
ready (a marker line the evaluator prints, where it does); scoring is done (the evaluator exited);
the runner's post-checks are done; and, for an experiment's last run, the decision (its `decided`
event). The evaluator itself starts either at its release or, where the lab's evaluator can wait
for the controller's word, early, at the stop signal (its start-up then overlaps the run's saving,
and is off the chain of consecutive phases).
`RunPhases` holds those moments as unix seconds on one clock (the runner anchors its monotonic
readings to the wall clock once per job), None for a phase a run never reached (a crash, a kill,
a trainer that prints no marker). The start-up marker is printed by the untrusted run, so its
moment is the run's claim read at the controller's time; nothing decides by it. `durations` is the pure
arithmetic between consecutive moments; `training_fields` / `evaluation_fields` are what the
ledger records on `TrainingFinished` / `Evaluated`, and `from_payloads` reads them back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only read by attribute: the runner need not import the ledger
    from ledger import payloads as P


@dataclass(frozen=True)
class RunPhases:
    """When one run reached each phase (unix seconds, controller's clock); None: never reached."""

    sandbox_started: float | None = None
    startup_done: float | None = None
    budget_ended: float | None = None
    saved: float | None = None
    evaluator_started: float | None = None
    evaluator_released: float | None = None  # allowed to read the run: its start, or the word to an early one
    worker_ready: float | None = None
    scored: float | None = None
    checked: float | None = None
    decided: float | None = None  # filled by readers from the experiment's `decided` event (last run only)

    def reached(self) -> list[tuple[str, float]]:
        """(phase, time) of every phase reached, in the order a run passes them."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class Phase:
    """The time between two moments of `RunPhases`."""

    name: str
    start: str
    end: str
    what: str


# Consecutive: with every moment present they add up to sandbox start -> decision.
PHASES: tuple[Phase, ...] = (
    Phase("start-up", "sandbox_started", "startup_done", "sandbox start to the trainer's start-up marker"),
    Phase("training", "startup_done", "budget_ended", "start-up marker to the stop signal (or the run's exit)"),
    Phase("saving", "budget_ended", "saved", "stop signal to the training tree's clean exit"),
    Phase("hand-off", "saved", "evaluator_released", "training exited to the evaluator's release"),
    Phase("worker start", "evaluator_released", "worker_ready", "evaluator's release to its model worker ready"),
    Phase("scoring", "worker_ready", "scored", "worker ready to the evaluator's exit"),
    Phase("post-check", "scored", "checked", "evaluator's exit to the post-checks done (files, data re-hashed)"),
    Phase("decision", "checked", "decided", "post-checks to the `decided` event (an experiment's last run)"),
)
# Spans over several phases, for when a moment inside them is unknown (no worker-ready marker yet).
SPANS: tuple[Phase, ...] = (
    Phase("training sandbox", "sandbox_started", "saved", "sandbox start to the training tree's clean exit"),
    Phase("evaluation", "evaluator_released", "scored", "evaluator's release to its exit"),
    Phase("early start", "evaluator_started", "evaluator_released", "an early evaluator's start to its release"),
    Phase("run", "sandbox_started", "checked", "sandbox start to the post-checks done"),
)

TRAINING = ("sandbox_started", "startup_done", "budget_ended", "saved", "checked")  # on TrainingFinished
EVALUATION = ("evaluator_started", "evaluator_released", "worker_ready", "scored")  # on Evaluated


def seconds(p: RunPhases, phase: Phase) -> float | None:
    """How long `phase` took in run `p`; None unless the run reached both of its ends."""
    start, end = getattr(p, phase.start), getattr(p, phase.end)
    return None if start is None or end is None else end - start


def durations(p: RunPhases, phases: tuple[Phase, ...] = PHASES) -> dict[str, float | None]:
    """Each phase's seconds in run `p`, in order (None where an end was not reached)."""
    return {ph.name: seconds(p, ph) for ph in phases}


def _field(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def training_fields(p: RunPhases) -> dict[str, float | None]:
    """Keyword arguments for `TrainingFinished`: the moments up to the post-checks (every run has
    this event, not every run an evaluation)."""
    return {f"{name}_at": _field(getattr(p, name)) for name in TRAINING}


def evaluation_fields(p: RunPhases) -> dict[str, float | None]:
    """Keyword arguments for `Evaluated`: the evaluator's moments."""
    return {f"{name}_at": _field(getattr(p, name)) for name in EVALUATION}


def from_payloads(training: P.TrainingFinished, evaluated: P.Evaluated | None = None,
                  decided: float | None = None) -> RunPhases:
    """A run's phases as the ledger recorded them (fields absent in older ledgers read as None)."""
    moments = {name: getattr(training, f"{name}_at") for name in TRAINING}
    if evaluated is not None:
        moments |= {name: getattr(evaluated, f"{name}_at") for name in EVALUATION}
        if moments["evaluator_released"] is None:  # recorded before early starts: released as it started
            moments["evaluator_released"] = moments["evaluator_started"]
    return RunPhases(**moments, decided=decided)
