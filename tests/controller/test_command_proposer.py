"""The command proposer on real parts: a fake external agent (fake_agent.py) run in real bubblewrap
on a scratch copy of a real lab, driven directly or through a real session and its ledger."""

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from controller.proposers import ProposalContext, ProposerError, ProposerOptions, make_proposer
from controller.proposers.command import CommandProposer, build
from controller.session.loop import Session
from controller.workspace.lab import init_lab
from ledger import EventKind, Ledger

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
PROGRAM = Path(sys.executable).name  # the command's argv[0]: the proposal's source and the agent's identity
# The cpu clock on one CPU instead of the tiny rules' wall clock: as fast on an idle machine, and a
# baseline whose start-up gets little CPU on a busy one still trains (a wall cap of 3 x stops it)
ONE_CPU_CLOCK = {'clock = "cpu" ': 'clock = "cpu" ', "cpu_threads = 0 ": "cpu_threads = 1 "}


def agent(mode: str, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE_AGENT), "--mode", mode, *extra]


def command_rules(mode: str, *extra: str, deadline: float | None = None) -> dict[str, str]:
    """make_lab edits that make the lab's proposer the fake agent."""
    rules = {'kind = "offline"': 'kind = "command"', "command = []": f"command = {json.dumps(agent(mode, *extra))}",
             **ONE_CPU_CLOCK}
    if deadline is not None:
        rules["deadline_seconds = 600"] = f"deadline_seconds = {deadline:g}"
    return rules


def events(lab, kind):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return led.events(kinds=[kind])


def session(lab, tag="cmd"):
    """One session of at most one experiment after the baseline, with the lab's command proposer."""
    proposer = make_proposer("command", ProposerOptions(lab.load_constitution()))
    summary = Session(lab, proposer, tag=tag, max_experiments=1).run()
    baseline = [str(e.decision) for e in events(lab, EventKind.DECIDED) if e.experiment == 0]
    assert baseline == ["baseline"], f"the baseline did not train, so no step was proposed: {summary['reason']}"
    return proposer, summary


# -- direct calls: one proposing step on an unprepared lab, no training --------------------------

@pytest.fixture
def bare_lab(tmp_path):
    return init_lab(tmp_path / "lab")


def proposer_for(lab, command: list[str], **proposer_fields) -> CommandProposer:
    rules = lab.load_constitution()
    fields = {"kind": "command", "command": command, **proposer_fields}
    rules = rules.model_copy(update={"proposer": rules.proposer.model_copy(update=fields)})
    return build(ProposerOptions(rules))


def step(lab, proposer: CommandProposer, tmp_path: Path, seconds: float = 60):
    work = Path(tmp_path / f"scratch-{uuid.uuid4().hex[:6]}")
    work.mkdir()
    ctx = ProposalContext(work, ["train.py"], {"train.py": (lab.root / "train.py").read_text()}, [], None, 1,
                          time.time() + seconds,
                          readable={rel: (lab.root / rel).read_text() for rel in ("program.md", "prepare.py")},
                          protected=(lab.root,))
    return proposer.propose(ctx)


def test_build_needs_a_command(bare_lab):
    with pytest.raises(ProposerError, match="proposer.command"):
        build(ProposerOptions(bare_lab.load_constitution()))
    p = proposer_for(bare_lab, agent("good"))
    assert (p.name, p.model) == ("command", PROGRAM)
    assert proposer_for(bare_lab, agent("good"), model="fake-model-1").model == "fake-model-1"


def test_a_good_edit_is_the_diff_of_the_copy(bare_lab, tmp_path):
    r = step(bare_lab, proposer_for(bare_lab, agent("good")), tmp_path)
    assert r.failure is None and r.proposal.malformed is None
    assert r.proposal.description == "lower the learning rate to 2.5e-3"
    assert r.proposal.hypothesis == "a slightly lower learning rate is more stable"
    assert r.proposal.lesson == "the shipped learning rate may be on the high side"
    assert r.proposal.source == f"command:{PROGRAM}"
    assert list(r.proposal.files) == ["train.py"] and b"LEARNING_RATE = 2.5e-3" in r.proposal.files["train.py"]


@pytest.mark.parametrize("mode, malformed", [
    ("outside", "the agent changed files outside the editable paths: notes.txt, prepare.py"),
    ("link", "train.py is a symlink"),
])
def test_changes_beyond_the_editable_files_are_malformed(bare_lab, tmp_path, mode, malformed):
    r = step(bare_lab, proposer_for(bare_lab, agent(mode)), tmp_path)
    assert r.failure is None and r.proposal.malformed == malformed and r.proposal.files == {}


@pytest.mark.parametrize("mode, failure", [
    ("nothing", "the agent changed nothing; its output ended: fake agent: nothing to change"),
    ("crash", "the agent exited with code 3; its output ended: fake agent: something went wrong"),
])
def test_a_failed_step_is_an_outcome_with_the_output_tail(bare_lab, tmp_path, mode, failure):
    r = step(bare_lab, proposer_for(bare_lab, agent(mode)), tmp_path)
    assert r.proposal is None and r.failure == failure


def test_the_agent_sees_no_lab_no_ledger_no_charter_state_and_no_cache(bare_lab, tmp_path):
    lab = bare_lab
    secret = [lab.root, lab.root / "train.py", lab.state_dir, lab.ledger_path, Path(os.environ["CHARTER_CACHE_DIR"]),
              Path("/etc/shadow")]
    assert all(p.exists() for p in secret)
    peeks = [a for p in secret for a in ("--peek", str(p))]
    # prepare.py (the copy's, relative) is the control: what the agent can see, it reports
    r = step(lab, proposer_for(lab, agent("peek", *peeks, "--peek", "prepare.py")), tmp_path)
    assert r.failure is None and r.proposal.description == "seen: prepare.py"


