"""The one enum of ledger event kinds, used by every writer.

Every action Charter takes lands in the ledger as one event of one of these kinds. Writers never
spell a kind as a bare string; auditors can rely on this list being the whole vocabulary.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    # the lab and its rules
    LAB_CREATED = "lab_created"
    CONSTITUTION_LOADED = "constitution_loaded"
    NOTE = "note"
    ANCHOR = "anchor"
    # sessions
    SESSION_STARTED = "session_started"
    SESSION_RESUMED = "session_resumed"
    SESSION_ENDED = "session_ended"
    # one experiment, step by step
    PROPOSED = "proposed"
    HARM_PASSED = "harm_passed"
    HARM_REFUSED = "harm_refused"
    COMMITTED = "committed"
    TRAINING_STARTED = "training_started"
    TRAINING_FINISHED = "training_finished"
    EVALUATED = "evaluated"
    POSTCHECK_FAILED = "postcheck_failed"
    DECIDED = "decided"
    # governance
    GATE_TRANSITION = "gate_transition"
    BUDGET_EXHAUSTED = "budget_exhausted"
    OPERATOR_COMMAND = "operator_command"
    INTEGRITY_FAILURE = "integrity_failure"
    # the agent and the amendment process
    AGENT_CALL = "agent_call"
    AMENDMENT_PROPOSED = "amendment_proposed"
    AMENDMENT_RATIFIED = "amendment_ratified"
    AMENDMENT_REJECTED = "amendment_rejected"
    AMENDMENT_APPLIED = "amendment_applied"
    PROPOSER_FAILED = "proposer_failed"


class Decision(StrEnum):
    """Outcome of one experiment, as recorded in a `decided` event.

    The groups below are the one definition every reader uses (gates, budgets, reports, views):
    `ran` = the experiment trained (it counts against budgets and gate windows); `failed` = it
    ran and broke (crash or timeout: the change's own fault); `measured` = it has a val_bpb.
    `interrupted` is none of these: the controller stopped, the change never finished running.
    """

    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"

    @property
    def ran(self) -> bool:
        return self in _RAN

    @property
    def failed(self) -> bool:
        return self in _FAILED

    @property
    def measured(self) -> bool:
        return self in _MEASURED

    @classmethod
    def group(cls, name: str) -> tuple[str, ...]:
        """The values of one group (`ran`, `failed`, `measured`), e.g. for a SQL `IN (...)`."""
        return tuple(d.value for d in cls if getattr(d, name))


_RAN = frozenset({Decision.BASELINE, Decision.KEEP, Decision.DISCARD, Decision.CRASH, Decision.TIMEOUT})
_FAILED = frozenset({Decision.CRASH, Decision.TIMEOUT})
_MEASURED = frozenset({Decision.BASELINE, Decision.KEEP, Decision.DISCARD})
