"""`charter tui [--lab DIR] [--by NAME] [--refresh S] [--serve [--host H] [--port N]]`: the console.

`add_parser(subparsers)` is the one hook `controller.cli.build_parser` calls; the console itself
is `tui.app.CharterApp`. NAME defaults to the login user and must name a person
(`controller.policy.identity.person_refusal`): the console's pause, stop, resume and notes are
ledgered with it. `--serve` serves the same console to a browser through textual-serve (an
optional dependency, `pip install -e ".[serve]"`): every browser tab runs its own console process
acting as NAME, so it binds to 127.0.0.1 unless `--host` says otherwise, and says so when it does.
Each of those processes is the server's direct child and asks the kernel to kill it when the
server dies (`--served-by PID`), so no console outlives the server that showed it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import sys

from controller.policy.identity import person_refusal

MIN_REFRESH_S = 0.2


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.app import CharterApp, default_operator  # textual loads only for this command
    from controller.workspace.lab import find_lab

    by = args.by or default_operator()
    refusal = person_refusal(by)
    if refusal:
        print(f"charter: --by {refusal}", file=sys.stderr)
        return 2
    if args.refresh < MIN_REFRESH_S:
        print(f"charter: --refresh must be at least {MIN_REFRESH_S} s, got {args.refresh:g}", file=sys.stderr)
        return 2
    if args.served_by is not None and not die_with(args.served_by):
        return 0  # the server that started this console is already gone
    lab = find_lab(args.lab)
    if args.serve:
        return serve(lab.root, by, args)
    CharterApp(lab, by, refresh_s=args.refresh).run()
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")
PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (a served console is read-only
    state plus commands already ledgered, so nothing is lost); False if `parent` is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the parent check below still catches a server already gone
    return os.getppid() == parent  # checked after the prctl: a parent that died before it is seen here


def serve(lab_root, by: str, args: argparse.Namespace) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        print('charter: --serve needs textual-serve: pip install -e ".[serve]"', file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"charter: --port must be between 1 and 65535, got {args.port}", file=sys.stderr)
        return 2
    # `exec`: the shell textual-serve starts becomes the console, so the console is our child
    # `--by=NAME` keeps a name that starts with "-" a value, not an option
    command = "exec " + shlex.join([sys.executable, "-m", "controller.cli", "tui", f"--lab={lab_root}", f"--by={by}",
                                    f"--refresh={args.refresh}", f"--served-by={os.getpid()}"])
    print(f"charter: serving the console of {lab_root} at http://{args.host}:{args.port} as person:{by} (Ctrl-C ends it)")
    if args.host not in LOOPBACK:
        print(f"charter: warning: {args.host} is reachable from other machines; whoever opens the page can pause, "
              f"stop and resume as {by}", file=sys.stderr)
    Server(command, host=args.host, port=args.port, title=f"charter · {lab_root.name}").serve()
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    sp = subparsers.add_parser("tui", help="the operator's console: gate, experiment in flight, budgets, chart; pause/stop/resume/note/query")
    sp.add_argument("--lab", help="lab directory (default: $CHARTER_LAB, then ./lab)")
    sp.add_argument("--by", help="who acts from the console (default: the login user)")
    sp.add_argument("--refresh", type=float, default=1.0, help="seconds between status reads (default 1)")
    sp.add_argument("--serve", action="store_true", help="serve the console to a browser (textual-serve)")
    sp.add_argument("--host", default="127.0.0.1", help="with --serve: the address to bind (default 127.0.0.1, this machine only)")
    sp.add_argument("--port", type=int, default=8000, help="with --serve: the port (default 8000)")
    sp.add_argument("--served-by", type=int, default=None, help=argparse.SUPPRESS)  # set by --serve for its consoles
    sp.set_defaults(func=cmd_tui)
    return sp
