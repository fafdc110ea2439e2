"""The steps of one experiment before anything runs, each returning a typed result.

stage (a proposal -> the exact file changes, in a scratch copy) -> harm test (changes -> a
refusal or a pass) -> commit (changes -> a commit in the work dir) -> the runs it needs, each a
`RunRequest` the session answers with a `RunOutcome`. Training, evaluation and the
post-checks are one job for the runner (`controller.execution.runner`); the decision is the keep
rule's. The session sequences these and records each result; nothing here writes the ledger.
Any input a proposer can craft ends as a `Refused` with a reason, never as an exception.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from constitution.schema import Scope
from controller.execution.runner import RunOutcome
from controller.policy.harm_test import Change, diff_line_count, harm_test
from controller.proposers.base import Proposal
from controller.session.device_use import with_device_use
from controller.workspace.git import GitWorkspace
from controller.workspace.staging import StagingError, apply_to_lab, stage, unified_diff
from ledger.payloads import Decided, RefusalItem

DIFF_CAP = 200_000  # characters of a diff kept in the ledger


@dataclass(frozen=True)
class RunRequest:
    """One run an experiment needs: its commit, which run of it, and the tree it is checked out in."""

    experiment: int
    commit: str
    run_index: int  # 1 for a candidate's first run, 2.. for confirmation runs; 0 for a run of its incumbent
    description: str
    seed_offset: int = 0  # runs of this commit scored before: a repeat draws another seed
    work_dir: Path | None = None  # None: the lab's work tree
    name: str = ""  # the run dir's name within the experiment's (default: the run index)


def next_request(steps: Generator[RunRequest, RunOutcome, None], outcome: RunOutcome) -> RunRequest | None:
    """Send an experiment's steps the outcome of the run it asked for: its next request, or None
    once it is decided."""
    try:
        return steps.send(outcome)
    except StopIteration:
        return None


@dataclass(frozen=True)
class Staged:
    changes: list[Change]
    diff: str

    @property
    def diff_lines(self) -> int:
        return diff_line_count(self.changes)


@dataclass(frozen=True)
class Refused:
    items: list[RefusalItem]
    reason: str  # the decision's reason
    diff: str = ""

    @property
    def rule(self) -> str:
        return self.items[0].rule

    @property
    def hard(self) -> bool:
        return any(i.hard for i in self.items)


def stage_step(work_dir: Path, proposal: Proposal) -> Staged | Refused:
    """The changes a proposal makes, or a refusal if it is malformed or changes nothing."""
    if proposal.malformed:
        return Refused([RefusalItem("malformed", evidence=proposal.malformed)], f"malformed proposal: {proposal.malformed}")
    try:
        changes = stage(work_dir, proposal)
    except StagingError as e:
        return Refused([RefusalItem("malformed", evidence=str(e))], f"malformed proposal: {e}", proposal.patch or "")
    except (OSError, ValueError, TypeError, UnicodeError) as e:  # hostile content the stager can't take
        why = f"cannot be staged ({type(e).__name__}: {e})"[:500]
        return Refused([RefusalItem("malformed", evidence=why)], f"malformed proposal: {why}")
    if not changes:
        return Refused([RefusalItem("empty", evidence="the proposal changes nothing")], "the proposal changes nothing")
    return Staged(changes, unified_diff(changes))


def harm_step(staged: Staged, scope: Scope) -> Refused | None:
    """The harm test's verdict: a refusal naming every rule that fired, or None to go on."""
    refusals = harm_test(staged.changes, scope)
    if not refusals:
        return None
    items = [RefusalItem(r.rule, r.path, r.line, r.evidence, r.hard) for r in refusals]
    first = items[0]
    where = f"{first.path}{':' + str(first.line) if first.line else ''}"
    return Refused(items, f"harm test: {first.rule} ({where}: {first.evidence})", staged.diff[:DIFF_CAP])


def commit_step(git: GitWorkspace, work_dir: Path, staged: Staged, experiment: int, description: str) -> str:
    """Write the passed changes into the work dir and commit them; the commit sha."""
    apply_to_lab(work_dir, staged.changes)
    return git.commit_all(f"experiment {experiment}: {description[:200]}")


def resource_use(outcomes: list[RunOutcome], memory_soft_mb: int) -> dict:
    """The `Decided` fields that describe what an experiment's runs used together (empty when
    nothing ran): any run's integrity failure or soft-memory excess counts, seconds add up; on a
    GPU, the peak VRAM and its limits too (`device_use.with_device_use`)."""
    ran = [o for o in outcomes if o is not None and o.train is not None]
    if not ran:
        return {}
    peak = max(o.train.peak_rss_mb for o in ran)
    evals = [o.evaluation.wall_seconds for o in ran if o.evaluation]
    return with_device_use({
        "integrity_failure": any(o.integrity_failure for o in ran),
        "memory_soft_exceeded": peak > memory_soft_mb,
        "peak_rss_mb": round(peak, 1),
        "train_seconds": round(sum(o.train.wall_seconds for o in ran), 2),
        "eval_seconds": round(sum(evals), 2) if evals else None,
    }, ran)


def about(proposal: Proposal) -> Decided:
    """What every decision on this proposal records about it (proposers learn from it)."""
    return Decided(description=proposal.description[:500], source=proposal.source, params=proposal.params)
