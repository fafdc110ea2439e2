"""A realistic ledger for the auditor tests, written through `Ledger.record` with the typed
payloads of the event contract (`ledger.payloads`), the same classes the session writes.

Session S1 (ended): lab created, baseline 1.500, a keep (1.450, improvement 0.05), a discard
(1.470), a crash, a refused proposal (two refusals, one hard), a gate transition RUN ->
THROTTLE, an agent call, and the end. Session S2 (open, later): its own constitution load and a
baseline, so "the latest session" and per-session filters can be told apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from ledger import Decision, EventKind, Ledger
from ledger import payloads as P

REPO = Path(__file__).resolve().parents[2]
S1, S2 = "s20250101000000-ab12", "s20250102000000-cd34"
BASE, C1, C2, C3 = "a" * 40, "b" * 40, "c" * 40, "d" * 40
KEEP_DIFF = (
    "--- a/train.py\n+++ b/train.py\n@@ -10,3 +10,3 @@\n-LR = 0.02\n+LR = 0.04\n"
    " WARMUP = 10\n-DEPTH = 4\n+DEPTH = 6\n+# deeper\n"
)
DISCARD_DIFF = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-ACT = 'relu'\n+ACT = 'gelu'\n"
CRASH_DIFF = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-WIDTH = 256\n+WIDTH = 65536\n"


def default_rules() -> dict[str, Any]:
    """The shipped constitution as a plain dict (what CONSTITUTION_LOADED carries in `rules`)."""
    with open(REPO / "constitution" / "default.toml", "rb") as f:
        return tomllib.load(f)


def _train(led: Ledger, sid: str, n: int, commit: str, wall: float, rss: float, rc: int = 0) -> None:
    led.record(P.TrainingStarted(f"/lab/.charter/runs/{sid}/{n:04d}-1", 1, 150, "none"), actor="controller", session=sid,
               experiment=n, commit_sha=commit)
    led.record(P.TrainingFinished(1, rc, False, False, wall, rss, "none", "step 100 loss 3.2\n", {}), actor="controller",
               session=sid, experiment=n, commit_sha=commit)


def _evaluate(led: Ledger, sid: str, n: int, commit: str, bpb: float, wall: float) -> None:
    led.record(P.Evaluated(1, "ok", "", wall, 0, "evaluator", {"val_bpb": bpb}), actor="controller", session=sid,
               experiment=n, commit_sha=commit, val_bpb=bpb)


def _proposed(led: Ledger, sid: str, n: int, parent: str, description: str, hypothesis: str = "", source: str = "offline") -> None:
    if source == "baseline":  # as Session.baseline() writes it
        payload = P.Proposed(description=description, source=source, parent_commit=parent, params={"LR": 0.02})
    else:  # as Session.experiment() writes it
        payload = P.Proposed(description, hypothesis, source, "offline", parent, {"LR": 0.04})
    led.record(payload, actor="controller", session=sid, experiment=n, commit_sha=parent)


def build_ledger(path: Path) -> Path:
    """Write the fixture ledger at `path` and return it."""
    rules = default_rules()
    with Ledger.open(path) as led:
        led.record(P.LabCreated.strict({"root": "/lab", "constitution_hash": "h1", "constitution_version": 1, "files": ["train.py"]}), actor="person:alice", commit_sha=BASE)
        led.record(P.ConstitutionLoaded.strict({
            "reason": "data and tokenizer hashes pinned by charter prepare", "pinned": {"data_hash": "x"},
            "hash": "h2", "version": 1}), actor="person:alice", commit_sha=BASE)
        # --- session 1 ---------------------------------------------------------------------------
        led.record(P.SessionStarted.strict({
            "tag": "t1", "branch": "charter/t1", "base_commit": BASE, "isolation": "none", "proposer": "offline",
            "max_experiments": 4, "pid": 4242, "constitution_hash": "h2", "constitution_version": 1}), actor="controller", session=S1, commit_sha=BASE, gate_state="RUN")
        led.record(P.ConstitutionLoaded.strict({"hash": "h2", "version": 1, "rules": rules}), actor="controller", session=S1)
        # experiment 0: baseline
        _proposed(led, S1, 0, BASE, "baseline", source="baseline")
        _train(led, S1, 0, BASE, 70.0, 1000.0)
        _evaluate(led, S1, 0, BASE, 1.5, 10.0)
        led.record(P.Decided.strict({
                       "decision": "baseline", "reason": "baseline val_bpb 1.5000", "repair": False, "baseline_drift": None,
                       "params": {"LR": 0.02}, "integrity_failure": False, "memory_soft_exceeded": False,
                       "peak_rss_mb": 1000.0, "train_seconds": 70.0, "eval_seconds": 10.0}), actor="controller", session=S1, experiment=0, decision=Decision.BASELINE, val_bpb=1.5,
                   commit_sha=BASE, gate_state="RUN")
        # experiment 1: keep
        _proposed(led, S1, 1, BASE, "raise LR to 0.04 and deepen", "a larger LR converges faster in 60 s")
        led.record(P.HarmPassed.strict({"files": ["train.py"], "diff_lines": 9}), actor="controller", session=S1, experiment=1)
        led.record(P.Committed.strict({"parent": BASE, "diff": KEEP_DIFF}), actor="controller", session=S1, experiment=1, commit_sha=C1)
        _train(led, S1, 1, C1, 71.0, 1200.0)
        _evaluate(led, S1, 1, C1, 1.45, 11.0)
        led.record(P.Decided.strict({
                       "decision": "keep", "reason": "improved by 0.0500 >= 0.01", "description": "raise LR to 0.04 and deepen",
                       "params": {"LR": 0.04}, "source": "offline", "runs": [1.45], "improvement": 0.05, "best_before": 1.5,
                       "integrity_failure": False, "memory_soft_exceeded": False, "peak_rss_mb": 1200.0,
                       "train_seconds": 71.0, "eval_seconds": 11.0}), actor="controller", session=S1, experiment=1, decision=Decision.KEEP, val_bpb=1.45,
                   commit_sha=C1, gate_state="RUN")
        # experiment 2: discard
        _proposed(led, S1, 2, C1, "switch to GeLU")
        led.record(P.HarmPassed.strict({"files": ["train.py"], "diff_lines": 5}), actor="controller", session=S1, experiment=2)
        led.record(P.Committed.strict({"parent": C1, "diff": DISCARD_DIFF}), actor="controller", session=S1, experiment=2, commit_sha=C2)
        _train(led, S1, 2, C2, 72.0, 1100.0)
        _evaluate(led, S1, 2, C2, 1.47, 12.0)
        led.record(P.Decided.strict({
                       "decision": "discard", "reason": "worse by 0.0200", "description": "switch to GeLU", "params": {},
                       "source": "offline", "runs": [1.47], "improvement": -0.02, "best_before": 1.45,
                       "peak_rss_mb": 1100.0, "train_seconds": 72.0, "eval_seconds": 12.0}), actor="controller", session=S1, experiment=2, decision=Decision.DISCARD, val_bpb=1.47,
                   commit_sha=C2, gate_state="RUN")
        # experiment 3: crash (no evaluation)
        _proposed(led, S1, 3, C1, "widen to 65536")
        led.record(P.HarmPassed.strict({"files": ["train.py"], "diff_lines": 5}), actor="controller", session=S1, experiment=3)
        led.record(P.Committed.strict({"parent": C1, "diff": CRASH_DIFF}), actor="controller", session=S1, experiment=3, commit_sha=C3)
        _train(led, S1, 3, C3, 5.0, 7900.0, rc=1)
        led.record(P.Decided.strict({
                       "decision": "crash", "reason": "training exited with code 1", "description": "widen to 65536",
                       "params": {}, "source": "offline", "peak_rss_mb": 7900.0, "train_seconds": 5.0, "eval_seconds": None,
                       "memory_soft_exceeded": True}), actor="controller", session=S1, experiment=3, decision=Decision.CRASH, commit_sha=C3,
                   gate_state="RUN")
        # experiment 4: refused by the harm test (two refusals, one hard)
        _proposed(led, S1, 4, C1, "read the validation set")
        led.record(P.HarmRefused.strict({
            "refusals": [
                {"rule": "data_access", "path": "train.py", "line": 12, "evidence": "open('val.bin')", "hard": False},
                {"rule": "no-eval-in-train", "path": "train.py", "line": 40, "evidence": "evaluate_bpb(model)", "hard": True},
            ],
            "diff": "--- a/train.py\n+++ b/train.py\n"}), actor="controller", session=S1, experiment=4, rule="data_access")
        led.record(P.Decided.strict({
                       "decision": "refused", "reason": "harm test: data_access (train.py:12: open('val.bin'))",
                       "description": "read the validation set", "hard_violation": True, "params": {}}), actor="controller", session=S1, experiment=4, decision=Decision.REFUSED, commit_sha=C1,
                   gate_state="RUN")
        led.record(P.GateTransition.strict({
            "from": "RUN", "to": "THROTTLE", "rule": "memory-soft", "evidence": "memory_soft_exceeded = 2 (threshold 2)",
            "by": "controller", "held": False}), actor="controller", session=S1, gate_state="THROTTLE", rule="memory-soft")
        led.record(P.AgentCall.strict({"input_tokens": 1000, "output_tokens": 500, "dollars": 0.25}), actor="controller", session=S1)
        led.record(P.SessionEnded.strict({
            "reason": "reached --max-experiments 4", "experiments": 4, "keeps": 1, "baseline_bpb": 1.5, "best_bpb": 1.45,
            "best_commit": C1, "gate": "THROTTLE", "branch": "charter/t1"}), actor="controller", session=S1, commit_sha=C1, gate_state="THROTTLE")
        # an operator resumes with no controller running (no session)
        led.record(P.OperatorCommand.strict({"command": "resume", "reason": "looked fine"}), actor="person:bob")
        led.record(P.GateTransition.strict({
            "from": "THROTTLE", "to": "RUN", "rule": "operator-resume", "evidence": "looked fine", "by": "person:bob", "held": False}), actor="person:bob", gate_state="RUN", rule="operator-resume")
        # --- session 2 (still open) ----------------------------------------------------------------
        led.record(P.SessionStarted.strict({
            "tag": "t2", "branch": "charter/t2", "base_commit": C1, "isolation": "bubblewrap", "proposer": "queue",
            "max_experiments": None, "pid": 4343, "constitution_hash": "h2", "constitution_version": 1}), actor="controller", session=S2, commit_sha=C1, gate_state="RUN")
        led.record(P.ConstitutionLoaded.strict({"hash": "h2", "version": 1, "rules": rules}), actor="controller", session=S2)
        _proposed(led, S2, 0, C1, "baseline", source="baseline")
        _train(led, S2, 0, C1, 60.0, 900.0)
        _evaluate(led, S2, 0, C1, 1.44, 9.0)
        led.record(P.Decided.strict({"decision": "baseline", "reason": "baseline val_bpb 1.4400", "repair": False}), actor="controller", session=S2, experiment=0, decision=Decision.BASELINE, val_bpb=1.44,
                   commit_sha=C1, gate_state="RUN")
    return path


S3 = "s20250103000000-ef56"


def build_resumed_ledger(path: Path) -> Path:
    """A session whose controller died during experiment 1 and was resumed: experiment 1 is
    recorded as interrupted, then a new experiment 1 is proposed and kept; later a FREEZE repair
    baseline re-runs as experiment 2. Its constitution allows 7 experiments per session."""
    rules = default_rules()
    rules["budgets"]["session"]["experiments"] = 7
    with Ledger.open(path) as led:
        led.record(P.SessionStarted.strict({
            "tag": "t3", "branch": "charter/t3", "base_commit": BASE, "isolation": "none", "proposer": "offline",
            "max_experiments": None, "pid": 1, "constitution_hash": "h7", "constitution_version": 2}), actor="controller", session=S3, commit_sha=BASE, gate_state="RUN")
        led.record(P.ConstitutionLoaded.strict({"hash": "h7", "version": 2, "rules": rules}), actor="controller", session=S3)
        _proposed(led, S3, 0, BASE, "baseline", source="baseline")
        _train(led, S3, 0, BASE, 60.0, 900.0)
        _evaluate(led, S3, 0, BASE, 1.5, 10.0)
        led.record(P.Decided.strict({"decision": "baseline", "reason": "baseline", "repair": False}), actor="controller", session=S3, experiment=0, decision=Decision.BASELINE, val_bpb=1.5,
                   commit_sha=BASE, gate_state="RUN")
        # first try at experiment 1: the controller dies while training
        _proposed(led, S3, 1, BASE, "first try")
        led.record(P.Committed.strict({"parent": BASE, "diff": "first"}), actor="controller", session=S3, experiment=1, commit_sha=C1)
        led.record(P.TrainingStarted.strict({"run": 1}), actor="controller", session=S3, experiment=1, commit_sha=C1)
        led.record(P.SessionResumed.strict({
            "tag": "t3", "reset_to": BASE, "interrupted": [1], "isolation": "none", "pid": 2}), actor="controller", session=S3, commit_sha=BASE, gate_state="RUN")
        led.record(P.Decided.strict({"decision": "interrupted", "reason": "the controller stopped during this experiment"}), actor="controller", session=S3, experiment=1, decision=Decision.INTERRUPTED, commit_sha=BASE,
                   gate_state="RUN")
        # second try reuses the number
        _proposed(led, S3, 1, BASE, "second try")
        led.record(P.Committed.strict({"parent": BASE, "diff": "second"}), actor="controller", session=S3, experiment=1, commit_sha=C2)
        _train(led, S3, 1, C2, 61.0, 950.0)
        _evaluate(led, S3, 1, C2, 1.4, 10.0)
        led.record(P.Decided.strict({"decision": "keep", "reason": "better", "improvement": 0.1, "runs": [1.4]}), actor="controller", session=S3, experiment=1, decision=Decision.KEEP, val_bpb=1.4,
                   commit_sha=C2, gate_state="RUN")
        # a repair baseline (not counted against the experiments budget)
        _proposed(led, S3, 2, C2, "repair: re-verify the baseline", source="repair")
        _train(led, S3, 2, C2, 62.0, 960.0)
        _evaluate(led, S3, 2, C2, 1.41, 10.0)
        led.record(P.Decided.strict({"decision": "baseline", "reason": "re-verified", "repair": True,
                                                                "baseline_drift": 0.01}), actor="controller", session=S3, experiment=2, decision=Decision.BASELINE, val_bpb=1.41,
                   commit_sha=C2, gate_state="FREEZE")
        # a malformed proposal: the refusal names no file or line
        _proposed(led, S3, 3, C2, "garbled patch")
        led.record(P.HarmRefused.strict({
            "refusals": [{"rule": "malformed", "evidence": "patch does not apply"}], "diff": "@@"}), actor="controller", session=S3, experiment=3, rule="malformed")
        led.record(P.Decided.strict({"decision": "refused", "reason": "malformed proposal: patch does not apply",
                                                 "description": "garbled patch"}), actor="controller", session=S3, experiment=3, decision=Decision.REFUSED, commit_sha=C2,
                   gate_state="FREEZE")
    return path


def live_cursor(led: Ledger):
    """A cursor of the writer's own connection (what the controller uses to answer queries)."""
    cursor = getattr(led, "cursor", None)
    return cursor() if cursor is not None else led._con.cursor()
