"""The amendment process on a real git lab and a real DuckDB ledger, through `charter amend ...`:
every deliverable and every refusal, one test each, checking the line a person reads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib

import pytest

import constitution
from controller.live.server import LiveServer
from controller.policy.in_force import constitution_in_force
from controller.workspace.lab import RatifierChoice, init_lab
from ledger import Ledger, payloads
from ledger.query import open_readonly, run_readonly_query

from live_source import RunningSource


def propose(charter, lab, *sets, by="carol", why="raise the session budget") -> str:
    args = ["amend", "propose", "--lab", lab.root, "--by", by, "--why", why]
    for s in sets or ("budgets.session.experiments=60",):
        args += ["--set", s]
    r = charter(*args)
    assert r.code == 0, r.err
    return r.out.splitlines()[0]


def ratify(charter, lab, aid, name, key=None, **kw):
    args = ["amend", "ratify", "--lab", lab.root, aid[:12], "--by", name]
    if key is not None:
        args += ["--key", key]
    if "signature" in kw:
        args += ["--signature", kw["signature"]]
    return charter(*args)


def events(lab, kind=None):
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        return [e for e in led.events() if kind is None or e.kind == kind]


def refused_lines(lab):
    return [payloads.read(e).refused for e in events(lab, "amendment_ratified") if payloads.read(e).refused]


def one_line(r, code=1) -> str:
    assert r.code == code, (r.out, r.err)
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    return r.err.strip()


def on_main(lab, path) -> str:
    return subprocess.run(["git", "show", f"main:{path}"], cwd=lab.root, capture_output=True, text=True, check=True).stdout


# -- identities at init ------------------------------------------------------------------------


def test_init_writes_the_ratifiers_and_their_keys_into_version_1(short_dir, keys, charter):
    r = charter("init", short_dir / "l", "--ratifier", f"alice={keys['alice'].public}", "--ratifier", f"bob={keys['bob'].public}")
    assert r.code == 0, r.err
    rules = constitution.load(short_dir / "l" / "constitution.toml")
    assert [(x.name, x.key) for x in rules.amendment.ratifiers] == [("alice", keys["alice"].line), ("bob", keys["bob"].line)]
    assert rules.meta.version == 1 and rules.amendment.require_signatures
    # comments survive the edit
    assert "ledgered as unsigned" in (short_dir / "l" / "constitution.toml").read_text()


@pytest.mark.parametrize("spec, says", [
    ("alice", "write NAME=PUBKEY_FILE"),
    ("alice=/nonexistent.pub", "can't read /nonexistent.pub"),
    ("alice={private}", "must hold one OpenSSH public key line"),
    ("agent:x={public}", "not a person's name"),
])
def test_init_refuses_a_bad_ratifier_in_one_line(short_dir, keys, charter, spec, says):
    spec = spec.format(private=keys["alice"].private, public=keys["alice"].public)
    r = charter("init", short_dir / "bad", "--ratifier", spec, "--ratifier", f"bob={keys['bob'].public}")
    assert r.code in (1, 2) and says in r.err and "Traceback" not in r.err, r.err
    assert not (short_dir / "bad").exists()


def test_init_with_too_few_ratifiers_for_the_constitutional_tier_is_refused(short_dir, keys, charter):
    r = charter("init", short_dir / "one", "--ratifier", f"alice={keys['alice'].public}")
    assert r.code == 2 and "tiers.constitutional needs 2 ratifiers but only 1 are listed" in r.err


# -- propose -----------------------------------------------------------------------------------


def test_propose_records_the_id_the_file_and_the_event(lab, charter):
    aid = propose(charter, lab)
    [ev] = events(lab, "amendment_proposed")
    p = payloads.read(ev)
    body = on_main(lab, p.path)
    assert p.path == "amendments/0001-raise-the-session-budget.toml" and ev.actor == "person:carol"
    assert tomllib.loads(body)["id"] == aid == p.amendment_id
    assert hashlib.sha256(tomllib.loads(body)["constitution"].encode()).hexdigest() == aid
    assert (p.tier, p.needed, p.version, p.parent_version) == ("major", 1, 2, 1)
    assert p.changes == ["budgets.session.experiments: 40 -> 60 (loosens a limit: major)"]
    assert p.parent_hash == constitution.constitution_hash(lab.load_constitution())
    assert set(p.ratifiers) == {"alice", "bob"}
    # committed on main, and the work tree is clean (a session could start right away)
    assert ev.commit_sha == subprocess.run(["git", "rev-parse", "main"], cwd=lab.root, capture_output=True, text=True).stdout.strip()
    assert lab.git.dirty_paths() == []
    # the proposed text keeps the constitution's comments
    assert "# Charter constitution: the rules of one lab" in p.text


def test_propose_from_a_session_branch_commits_on_main_and_leaves_the_branch_alone(lab, charter):
    lab.git.checkout("charter/s1", create_at="main")
    before = lab.git.head()
    propose(charter, lab)
    assert lab.git.branch() == "charter/s1" and lab.git.head() == before and lab.git.dirty_paths() == []
    assert "0001-raise" in subprocess.run(["git", "ls-tree", "-r", "--name-only", "main"], cwd=lab.root, capture_output=True, text=True).stdout


def test_propose_a_whole_file_with_the_wrong_version_says_what_it_must_be(lab, charter, tmp_path):
    f = tmp_path / "new.toml"
    f.write_text(lab.constitution_path.read_text().replace("experiments = 40 ", "experiments = 60 "))
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--file", f)
    assert r.code == 2 and r.err.splitlines() == ["new.toml: meta.version: must be 2 (parent is version 1)",
                                                  f"new.toml: meta.parent_hash: must be {constitution.constitution_hash(lab.load_constitution())}, the parent's canonical hash"]
    assert events(lab, "amendment_proposed") == []


def test_propose_an_invalid_constitution_gets_one_line_per_problem(lab, charter):
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x",
                "--set", "budgets.session.experiments=-1", "--set", "decision.confidence=2")
    assert r.code == 2 and r.err.splitlines() == [
        "proposal: budgets.session.experiments: must be greater than or equal to 0",
        "proposal: decision.confidence: must be less than 1",
    ]


def test_an_agent_may_propose_and_is_recorded_as_the_agent(lab, charter):
    aid = propose(charter, lab, "budgets.session.agent_dollars=40", by="agent:claude-sonnet-4-5", why="raise the dollar budget")
    [ev] = events(lab, "amendment_proposed")
    assert ev.actor == "agent:claude-sonnet-4-5" and payloads.read(ev).by == "agent:claude-sonnet-4-5"
    # and it needs a person's ratification like any other
    shown = json.loads(charter("amend", "show", "--lab", lab.root, aid[:8], "--json").out)
    assert shown["status"] == "pending" and shown["may_still_ratify"] == ["alice", "bob"]


def test_propose_by_the_controller_is_refused(lab, charter):
    assert "the controller's own identity" in one_line(charter("amend", "propose", "--lab", lab.root, "--by", "controller",
                                                               "--why", "x", "--set", "budgets.session.experiments=60"))


def test_a_lab_without_ratifiers_says_how_it_gets_them(short_dir, charter):
    lab = init_lab(short_dir / "plain")
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--set", "budgets.session.experiments=60")
    assert "this lab lists no ratifiers (amendment.ratifiers)" in one_line(r) and "--ratifier NAME=KEY.pub" in r.err


def test_a_proposal_nobody_else_could_ratify_is_refused(lab, charter):
    # constitutional needs 2; alice proposing leaves only bob
    r = charter("amend", "propose", "--lab", lab.root, "--by", "alice", "--why", "x", "--set", "evaluation.eval_tokens=8192")
    assert "a constitutional amendment needs 2 ratification(s), but only 1 listed ratifier(s) other than alice" in one_line(r)


# -- ratify: separation of duty, signatures, thresholds ----------------------------------------


def test_the_proposer_cannot_ratify_their_own_amendment(lab, charter, keys):
    aid = propose(charter, lab, by="alice")
    line = one_line(ratify(charter, lab, aid, "alice", keys["alice"].private))
    assert line == f"charter: ratification refused: alice proposed amendment {aid[:12]} and can't ratify it (separation of duty: another ratifier must)"
    assert refused_lines(lab) == [line.removeprefix("charter: ratification refused: ")]


def test_an_agent_can_never_ratify(lab, charter, keys):
    aid = propose(charter, lab)
    line = one_line(ratify(charter, lab, aid, "agent:claude", keys["alice"].private))
    assert "'agent:claude' is an agent's identity" in line
    [ev] = [e for e in events(lab, "amendment_ratified")]
    assert ev.actor == "agent:claude" and payloads.read(ev).refused


def test_a_name_not_listed_is_refused(lab, charter, keys):
    aid = propose(charter, lab)
    assert "dave is not a ratifier of this lab (amendment.ratifiers lists alice, bob)" in one_line(ratify(charter, lab, aid, "dave", keys["carol"].private))


def test_a_signature_by_an_unlisted_key_is_refused_and_ledgered(lab, charter, keys):
    aid = propose(charter, lab)
    line = one_line(ratify(charter, lab, aid, "alice", keys["mallory"].private))
    assert "which amendment.ratifiers does not list" in line
    assert len(refused_lines(lab)) == 1 and json.loads(charter("amend", "show", "--lab", lab.root, aid, "--json").out)["status"] == "pending"


def test_another_ratifiers_key_is_refused(lab, charter, keys):
    aid = propose(charter, lab)
    assert "made with bob's key" in one_line(ratify(charter, lab, aid, "alice", keys["bob"].private))


def test_a_signature_over_another_id_is_refused(lab, charter, keys, tmp_path):
    aid = propose(charter, lab)
    msg = tmp_path / "id"
    msg.write_text("0" * 64)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", keys["alice"].private, "-n", "charter-amendment", msg], check=True)
    line = one_line(ratify(charter, lab, aid, "alice", signature=tmp_path / "id.sig"))
    assert f"the signature does not verify for amendment {aid[:12]}" in line


def test_a_ratification_without_a_signature_is_refused_where_signatures_are_required(lab, charter):
    aid = propose(charter, lab)
    assert "requires signed ratifications" in one_line(ratify(charter, lab, aid, "alice"))


def test_a_ratifier_counts_once(lab, charter, keys):
    aid = propose(charter, lab, "evaluation.eval_tokens=8192", why="more eval tokens")
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert "alice has already ratified" in one_line(ratify(charter, lab, aid, "alice", keys["alice"].private))
    shown = json.loads(charter("amend", "show", "--lab", lab.root, aid, "--json").out)
    assert (shown["status"], shown["still_needed"], shown["may_still_ratify"]) == ("pending", 1, ["bob"])


def test_a_tampered_proposal_file_is_refused_at_ratification(lab, charter, keys):
    aid = propose(charter, lab)
    [p] = [payloads.read(e) for e in events(lab, "amendment_proposed")]
    path = lab.root / p.path
    path.write_text(path.read_text().replace("experiments = 60 ", "experiments = 600 "))
    lab.git.commit_all("sneaky edit")
    line = one_line(ratify(charter, lab, aid, "alice", keys["alice"].private))
    assert f"{p.path} was changed after it was proposed" in line and f"not the amendment id {aid[:12]}" in line
    assert len(refused_lines(lab)) == 1


def test_a_tampered_file_after_ratification_is_refused_at_apply(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    [p] = [payloads.read(e) for e in events(lab, "amendment_proposed")]
    path = lab.root / p.path
    path.write_text(path.read_text().replace("experiments = 60 ", "experiments = 600 "))
    lab.git.commit_all("sneaky edit")
    assert f"{p.path} was changed after it was proposed" in one_line(charter("amend", "apply", "--lab", lab.root, aid))
    assert lab.load_constitution().budgets.session.experiments == 40


def test_an_id_nobody_proposed_is_refused(lab, charter, keys):
    assert "no amendment abcdef12 in this lab's ledger" in one_line(ratify(charter, lab, "abcdef12", "alice", keys["alice"].private))
    assert "is not an amendment id" in one_line(ratify(charter, lab, "xyz", "alice", keys["alice"].private))


def test_a_lab_without_required_signatures_ratifies_by_name_and_ledgers_it_unsigned(short_dir, charter):
    lab = init_lab(short_dir / "names", ratifiers=[RatifierChoice("alice", ""), RatifierChoice("bob", "")])
    text = lab.constitution_path.read_text().replace("require_signatures = true", "require_signatures = false")
    lab.constitution_path.write_text(text)
    lab.git.commit_all("names only")  # before the first session the owner may edit by hand
    aid = propose(charter, lab)
    r = ratify(charter, lab, aid, "bob")
    assert r.code == 0 and "unsigned (amendment.require_signatures = false)" in r.out
    [ev] = events(lab, "amendment_ratified")
    assert payloads.read(ev).signed is False and payloads.read(ev).refused == ""


# -- reject ------------------------------------------------------------------------------------


def test_a_rejected_amendment_can_be_neither_ratified_nor_applied(lab, charter, keys):
    aid = propose(charter, lab)
    assert "dave is neither a ratifier" in one_line(charter("amend", "reject", "--lab", lab.root, aid, "--by", "dave", "--why", "x"))
    r = charter("amend", "reject", "--lab", lab.root, aid[:10], "--by", "bob", "--why", "too generous")
    assert r.code == 0 and "rejected" in r.out
    assert "was rejected by bob (too generous)" in one_line(ratify(charter, lab, aid, "alice", keys["alice"].private))
    assert "was rejected by bob" in one_line(charter("amend", "apply", "--lab", lab.root, aid))


# -- apply -------------------------------------------------------------------------------------


def test_apply_below_the_threshold_is_refused(lab, charter, keys):
    aid = propose(charter, lab, "evaluation.eval_tokens=8192", why="more eval tokens")
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    line = one_line(charter("amend", "apply", "--lab", lab.root, aid))
    assert f"amendment {aid[:12]} (constitutional) has 1 of the 2 ratifications it needs; may still ratify: bob" in line


def test_apply_writes_the_constitution_on_main_and_records_old_and_new(lab, charter, keys):
    old_hash = constitution.constitution_hash(lab.load_constitution())
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    r = charter("amend", "apply", "--lab", lab.root, aid[:12], "--by", "dana")
    assert r.code == 0, r.err
    rules = lab.load_constitution()
    assert (rules.meta.version, rules.meta.amendment_id, rules.budgets.session.experiments) == (2, aid, 60)
    assert rules.meta.parent_hash == old_hash and rules.meta.ratified_at.endswith("Z")
    text = lab.constitution_path.read_text()
    assert "# Charter constitution: the rules of one lab" in text and "experiments = 60           # experiments per session" in text
    [ev] = events(lab, "amendment_applied")
    p = payloads.read(ev)
    assert (p.amendment_id, p.version, p.parent_version, p.parent_hash, p.ratified_by) == (aid, 2, 1, old_hash, ["alice"])
    assert p.hash == constitution.constitution_hash(rules) and ev.actor == "person:dana"
    assert lab.git.branch() == "main" and lab.git.dirty_paths() == [] and ev.commit_sha == lab.git.head()
    assert f"version 1 -> 2 (hash {old_hash[:12]} -> {p.hash[:12]})" in r.out


def test_apply_from_a_session_branch_leaves_the_lab_on_main(lab, charter, keys):
    aid = propose(charter, lab)
    lab.git.checkout("charter/s1", create_at="main")
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    r = charter("amend", "apply", "--lab", lab.root, aid)
    assert r.code == 0 and "the last session's work stays on charter/s1" in r.out
    assert lab.git.branch() == "main" and lab.load_constitution().meta.version == 2


def test_apply_during_cooling_is_refused(short_dir, keys, charter):
    lab = init_lab(short_dir / "cool", ratifiers=[RatifierChoice(n, keys[n].line) for n in ("alice", "bob")])
    lab.constitution_path.write_text(lab.constitution_path.read_text().replace("cooling_hours = 0 ", "cooling_hours = 24 "))
    lab.git.commit_all("a day to think")
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert "is cooling: cooling_hours = 24 after its proposal, it may be applied from" in one_line(charter("amend", "apply", "--lab", lab.root, aid))


def test_apply_while_a_session_is_open_is_refused(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    with Ledger.open(lab.ledger_path) as led:  # a session that started and never ended (its controller died)
        led.record(payloads.SessionStarted(tag="t", branch="charter/t"), actor="controller", session="s-open")
    assert "session s-open is open (it never ended)" in one_line(charter("amend", "apply", "--lab", lab.root, aid))


def test_apply_while_a_controller_runs_is_refused(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    with Ledger.open(lab.ledger_path) as led, LiveServer(lab.state_dir, RunningSource(led)):
        line = one_line(charter("amend", "apply", "--lab", lab.root, aid))
    assert line.startswith(f"charter: a controller is running a session on {lab.root}: amendments are applied between sessions")
    assert lab.load_constitution().meta.version == 1


def test_apply_with_uncommitted_changes_is_refused(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    (lab.root / "train.py").write_text("# edited\n")
    assert "uncommitted changes (train.py)" in one_line(charter("amend", "apply", "--lab", lab.root, aid))


def test_two_amendments_from_one_parent_the_second_must_be_proposed_again(lab, charter, keys):
    first = propose(charter, lab, "budgets.session.experiments=60", why="more experiments")
    second = propose(charter, lab, "budgets.session.wall_hours=10", why="longer sessions")
    for aid in (first, second):
        assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, first).code == 0
    line = one_line(charter("amend", "apply", "--lab", lab.root, second))
    assert "was proposed against version 1" in line and "but version 2" in line and "propose it again" in line
    assert "propose it again" in one_line(ratify(charter, lab, second, "bob", keys["bob"].private))
    again = propose(charter, lab, "budgets.session.wall_hours=10", why="longer sessions")
    assert ratify(charter, lab, again, "bob", keys["bob"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, again).code == 0
    rules = lab.load_constitution()
    assert (rules.meta.version, rules.budgets.session.experiments, rules.budgets.session.wall_hours) == (3, 60, 10)


def test_a_rollback_to_version_1_is_refused(lab, charter, keys, tmp_path):
    v1 = lab.constitution_path.read_text()
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, aid).code == 0
    (tmp_path / "v1.toml").write_text(v1)
    line = one_line(charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "undo", "--file", tmp_path / "v1.toml"))
    assert "meta.version 1 is at or below version 2, the highest ever applied: a rollback is refused" in line
    # undoing the change is a new amendment, version 3
    undo = propose(charter, lab, "budgets.session.experiments=40", why="undo")
    assert json.loads(charter("amend", "show", "--lab", lab.root, undo, "--json").out)["version"] == 3


def test_a_hand_edited_constitution_is_refused_before_anything_is_proposed(lab, charter):
    with Ledger.open(lab.ledger_path) as led:  # the lab's first session put version 1 in force
        rules = lab.load_constitution()
        digest = constitution.constitution_hash(rules)
        led.record(payloads.SessionStarted(tag="t", constitution_hash=digest, constitution_version=1), actor="controller", session="s1")
        led.record(payloads.ConstitutionLoaded(hash=digest, version=1, rules=rules.model_dump(mode="json")), actor="controller", session="s1")
        led.record(payloads.SessionEnded(reason="done"), actor="controller", session="s1")
    lab.constitution_path.write_text(lab.constitution_path.read_text().replace("experiments = 40 ", "experiments = 41 "))
    lab.git.commit_all("hand edit")
    line = one_line(charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--set", "budgets.session.experiments=60"))
    assert "the lab's constitution is not the one in force" in line and "budgets.session.experiments: 40 -> 41" in line


# -- show / list / log, the view, verify -------------------------------------------------------


def test_list_log_the_view_and_verify_tell_the_whole_story(lab, charter, keys):
    aid = propose(charter, lab, by="alice")
    ratify(charter, lab, aid, "alice", keys["alice"].private)  # refused: its proposer
    assert ratify(charter, lab, aid, "bob", keys["bob"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, aid).code == 0
    pending = propose(charter, lab, "decision.min_improvement=0.02", why="stricter keep")

    listed = json.loads(charter("amend", "list", "--lab", lab.root, "--json").out)
    assert [(a["id"], a["status"], a["tier"]) for a in listed] == [(aid, "applied", "major"), (pending, "pending", "minor")]
    assert listed[1]["may_still_ratify"] == ["alice", "bob"]
    assert "pending" in charter("amend", "list", "--lab", lab.root, "--status", "pending").out

    log = json.loads(charter("amend", "log", "--lab", lab.root, "--json").out)
    assert [row["event"] for row in log] == ["proposed", "ratification refused", "ratified (signed)", "applied", "proposed"]

    con = open_readonly(lab.ledger_path)
    try:
        rows = run_readonly_query(con, "select id, tier, proposer, ratifications, ratified_by, refused_ratifications, status, "
                                       "applied_version, version from amendments order by seq")["rows"]
    finally:
        con.close()
    fp = listed[0]["ratifications"][0]["fingerprint"]
    assert [tuple(r) for r in rows] == [(aid, "major", "alice", 1, f"bob {fp}", 1, "applied", 2, 2), (pending, "minor", "carol", 0, None, 0, "pending", None, 3)]
    assert charter("ledger", "verify", "--lab", lab.root).out.startswith("ok: ")
    with Ledger.open(lab.ledger_path, read_only=True) as led:
        in_force = constitution_in_force(led.events())
    assert in_force is None  # no session yet: the owner's file is version 1 until one starts


def test_verify_re_checks_every_recorded_signature(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    [good] = [payloads.read(e) for e in events(lab, "amendment_ratified")]
    # a writer that records bob's signature as alice's: the chain is whole, the signature is not alice's
    other = propose(charter, lab, "budgets.session.wall_hours=9", why="other")
    bob_sig = __import__("amendments.signatures", fromlist=["sign"]).sign(other, keys["bob"].private)
    with Ledger.open(lab.ledger_path) as led:
        ev = led.record(payloads.AmendmentRatified(amendment_id=other, by="alice", signed=True, signature=bob_sig,
                                                   key=good.key, fingerprint=good.fingerprint), actor="person:alice")
    r = charter("ledger", "verify", "--lab", lab.root)
    assert r.code == 1 and r.err.startswith(f"FAILED: seq {ev.seq}: ratification of {other[:12]} by alice: the signature does not verify")


# -- immutable files change only by amendment --------------------------------------------------


def test_an_immutable_file_and_its_pin_land_in_one_commit_as_a_constitutional_amendment(lab, charter, keys, tmp_path):
    new = tmp_path / "program.md"
    new.write_bytes((lab.root / "program.md").read_bytes() + b"\nAlso: prefer small changes.\r\n")
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "a clearer brief", "--immutable", f"program.md={new}")
    assert r.code == 0, r.err
    aid = r.out.splitlines()[0]
    [p] = [payloads.read(e) for e in events(lab, "amendment_proposed")]
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    assert p.tier == "constitutional" and p.needed == 2 and p.files == {"program.md": new.read_bytes().decode()}
    assert any(c.startswith('evaluation.immutable."program.md": ') and "an immutable file's pin" in c for c in p.changes)
    for name in ("alice", "bob"):
        assert ratify(charter, lab, aid, name, keys[name].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, aid).code == 0
    assert (lab.root / "program.md").read_bytes() == new.read_bytes()
    assert lab.load_constitution().evaluation.immutable["program.md"] == digest
    changed = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=lab.root, capture_output=True, text=True).stdout.split()
    assert sorted(changed) == ["constitution.toml", "program.md"]
    assert charter("ledger", "verify", "--lab", lab.root).code == 0


def test_a_pin_change_without_its_file_is_refused(lab, charter):
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--set", f'evaluation.immutable."program.md"="{"d" * 64}"')
    assert r.code == 2 and 'evaluation.immutable."program.md" pins a program.md the lab does not have: carry it (--immutable program.md=FILE)' in r.err


def test_a_carried_file_that_is_not_immutable_is_refused(lab, charter, tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--set", "budgets.session.experiments=60",
                "--immutable", f"train.py={tmp_path / 'train.py'}")
    assert r.code == 2 and "train.py is not an immutable file of the proposed constitution" in r.err


def test_a_carried_file_edited_in_the_proposal_file_is_refused(lab, charter, keys, tmp_path):
    new = tmp_path / "program.md"
    new.write_text((lab.root / "program.md").read_text() + "\nmore\n")
    r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "brief", "--immutable", f"program.md={new}")
    aid = r.out.splitlines()[0]
    [p] = [payloads.read(e) for e in events(lab, "amendment_proposed")]
    path = lab.root / p.path
    path.write_text(path.read_text().replace("\nmore\n", "\nsomething else\n"))
    lab.git.commit_all("edit the carried file")
    assert "the immutable files it carries differ from the ones proposed" in one_line(ratify(charter, lab, aid, "alice", keys["alice"].private))


def test_propose_while_a_controller_runs_is_refused_and_writes_nothing(lab, charter):
    with Ledger.open(lab.ledger_path) as led, LiveServer(lab.state_dir, RunningSource(led)):
        r = charter("amend", "propose", "--lab", lab.root, "--by", "carol", "--why", "x", "--set", "budgets.session.experiments=60")
        assert "amendments are proposed between sessions" in one_line(r)
    assert events(lab, "amendment_proposed") == [] and not (lab.root / "amendments").exists()


# -- ledger verify: what the chain alone can't show -------------------------------------------


def write(lab, payload, actor="person:x", session=None):
    with Ledger.open(lab.ledger_path) as led:
        return led.record(payload, actor=actor, session=session)


def verify_line(charter, lab) -> str:
    r = charter("ledger", "verify", "--lab", lab.root)
    assert r.code == 1, r.out
    return r.err.strip()


def test_verify_refuses_an_amendment_applied_without_its_ratifications(lab, charter):
    aid = propose(charter, lab)
    ev = write(lab, payloads.AmendmentApplied(amendment_id=aid, version=2, hash="e" * 64, parent_hash="f" * 64))
    assert verify_line(charter, lab) == f"FAILED: seq {ev.seq}: amendment {aid[:12]} was applied with 0 of the 1 ratifications its tier needs"


def test_verify_refuses_an_applied_rollback(lab, charter, keys):
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, aid).code == 0
    ev = write(lab, payloads.AmendmentApplied(amendment_id=aid, version=1, hash="e" * 64))
    assert f"seq {ev.seq}: amendment {aid[:12]} applied version 1, at or below version 2 applied before (a rollback)" in verify_line(charter, lab)


def test_verify_refuses_a_session_that_ran_under_another_version_than_the_applied_one(lab, charter, keys):
    write(lab, payloads.SessionStarted(tag="one", constitution_hash="1" * 64, constitution_version=1), actor="controller", session="s1")
    write(lab, payloads.SessionEnded(reason="done"), actor="controller", session="s1")
    # (the ledger's record of version 1 is the file's, so the amendment can chain from it)
    rules = lab.load_constitution()
    digest = constitution.constitution_hash(rules)
    write(lab, payloads.ConstitutionLoaded(hash=digest, version=1, rules=rules.model_dump(mode="json")), actor="controller", session="s1")
    write(lab, payloads.SessionStarted(tag="one-b", constitution_hash=digest, constitution_version=1), actor="controller", session="s1b")
    write(lab, payloads.SessionEnded(reason="done"), actor="controller", session="s1b")
    aid = propose(charter, lab)
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert charter("amend", "apply", "--lab", lab.root, aid).code == 0
    assert charter("ledger", "verify", "--lab", lab.root).code == 0
    ev = write(lab, payloads.SessionStarted(tag="two", constitution_hash=digest, constitution_version=1), actor="controller", session="s2")
    line = verify_line(charter, lab)
    assert line.startswith(f"FAILED: seq {ev.seq}: the session runs under constitution {digest[:12]}, not version 2")


def test_verify_refuses_a_recorded_text_that_is_not_its_id(lab, charter):
    ev = write(lab, payloads.AmendmentProposed(amendment_id="a" * 64, text="meta = 1\n"))
    assert verify_line(charter, lab) == f"FAILED: seq {ev.seq}: amendment aaaaaaaaaaaa: its recorded text does not hash to its id"
