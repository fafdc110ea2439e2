"""One real session, read back every way: the SQL views agree with the Python readers.

A real `Session` (git lab, DuckDB ledger, bubblewrap, tiny CPU runs) is driven by a proposer that
fails once, then hands over queue entries (two hostile, one a symlink to an immutable file, one
real improvement) and reports agent usage on each step. Its ledger is then read by the auditor
views and by the controller's own Python readers (budgets, session progress, gate restore) and
the two must agree. Finally a committed hand edit of the constitution must be refused.
"""

import os

import duckdb
import pytest

from controller.live.status import session_progress
from controller.policy.budgets import usage_from_events
from controller.policy.gates import restore_gate
from controller.proposers import AgentUsage, ProposerResult
from controller.proposers.queue import QueueProposer
from controller.session.loop import Session
from lab_helpers import charter, queue_folder, with_constants
from ledger import EventKind, Ledger
from ledger import payloads as P
from ledger.views import install_views


class MeteredQueue:
    """A queue proposer that fails on its first call and reports usage on every other."""

    name = "metered"

    def __init__(self, queue):
        self.inner = QueueProposer(queue)
        self.calls = 0

    def propose(self, ctx):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the model endpoint is down")
        usage = AgentUsage(model="test-model", calls=1, input_tokens=100 * self.calls, output_tokens=10,
                           cache_read_tokens=3, cache_write_tokens=2, dollars=0.001 * self.calls, seconds=0.5)
        return ProposerResult(self.inner.propose(ctx), usage)


# slow: the views are tested on synthetic ledgers in tests/ledger/test_views.py; this is a real session's
@pytest.mark.slow
def test_views_agree_with_the_python_readers_on_a_real_session(make_lab, tmp_path):
    lab = make_lab(train={"LEARNING_RATE": "1e-5"})  # a baseline that barely learns
    base = (lab.root / "train.py").read_text()
    queue = tmp_path / "queue"
    queue_folder(queue, "001-socket", {"train.py": "import socket\n" + base})
    entry = queue / "002-link"
    entry.mkdir()
    os.symlink("prepare.py", entry / "train.py")  # points at nothing in the entry: must not crash the loop
    queue_folder(queue, "003-shell", {"train.py": "import os\nos.system('true')\n" + base})
    queue_folder(queue, "004-lr-up", {"train.py": with_constants(base, LEARNING_RATE="1e-2")})

    proposer = MeteredQueue(queue)
    summary = Session(lab, proposer, tag="contract").run()
    assert "nothing more to propose" in summary["reason"]

    with Ledger.open(lab.ledger_path, read_only=True) as led:
        events = led.events()
    sid = summary["session"]
    mine = [e for e in events if e.session == sid]
    kinds = [e.kind for e in mine]
    # the proposer's failure and the symlink entry are outcomes, recorded, and the session went on
    failed = [P.read(e) for e in mine if e.kind == EventKind.PROPOSER_FAILED]
    assert len(failed) == 1 and "the model endpoint is down" in failed[0].error
    decided = {e.experiment: e for e in mine if e.kind == EventKind.DECIDED}
    assert [str(decided[n].decision) for n in sorted(decided)] == ["baseline", "refused", "refused", "refused", "keep"]
    link = P.read(decided[2])
    assert link.refusal_rule == "malformed" and "symlink" in link.reason
    assert kinds.count(EventKind.AGENT_CALL) == proposer.calls - 1  # every call that returned, incl. the last (empty) one

    con = duckdb.connect(str(lab.ledger_path), read_only=True)
    try:
        install_views(con)
        # budgets: SQL view == Python usage_from_events
        started = next(e for e in mine if e.kind == EventKind.SESSION_STARTED)
        ended = next(e for e in mine if e.kind == EventKind.SESSION_ENDED)
        usage = usage_from_events(mine, None, ended.ts, started=started.ts).as_dict()
        view = dict(con.execute("SELECT resource, used FROM budgets WHERE session = ?", [sid]).fetchall())
        assert usage["agent_tokens"] == sum(100 * c + 15 for c in range(2, proposer.calls + 1)) > 0
        for resource in ("experiments", "device_seconds", "wall_hours", "agent_tokens", "agent_dollars"):
            assert abs(view[resource] - usage[resource]) < 1e-9, (resource, view[resource], usage[resource])
        # session progress: sessions view == Python session_progress
        progress = session_progress(mine)
        row = con.execute("SELECT experiments, keeps, baseline_bpb, best_bpb FROM sessions WHERE session = ?", [sid]).fetchone()
        assert row == (progress.experiments, progress.keeps, progress.baseline_bpb, progress.best_bpb)
        assert progress.keeps == 1 and progress.best_bpb < progress.baseline_bpb
        # gate restore: the last gate_transitions row == the gate the Python reader restores
        gate, rule, evidence = restore_gate(events)
        last = con.execute("SELECT to_state, rule, evidence FROM gate_transitions ORDER BY seq DESC LIMIT 1").fetchone()
        assert last == (gate.state, rule, evidence) and gate.state == "THROTTLE"
        # refusals view lists the malformed entry by the same rule the decision names
        rules = [r[0] for r in con.execute("SELECT rule FROM refusals WHERE session = ? ORDER BY seq", [sid]).fetchall()]
        assert "malformed" in rules and "network" in rules and "subprocess" in rules
    finally:
        con.close()

    # the constitution in force: a committed hand edit after a session is refused, naming the key
    text = lab.constitution_path.read_text()
    assert "experiments = 40 " in text
    lab.constitution_path.write_text(text.replace("experiments = 40 ", "experiments = 41 ", 1))
    lab.git.commit_all("loosen the session budget by hand")
    refused = charter("run", "--lab", lab.root, "--proposer", "queue", "--queue", queue, "--tag", "after-edit")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "budgets.session.experiments: 40 -> 41" in refused.stderr
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        assert len([e for e in led.events() if e.kind == EventKind.SESSION_STARTED]) == 1, "nothing may start"