def test_the_network_is_off_unless_the_constitution_turns_it_on(bare_lab, tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted, done = [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        command = agent("connect", "--port", str(server.getsockname()[1]))
        off = step(bare_lab, proposer_for(bare_lab, command), tmp_path)
        assert off.proposal.description == "net: refused" and accepted == []
        on = step(bare_lab, proposer_for(bare_lab, command, network=True), tmp_path)
        assert on.proposal.description == "net: connected"
    finally:
        done.set()
        server.close()
    assert len(accepted) == 1


def test_without_bubblewrap_no_agent_runs_whatever_the_constitution_allows(bare_lab, tmp_path, monkeypatch):
    strict = proposer_for(bare_lab, agent("good"))
    rules = strict.rules
    weaker = CommandProposer(rules.model_copy(update={"sandbox": rules.sandbox.model_copy(update={"allow_weaker": True})}))
    none = CommandProposer(rules.model_copy(update={"sandbox": rules.sandbox.model_copy(update={"level": "none"})}))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))  # no bwrap to be found
    for proposer in (strict, weaker, none):
        r = step(bare_lab, proposer, tmp_path)
        assert r.proposal is None and "runs agents only under bubblewrap" in r.failure and "bwrap is not installed" in r.failure


def test_program_paths_never_show_the_lab(tmp_path):
    # a careless program_paths entry that holds the lab (a home dir, say): the lab stays hidden
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    lab = init_lab(home / "lab")
    (home / "visible.txt").write_text("the control: outside the lab, shown\n")
    shown = proposer_for(lab, agent("peek", "--peek", str(lab.root / "train.py"), "--peek", str(lab.ledger_path),
                                    "--peek", str(home / "visible.txt")),
                         program_paths=[str(home)])
    r = step(lab, shown, tmp_path)
    assert r.failure is None and r.proposal.description == f"seen: {home / 'visible.txt'}"


def test_each_run_is_one_agent_call_row(bare_lab, tmp_path):
    r = step(bare_lab, proposer_for(bare_lab, agent("good"), model="fake-model-1"), tmp_path)
    assert (r.usage.model, r.usage.calls, r.usage.stop_reason, r.usage.input_tokens, r.usage.dollars) == ("fake-model-1", 1, "exit 0", 0, 0.0)
    assert r.usage.seconds > 0
    r = step(bare_lab, proposer_for(bare_lab, agent("crash")), tmp_path)
    assert r.failure and r.usage.stop_reason == "exit 3"


# -- through a session: the ledger's view ------------------------------------------------------

def test_a_good_edit_is_kept_through_the_loop(make_lab):
    lab = make_lab(rules=command_rules("good"), train={"LEARNING_RATE": "1e-5"})  # a baseline that barely learns
    proposer, summary = session(lab)
    proposed = [e for e in events(lab, EventKind.PROPOSED) if e.experiment == 1]
    assert len(proposed) == 1
    assert proposed[0].actor == f"agent:{proposer.model}" == f"agent:{PROGRAM}"
    assert proposed[0].payload["source"] == f"command:{PROGRAM}"
    assert proposed[0].payload["description"] == "lower the learning rate to 2.5e-3"
    assert [e.experiment for e in events(lab, EventKind.HARM_PASSED)] == [1]
    committed = [e for e in events(lab, EventKind.COMMITTED) if e.experiment == 1]
    assert "+LEARNING_RATE = 2.5e-3" in committed[0].payload["diff"]
    decided = {e.experiment: str(e.decision) for e in events(lab, EventKind.DECIDED)}
    assert decided == {0: "baseline", 1: "keep"}
    assert "LEARNING_RATE = 2.5e-3" in (lab.root / "train.py").read_text()
    assert summary["experiments"] == 1 and events(lab, EventKind.PROPOSER_FAILED) == []
    calls = [e for e in events(lab, EventKind.AGENT_CALL) if e.experiment == 1]
    assert len(calls) == 1 and calls[0].actor == f"agent:{PROGRAM}" and calls[0].payload["stop_reason"] == "exit 0"


# slow: the scope rule is tested without training in test_changes_beyond_the_editable_files_are_malformed
@pytest.mark.slow
def test_an_edit_outside_scope_is_refused_with_its_paths(make_lab):
    lab = make_lab(rules=command_rules("outside"))
    prepare, train = (lab.root / "prepare.py").read_bytes(), (lab.root / "train.py").read_bytes()
    session(lab)
    refused = [e for e in events(lab, EventKind.DECIDED) if e.experiment == 1]
    assert str(refused[0].decision) == "refused"
    assert "outside the editable paths: notes.txt, prepare.py" in refused[0].payload["reason"]
    assert [e.experiment for e in events(lab, EventKind.HARM_REFUSED)] == [1]
    assert (lab.root / "prepare.py").read_bytes() == prepare and (lab.root / "train.py").read_bytes() == train
    assert not (lab.root / "notes.txt").exists()


def _alive_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_hanging_agent_is_killed_with_its_whole_tree_at_its_limit(make_lab):
    marker = f"charter-fake-agent-{uuid.uuid4().hex}"
    lab = make_lab(rules=command_rules("hang", "--marker", marker, deadline=4))  # 2 s for the agent, after the margin
    _, summary = session(lab)
    failed = events(lab, EventKind.PROPOSER_FAILED)
    errors = [e.payload["error"] for e in failed]
    assert errors and all("killed at its time limit" in error for error in errors), errors
    assert "thinking forever" in failed[0].payload["error"]  # it ran, and had started its child
    assert "failed" in summary["reason"] and summary["experiments"] == 0
    assert [e.experiment for e in events(lab, EventKind.DECIDED)] == [0]
    assert _alive_with(marker) == []
