"""`charter amend ...`: the rule author's commands (propose, ratify, reject, apply, show, list, log).

Each subcommand parses its arguments, calls one function of `amendments.process` (or reads the
folded history) and prints the result, as a table for people or `--json` for scripts. Errors are
`AmendmentRefused` (and the constitution's own `ConstitutionError`), which `charter`'s main turns
into one line each. `add_parser(subparsers)` is the one hook `controller.cli` calls.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from controller.workspace.lab import find_lab
from ledger import Ledger, payloads

from amendments import history, process
from amendments.errors import AmendmentRefused
from amendments.history import AmendmentRecord
from amendments.patch import parse_setting
from amendments.signatures import NAMESPACE

MAX_PROPOSAL_BYTES = 1 << 20


def _read_proposal(path: str) -> str:
    file = Path(path)
    try:
        data = file.read_bytes()[: MAX_PROPOSAL_BYTES + 1]
    except OSError as e:
        raise AmendmentRefused(f"can't read {file} ({e.strerror})") from None
    if len(data) > MAX_PROPOSAL_BYTES:
        raise AmendmentRefused(f"{file} is over {MAX_PROPOSAL_BYTES >> 20} MiB: not a constitution")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AmendmentRefused(f"{file.name}: not UTF-8 text") from None


def _carried(specs: list[str] | None) -> dict[str, str]:
    files = {}
    for spec in specs or []:
        path, sep, source = spec.partition("=")
        if not sep or not path.strip() or not source.strip():
            raise AmendmentRefused(f"--immutable {spec!r}: write PATH=FILE, e.g. prepare.py=new/prepare.py")
        files[path.strip()] = _read_proposal(source.strip())
    return files


def cmd_propose(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    files = _carried(args.immutable)
    if bool(args.file) == bool(args.set or (files and not args.file)):
        raise AmendmentRefused("propose needs either --file NEW.toml or one or more --set KEY=VALUE (or --immutable PATH=FILE)")
    if args.file:
        done = process.propose(lab, args.proposer_name, args.why, text=_read_proposal(args.file), files=files,
                               label=Path(args.file).name)
    else:
        done = process.propose(lab, args.proposer_name, args.why, settings=[parse_setting(s) for s in args.set or []], files=files)
    p, rec = done.proposal, done.record
    print(rec.id)
    print(f"amendment {rec.proposed.number:04d} proposed by {rec.proposed.by}: version {p.parent_version} -> {p.version}, "
          f"{p.classification.tier.label} (needs {rec.proposed.needed} ratification(s))")
    for r in p.classification.reasons:
        print(f"  {r.words}")
    print(f"  file: {rec.proposed.path} (committed on main, {done.commit[:10]})")
    print(f"next: charter amend ratify --lab {lab.root} {rec.id[:12]} --by NAME --key ~/.ssh/id_ed25519")
    return 0


def cmd_ratify(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    done = process.ratify(lab, args.id, args.who, key=Path(args.key).expanduser() if args.key else None,
                          signature=Path(args.signature) if args.signature else None)
    rec = done.record
    how = f"signed with {done.fingerprint}" if done.signed else "unsigned (amendment.require_signatures = false)"
    print(f"ratified {rec.id[:12]} as {done.by}, {how}: {len(rec.ratifications)} of {rec.proposed.needed} "
          f"for a {rec.proposed.tier} amendment")
    if rec.status == "ratified":
        print(f"next: charter amend apply --lab {lab.root} {rec.id[:12]} (between sessions)")
    else:
        print(f"still needed: {rec.still_needed} from {', '.join(rec.may_still_ratify()) or 'nobody'}")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    rec = process.reject(lab, args.id, args.who, args.why)
    print(f"rejected {rec.id[:12]} (amendment {rec.proposed.number:04d}) by {rec.rejected.by}: {rec.rejected.why}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    done = process.apply(lab, args.id, args.by)
    print(f"applied {done.record.id[:12]}: constitution version {done.old_version} -> {done.version} "
          f"(hash {done.old_hash[:12]} -> {done.hash[:12]}), committed on main {done.commit[:10]}")
    if done.left_branch != "main":
        print(f"the lab is now on main; the last session's work stays on {done.left_branch} "
              f"(`git -C {lab.root} merge {done.left_branch}` to start the next session from it)")
    return 0


def _records(args: argparse.Namespace) -> dict[str, AmendmentRecord]:
    return process.load_records(find_lab(args.lab))


def _line(rec: AmendmentRecord) -> str:
    p = rec.proposed
    extra = ""
    if rec.status == "pending":
        extra = f"; needs {rec.still_needed} more from {', '.join(rec.may_still_ratify()) or 'nobody'}"
    elif rec.status == "applied":
        extra = f"; in version {rec.applied.version}"
    who = ", ".join(rec.ratified_by) or "-"
    return (f"{p.number:04d}  {rec.id[:12]}  {rec.status:<8}  {p.tier:<14}  v{p.parent_version}->v{p.version}  "
            f"by {p.by}  ratified: {who}{extra}  ({p.why})")


def cmd_list(args: argparse.Namespace) -> int:
    records = list(_records(args).values())
    if args.status:
        records = [r for r in records if r.status == args.status]
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print("no amendments" + (f" {args.status}" if args.status else ""))
    for r in records:
        print(_line(r))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rec = history.resolve(_records(args), args.id)
    data = rec.to_json()
    if args.json:
        print(json.dumps(data | {"text": rec.proposed.text}, indent=2))
        return 0
    print(_line(rec))
    print(f"id:      {rec.id}")
    print(f"file:    {rec.proposed.path}")
    print(f"parent:  version {rec.proposed.parent_version} ({rec.proposed.parent_hash})")
    for c in rec.proposed.changes:
        print(f"  {c}")
    for a in rec.ratifications:
        print(f"  ratified by {a.by} at {history.stamp(a.ts)} " + (f"(signed, {a.fingerprint})" if a.signed else "(unsigned)"))
    for a in rec.refused:
        print(f"  refused ratification by {a.by} at {history.stamp(a.ts)}: {a.why}")
    if rec.rejected:
        print(f"  rejected by {rec.rejected.by}: {rec.rejected.why}")
    if rec.applied:
        print(f"  applied at {history.stamp(rec.applied_ts)} as version {rec.applied.version} ({rec.applied.hash})")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    with Ledger.open(lab.ledger_path, read_only=True, wait_s=5) as led:
        events = led.events(kinds=history.KINDS)
    rows = []
    for ev in events:
        p = payloads.read(ev)
        what = {"amendment_proposed": "proposed", "amendment_rejected": "rejected", "amendment_applied": "applied"}.get(ev.kind, "")
        if ev.kind == "amendment_ratified":
            what = "ratification refused" if p.refused else ("ratified (signed)" if p.signed else "ratified (unsigned)")
        detail = {
            "amendment_proposed": lambda: f"{p.tier}, version {p.parent_version} -> {p.version}: {p.why}",
            "amendment_ratified": lambda: p.refused or p.fingerprint,
            "amendment_rejected": lambda: p.reason,
            "amendment_applied": lambda: f"version {p.parent_version} -> {p.version}, hash {p.hash[:12]}, ratified by {', '.join(p.ratified_by)}",
        }[ev.kind]()
        rows.append({"seq": ev.seq, "ts": history.stamp(ev.ts), "event": what, "amendment": p.amendment_id, "actor": ev.actor,
                     "detail": detail, "commit": ev.commit_sha})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no amendment events")
    for r in rows:
        print(f"{r['seq']:>5}  {r['ts']}  {r['amendment'][:12]}  {r['event']:<22} {r['actor']:<20} {r['detail']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `charter amend ...` to the charter command line."""
    a = subparsers.add_parser("amend", help="change the rules between sessions: propose, ratify, reject, apply, show, list, log")
    sub = a.add_subparsers(dest="action", required=True, metavar="ACTION")

    def lab_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--lab", help="lab directory (default: $CHARTER_LAB, then ./lab)")

    sp = sub.add_parser("propose", help="propose the next constitution (a whole file or --set edits); prints its id")
    lab_arg(sp)
    # not `--by`'s usual dest: an agent may propose (recorded as agent:<model>), never ratify
    sp.add_argument("--by", dest="proposer_name", required=True, help="who proposes (a person, or agent:<model>)")
    sp.add_argument("--file", help="the whole proposed constitution (TOML)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="an edit of the constitution in force (repeatable)")
    sp.add_argument("--immutable", action="append", metavar="PATH=FILE",
                    help="a new version of an immutable file (prepare.py, ...); with --set its pin is set for you (repeatable)")
    sp.add_argument("--why", required=True, help="why the change (recorded, and the file's name)")
    sp.set_defaults(func=cmd_propose)

    sp = sub.add_parser("ratify", help=f"ratify an amendment with an ssh-keygen signature (namespace {NAMESPACE})")
    lab_arg(sp)
    sp.add_argument("id", help="amendment id (or a unique prefix)")
    sp.add_argument("--by", dest="who", required=True, help="the ratifier, as amendment.ratifiers names them")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--key", help="your private SSH key: sign the id here")
    how.add_argument("--signature", help=f"a signature made elsewhere: printf %%s ID > id; ssh-keygen -Y sign -f KEY -n {NAMESPACE} id")
    sp.set_defaults(func=cmd_ratify)

    sp = sub.add_parser("reject", help="reject an amendment (a ratifier, or its proposer withdrawing it)")
    lab_arg(sp)
    sp.add_argument("id")
    sp.add_argument("--by", dest="who", required=True)
    sp.add_argument("--why", required=True)
    sp.set_defaults(func=cmd_reject)

    sp = sub.add_parser("apply", help="put a ratified amendment in force (between sessions, after cooling)")
    lab_arg(sp)
    sp.add_argument("id")
    sp.add_argument("--by", default=os.environ.get("USER", "operator"), help="who applies it")
    sp.set_defaults(func=cmd_apply)

    sp = sub.add_parser("show", help="one amendment: its diff, tier, ratifications, status")
    lab_arg(sp)
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("list", help="every amendment with its status and who must still ratify")
    lab_arg(sp)
    sp.add_argument("--status", choices=["pending", "ratified", "applied", "rejected"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("log", help="the amendment history, event by event")
    lab_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_log)
