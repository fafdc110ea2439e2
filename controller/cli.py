"""`charter`: the command line, the one face of every role (operator, auditor, rule author).

Each subcommand parses its arguments, calls one function of the package that owns the concept,
and prints the result. Every error a person can cause becomes one line on stderr and a non-zero
exit code (2 for an invalid constitution or usage, 1 for a failed check or refused action);
tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
from pathlib import Path

import constitution
from controller import audit
from controller.policy.identity import agent_identity, person_refusal
from controller.workspace.anchor import newest_anchor
from controller.live.client import ControllerUnreachable, LiveClient, LiveError
from controller.workspace.git import GitError
from controller.workspace.lab import Lab, LabError, ProposerChoice, find_lab, init_lab, read_ratifier
from controller.operators import OperatorRefused, format_status, lab_status, operator_command
from controller.workspace.preparation import prepare_lab
from controller.proposers import ProposerError, ProposerOptions, available, make_proposer
from controller.execution.runner import PrepareError
from controller.execution import gpu
from controller.execution.ray_pool import ray_refusal
from controller.policy.device import gpu_refusal
from controller.session.loop import Session, SessionRefused
from controller.session.narrator import Narrator
from ledger import Ledger, LedgerError, payloads
from amendments import cli as amendments_cli
from amendments.errors import AmendmentRefused
from tui import cli as tui_cli


class UsageError(Exception):
    """A command used in a way that cannot work; the message says how to use it."""


# -- constitution ---------------------------------------------------------------------------------


def cmd_constitution_validate(args: argparse.Namespace) -> int:
    rules = constitution.load(args.path)
    print(f"ok: {args.path} (version {rules.meta.version}, hash {constitution.constitution_hash(rules)})")
    return 0


def cmd_constitution_show(args: argparse.Namespace) -> int:
    rules = constitution.load(args.path)
    print(json.dumps(rules.model_dump(mode="json"), indent=2))
    return 0


def cmd_constitution_hash(args: argparse.Namespace) -> int:
    print(constitution.constitution_hash(constitution.load(args.path)))
    return 0


def cmd_constitution_schema(args: argparse.Namespace) -> int:
    print(json.dumps(constitution.json_schema(), indent=2))
    return 0


# -- labs -----------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    choice = None
    if args.proposer or args.model or args.agent_command:
        kind = args.proposer or ("command" if args.agent_command else "anthropic")
        if kind == "anthropic" and not args.model:
            raise UsageError("--proposer anthropic needs --model MODEL (e.g. claude-sonnet-4-5)")
        if kind == "command" and not args.agent_command:
            raise UsageError('--proposer command needs --agent-command "ARGV" (e.g. "claude -p")')
        choice = ProposerChoice(kind, args.model or "", tuple(shlex.split(args.agent_command or "")))
    ratifiers = [read_ratifier(spec) for spec in args.ratifier or []]
    lab = init_lab(args.dir, actor=f"person:{args.by}", proposer=choice, ratifiers=ratifiers, profile=args.profile)
    print(f"lab created at {lab.root}")
    print(f"  constitution: {lab.constitution_path}")
    print(f"  ledger:       {lab.ledger_path}")
    print(f"next: charter prepare --lab {args.dir}  (data + tokenizer), then charter run --lab {args.dir}")
    return 0


# -- ledger ---------------------------------------------------------------------------------------


def cmd_ledger_note(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    text = " ".join(args.text).strip()
    if not text:
        raise UsageError("a note needs some text: charter ledger note --by NAME TEXT")
    try:  # a running controller is the only writer: hand it the note
        print(f"noted as seq {LiveClient(lab.state_dir).note(args.by, text)}")
        return 0
    except ControllerUnreachable:
        pass
    with Ledger.open(lab.ledger_path, wait_s=5) as led:
        ev = led.record(payloads.Note(text), actor=f"person:{args.by}")
    print(f"noted as seq {ev.seq}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    anchor = newest_anchor(lab)
    result = audit.verify(lab, anchor)
    if result.ok:
        seq, digest = result.head if result.head else (0, "none")
        tail = f" (anchor at seq {anchor[0]} matches)" if anchor else ""
        print(f"ok: {result.count} events, head {digest}{tail}")
        return 0
    print(f"FAILED: {result.problem}", file=sys.stderr)
    return 1


def cmd_ledger_query(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 or more (rows to print), got {args.limit}")
    lab = find_lab(args.lab)
    sql = " ".join(args.sql)
    result = audit.query(lab, sql, limit=args.limit)
    if args.json:
        print(json.dumps([dict(zip(result["columns"], row)) for row in result["rows"]], indent=2, default=str))
    elif args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(result["columns"])
        w.writerows(result["rows"])
    else:
        print(audit.format_table(result))
    if result.get("truncated"):
        print(f"(truncated at {args.limit} rows; use --limit)", file=sys.stderr)
    return 0


def cmd_ledger_report(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    out = Path(args.out or lab.state_dir / "reports").absolute()  # never inside the work tree
    md, png = audit.report(lab, out, session=args.session)
    print(f"notebook: {md}")
    print(f"chart:    {png}")
    return 0


def cmd_ledger_export(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    paths = audit.export(lab, Path(args.out).absolute(), args.format, session=args.session)
    for p in paths:
        print(p)
    return 0


# -- running a lab -----------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    data = prepare_lab(lab, actor=f"person:{args.by}", source=args.source)
    print(f"prepared: profile {data['profile']}, data {data['data_hash'][:16]}, tokenizer {data['tokenizer_hash'][:16]}")
    if data["pinned"]:
        print(f"pinned in constitution.toml: {', '.join(data['pinned'])}")
    return 0


def _lab_for_run(arg: str | None, by: str, source: str | None) -> Lab:
    """The lab `charter run` means; a newcomer with no lab gets ./lab created and prepared."""
    try:
        lab = find_lab(arg)
    except LabError:
        target = Path(arg or os.environ.get("CHARTER_LAB") or "lab")
        if target.exists() and any(target.iterdir()):
            raise
        print(f"no lab found: creating {target.absolute()} and preparing its data (first run only)")
        lab = init_lab(target, actor=f"person:{by}")
    if not lab.load_constitution().evaluation.data_hash:
        prepare_lab(lab, actor=f"person:{by}", source=source)
    return lab


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be 1 to 256, not {value}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    # the proposer first: a usage mistake must not cost a lab creation and a data preparation
    try:
        rules = find_lab(args.lab).load_constitution()
    except LabError:
        rules = constitution.load_default()  # the lab `charter run` is about to create
    no_gpu = gpu_refusal(rules, gpu.probe())  # before a data preparation sized for a GPU
    if no_gpu:
        raise SessionRefused(no_gpu)
    scale = rules.scale if args.workers is None else rules.scale.model_copy(update={"workers": args.workers})
    no_ray = ray_refusal(scale, rules.evaluation.profile, rules.budgets.experiment.memory_hard_mb)  # before a lab creation too
    if no_ray:
        raise SessionRefused(no_ray)
    kind = args.proposer or rules.proposer.kind
    seed = rules.proposer.seed if args.seed is None else args.seed
    proposer = make_proposer(kind, ProposerOptions(rules=rules, seed=seed, queue_dir=Path(args.queue) if args.queue else None))
    lab = _lab_for_run(args.lab, args.by, args.source)
    session = Session(lab, proposer, tag=args.tag, max_experiments=args.max_experiments, workers=args.workers)
    mode = "quiet" if args.quiet else "jsonl" if args.jsonl else "lines"
    # the progress line follows the loop's step, or with several workers the latest experiment in flight
    narrator = Narrator(sys.stdout, mode, inflight=lambda: session.inflight or max(
        session.flights.copy().values(), key=lambda f: f.experiment, default=None), stopping=session.stop_requested.is_set)
    session.listeners.append(narrator.on_event)
    print(f"charter: session on {lab.root} with the {kind} proposer (status: charter status --lab {lab.root}; "
          f"console: charter tui --lab {lab.root})", file=sys.stderr if args.jsonl else sys.stdout)
    with narrator:
        summary = session.run()
    if not args.jsonl:  # the session_ended event is the summary for scripts
        print_summary(summary)
    file_agent_amendments(lab, proposer)
    return 0


def file_agent_amendments(lab: Lab, proposer) -> None:
    """Amendments the agent asked for during the session, filed now that it has ended, as
    proposed by `agent:<model>`; people ratify them or not. A refusal is one line."""
    from amendments import process
    from amendments.errors import AmendmentRefused
    from amendments.patch import PatchError, parse_setting

    for req in getattr(proposer, "amendment_requests", []):
        by = agent_identity(proposer.model)
        try:
            done = process.propose(lab, by, req.why, settings=[parse_setting(s) for s in req.settings])
            print(f"amendment proposed by {by}: {done.record.id[:12]} ({', '.join(req.settings)}): {req.why}")
        except (AmendmentRefused, PatchError, constitution.ConstitutionError) as e:
            lines = e.problems if isinstance(e, constitution.ConstitutionError) else [str(e)]
            print(f"amendment asked for by {by} not filed: {'; '.join(lines)}")


def print_summary(s: dict) -> None:
    print()
    print(f"session {s['session']} ended: {s['reason']}")
    print(f"  experiments: {s['experiments']}   keeps: {s['keeps']}   gate: {s['gate']}   branch: {s['branch']}")
    if s.get("baseline_bpb") is not None:
        best = s["best_bpb"]
        print(f"  val_bpb: baseline {s['baseline_bpb']:.4f} -> best {best:.4f} ({best - s['baseline_bpb']:+.4f}) at {str(s['best_commit'])[:10]}")


def cmd_status(args: argparse.Namespace) -> int:
    lab = find_lab(args.lab)
    status = lab_status(lab)
    if args.json:
        print(json.dumps(status.to_json(), indent=2, default=str))
        return 0
    print(format_status(status))
    return 0


def _operator(args: argparse.Namespace, op: str) -> int:
    lab = find_lab(args.lab)
    reason = args.reason or ""
    if op == "resume" and not reason.strip():
        raise UsageError("resume needs a reason: charter resume --reason TEXT --by NAME")
    key = Path(args.key) if getattr(args, "key", None) else None
    signature = Path(args.signature) if getattr(args, "signature", None) else None
    result = operator_command(lab, op, by=args.by, reason=reason, key=key, signature=signature)
    print(result)
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="charter",
        description="Constitutional controller for autonomous ML-research agents.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def lab_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--lab", help="lab directory (default: $CHARTER_LAB, then ./lab)")

    c = sub.add_parser("constitution", help="validate, show, hash a constitution; print its JSON Schema")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, fn, helptext in [
        ("validate", cmd_constitution_validate, "exit 0 if valid, else 2 with one line per problem"),
        ("show", cmd_constitution_show, "print the validated constitution as JSON"),
        ("hash", cmd_constitution_hash, "print the canonical hash"),
    ]:
        sp = csub.add_parser(name, help=helptext)
        sp.add_argument("path")
        sp.set_defaults(func=fn)
    csub.add_parser("schema", help="print the JSON Schema").set_defaults(func=cmd_constitution_schema)

    sp = sub.add_parser("init", help="create a lab (git repo + constitution + ledger) in an empty DIR")
    sp.add_argument("dir")
    sp.add_argument("--by", default=os.environ.get("USER", "operator"), help="who creates it")
    sp.add_argument("--proposer", help="proposer kind of version 1 (offline, queue, anthropic, command)")
    sp.add_argument("--model", help="the agent's model id (kind anthropic; also the command agent's name in the ledger)")
    sp.add_argument("--agent-command", help='kind command: the agent\'s argv as one string, e.g. "claude -p"')
    sp.add_argument("--ratifier", action="append", metavar="NAME=PUBKEY_FILE",
                    help="a person who may ratify amendments, with their SSH public key (repeatable)")
    sp.add_argument("--profile", default="cpu", metavar="NAME",
                    help="cpu (default: a 2-core machine, 60 s runs) or gpu (one NVIDIA GPU, 300 s runs, "
                         "an autoresearch-sized model; docs/gpu.md)")
    sp.set_defaults(func=cmd_init)

    lg = sub.add_parser("ledger", help="the lab's tamper-evident record")
    lsub = lg.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp = lsub.add_parser("note", help="annotate the record (an operator's or auditor's note)")
    lab_arg(sp)
    sp.add_argument("--by", required=True, help="who writes the note")
    sp.add_argument("text", nargs="+")
    sp.set_defaults(func=cmd_ledger_note)
    sp = lsub.add_parser("verify", help="recompute the hash chain; exit 1 naming the first bad seq")
    lab_arg(sp)
    sp.set_defaults(func=cmd_ledger_verify)

    sp = lsub.add_parser("query", help="one read-only SELECT over the events and auditor views (works during a session)")
    lab_arg(sp)
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    sp.add_argument("--limit", type=int, default=10000)
    sp.add_argument("sql", nargs="+")
    sp.set_defaults(func=cmd_ledger_query)
    sp = lsub.add_parser("report", help="a lab notebook (Markdown) and a progress chart (PNG)")
    lab_arg(sp)
    sp.add_argument("--session", help="session id (default: the latest)")
    sp.add_argument("--out", help="output directory (default: LAB/.charter/reports)")
    sp.set_defaults(func=cmd_ledger_report)
    sp = lsub.add_parser("export", help="every auditor view as parquet, csv or tsv files")
    lab_arg(sp)
    sp.add_argument("--format", choices=["parquet", "csv", "tsv"], required=True)
    sp.add_argument("--session", help="session for results.tsv (default: the latest)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_ledger_export)

    sp = sub.add_parser("prepare", help="prepare the lab's data and tokenizer and pin their hashes")
    lab_arg(sp)
    sp.add_argument("--by", default=os.environ.get("USER", "operator"))
    sp.add_argument("--source", help="corpus: debian (default, offline), climbmix (network) or a directory of text/parquet")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("run", help="run a governed session (creates and prepares ./lab if there is none)")
    lab_arg(sp)
    sp.add_argument("--tag", help="session tag; the session works on branch charter/TAG")
    sp.add_argument("--max-experiments", type=int, help="stop after N experiments (baseline not counted)")
    sp.add_argument("--workers", type=positive_int, metavar="N",
                    help="experiments in flight at once, on Ray (default: the constitution's scale.workers)")
    sp.add_argument("--proposer", choices=available(), help="default: the constitution's proposer.kind")
    sp.add_argument("--queue", help="directory of queued proposals (for --proposer queue)")
    sp.add_argument("--seed", type=int, help="offline proposer seed (default: the constitution's)")
    sp.add_argument("--source", help="corpus for a lab's first prepare (see charter prepare)")
    sp.add_argument("--by", default=os.environ.get("USER", "operator"))
    out = sp.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print only the start line and the summary")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per ledger event on stdout, for scripts")
    sp.set_defaults(func=cmd_run)

    tui_cli.add_parser(sub)

    sp = sub.add_parser("status", help="gate state and why, the session, the experiment in flight, budgets, best")
    lab_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    for op, helptext in [("pause", "hold the gate at FREEZE until resumed"),
                         ("stop", "stop the session now (gate STOP; needs `charter resume`)"),
                         ("resume", "clear STOP or a pause (a person, with a reason)")]:
        sp = sub.add_parser(op, help=helptext)
        lab_arg(sp)
        sp.add_argument("--by", required=op == "resume", default=os.environ.get("USER", "operator"), help="who")
        sp.add_argument("--reason", required=op == "resume", help="why (recorded in the ledger)")
        if op == "resume":  # from STOP, where the lab requires signatures: a ratifier's
            signed = sp.add_mutually_exclusive_group()
            signed.add_argument("--key", help="your SSH private key: sign this resume from STOP")
            signed.add_argument("--signature", help="a signature made elsewhere (ssh-keygen -Y sign -n charter-resume)")
        sp.set_defaults(func=lambda a, op=op: _operator(a, op))
    amendments_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    by = getattr(args, "by", None)
    if isinstance(by, str) and person_refusal(by):
        print(f"charter: --by {person_refusal(by)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except constitution.ConstitutionError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"charter: {e}", file=sys.stderr)
        return 2
    except (LabError, LedgerError, GitError, SessionRefused, PrepareError, ProposerError, LiveError, OperatorRefused,
            AmendmentRefused) as e:
        print(f"charter: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("charter: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
