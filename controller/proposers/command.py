"""The command proposer: any external coding-agent CLI (`claude -p`, `codex exec`, `aider
--message`) run as a proposer, on a scratch copy of the lab, in the training sandbox.

Each step writes a fresh copy holding the editable files, the readable ones (`proposer.readable`:
program.md and prepare.py by default) and the brief (`brief.prompt_document`) as
`.charter-prompt.md`, whose path is appended to `proposer.command`. The command runs there under
bubblewrap as the sandbox uid: the copy is its working directory and its only writable place
besides a private /tmp; the lab, its ledger and `.charter/`, the data cache and the rest of the
host are not there; no network unless `proposer.network`; its whole tree is killed at the smaller
of `proposer.deadline_seconds` and the step's deadline. The proposal is the diff of the copy:
changed, new or deleted editable files. Anything else changed, a link or special file anywhere, or
a file over 4 MB makes it `malformed`, which the controller records as a refusal. The agent's
output is untrusted: never parsed, only its bounded tail kept in a failure's one-line reason. A
step that fails (no sandbox, a non-zero exit, killed at a limit, nothing changed) is a
`ProposerResult.failure`, never an exception.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from constitution import Constitution
from controller.execution import sandbox
from controller.execution.runner import cache_dir
from controller.execution.sandbox import SandboxResult, SandboxSpec
from controller.policy.harm_test import path_problem
from controller.proposers.base import AgentUsage, Proposal, ProposalContext, ProposerResult
from controller.proposers.brief import clean, prompt_document
from controller.proposers.registry import ProposerError, ProposerOptions

PROMPT_FILE = ".charter-prompt.md"
DESCRIPTION_FILE = ".charter-description"
HYPOTHESIS_FILE = ".charter-hypothesis"
LESSON_FILE = ".charter-lesson"  # the agent's one-line lesson: its journal entry, as with `submit(lesson=)`
CONTROL_FILES = frozenset({PROMPT_FILE, DESCRIPTION_FILE, HYPOTHESIS_FILE, LESSON_FILE})  # ours or the agent's notes: not the lab's

MAX_FILE_BYTES = 4 * 1024 * 1024  # an editable file larger than this is refused, as a queue entry's is
MAX_ENTRIES = 10_000              # files the copy may hold after the run; beyond it the step is malformed
AGENT_MAX_FILE_MB = 64            # RLIMIT_FSIZE: room for an agent's caches in /tmp, not for filling the disk
NOTE_BYTES = 4096                 # what is read of .charter-description / .charter-hypothesis
TAIL_CHARS = 600                  # of the agent's output, in a failure's reason
NAMED_PATHS = 10                  # paths named in a malformed proposal's reason
# The session abandons a step at its deadline; the kill, the drain and the diff must fit before it.
DEADLINE_MARGIN_S = 2.0
MIN_RUN_S = 1.0
# With the network on, what an agent needs to reach its API: name lookups and TLS roots (read-only).
# Its settings (an API key) come only from the variables `proposer.env` names: an allow-list.
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/ssl/certs", "/usr/share/ca-certificates")


def is_editable(rel: str, editable: list[str]) -> bool:
    """The harm test's scope rule: the path is an editable entry or inside one."""
    return path_problem(rel, editable) is None


def write_copy(root: Path, ctx: ProposalContext, prompt: str, agent_uid: int | None) -> dict[str, bytes]:
    """The scratch copy: readable files, then editable ones (an editable path wins), then the
    prompt. Returns what was put in, path -> bytes. Directories and editable files belong to
    `agent_uid` (the sandbox's) so the agent can edit in place; the rest stays ours, read-only."""
    put = {rel: text.encode("utf-8", "replace") for rel, text in {**ctx.readable, **ctx.files}.items()}
    put[PROMPT_FILE] = prompt.encode("utf-8", "replace")
    own: list[Path] = [root]
    for rel, data in put.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        own += [p for p in path.parents if root in p.parents]
        path.write_bytes(data)
        mine = rel != PROMPT_FILE and is_editable(rel, ctx.editable)
        path.chmod(0o644 if mine else 0o444)
        if mine:
            own.append(path)
    if agent_uid is not None:
        for p in dict.fromkeys(own):
            os.chown(p, agent_uid, agent_uid, follow_symlinks=False)
    return put


def walk(root: Path) -> tuple[dict[str, os.stat_result], str | None]:
    """Every non-directory entry under root, path -> lstat; links are entries, never followed.
    The second value says why the walk stopped early (too many entries), else None."""
    found: dict[str, os.stat_result] = {}
    stack, dirs = [root], 0
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    dirs += 1
                    if dirs > MAX_ENTRIES:
                        return found, f"the agent left more than {MAX_ENTRIES} directories in its working directory"
                    continue
                found[Path(entry.path).relative_to(root).as_posix()] = entry.stat(follow_symlinks=False)
                if len(found) > MAX_ENTRIES:
                    return found, f"the agent left more than {MAX_ENTRIES} files in its working directory"
    return found, None


def read_plain(path: Path, limit: int) -> bytes | None:
    """At most `limit` bytes of a plain file, opened without following a link; None if it isn't one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "device or special file"


def changes(root: Path, before: dict[str, bytes], editable: list[str]) -> tuple[dict[str, bytes | None], list[str], list[str]]:
    """What the agent did to the copy: (editable path -> new bytes or None for deleted, paths
    changed outside the editable ones, other problems: links, special files, sizes)."""
    try:
        after, overflow = walk(root)
    except OSError as e:  # at level "none" the agent could even remove its directory
        return {}, [], [f"the agent's working directory could not be read ({type(e).__name__})"]
    files: dict[str, bytes | None] = {}
    outside, problems = [], [overflow] if overflow else []
    for rel, st in sorted(after.items()):
        if rel in CONTROL_FILES:
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{clean(rel, 100)} is a {_kind(st.st_mode)}")
        elif not is_editable(rel, editable):
            old = before.get(rel)
            if old is None or st.st_size != len(old) or read_plain(root / rel, len(old) + 1) != old:
                outside.append(rel)
        elif st.st_size > MAX_FILE_BYTES:
            problems.append(f"{clean(rel, 100)} is larger than {MAX_FILE_BYTES >> 20} MB")
        else:
            data = read_plain(root / rel, MAX_FILE_BYTES + 1)
            if data is None:
                problems.append(f"{clean(rel, 100)} could not be read as a plain file")
            elif data != before.get(rel):
                files[rel] = data
    for rel in sorted(set(before) - set(after) - CONTROL_FILES):
        if is_editable(rel, editable):
            files[rel] = None
        else:
            outside.append(rel)
    return files, outside, problems


def malformed_reason(outside: list[str], problems: list[str]) -> str:
    """One line naming what made the step's changes unusable."""
    parts = list(problems)
    if outside:
        named = ", ".join(clean(p, 100) for p in outside[:NAMED_PATHS])
        more = f" and {len(outside) - NAMED_PATHS} more" if len(outside) > NAMED_PATHS else ""
        parts.insert(0, f"the agent changed files outside the editable paths: {named}{more}")
    return "; ".join(parts)


def note(root: Path, name: str) -> str:
    """The first non-empty line of the agent's note file, cleaned; "" when absent or a link."""
    data = read_plain(root / name, NOTE_BYTES) or b""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return clean(lines[0]) if lines else ""


def said(result: SandboxResult) -> str:
    """The tail of the agent's output, as an untrusted quote for a failure's reason."""
    tail = clean(result.log_tail[-TAIL_CHARS:], TAIL_CHARS)
    return f"; its output ended: {tail}" if tail else ""


def run_failure(result: SandboxResult, limit: float, memory_mb: int) -> str | None:
    """Why the run itself failed (a limit, an exit code), or None when it exited 0."""
    if result.timed_out:
        return f"the agent was killed at its time limit of {limit:.1f} s{said(result)}"
    if result.memory_killed:
        return f"the agent exceeded its {memory_mb} MB memory limit and was killed{said(result)}"
    if result.kill_reason:
        return f"the agent was killed at its {result.kill_reason} limit{said(result)}"
    if result.returncode is None:
        return f"the agent could not be started{said(result)}"
    if result.returncode != 0:
        return f"the agent exited with code {result.returncode}{said(result)}"
    return None


def named_files(argv: list[str]) -> tuple[list[str], list[Path]]:
    """The command with argv[0] found on the controller's PATH, and what the sandbox shows of it
    read-only: the program, and the script it runs when the first argument is a file's absolute
    path (`python /opt/agent.py`). Nothing else the command names is shown: a path in a later
    argument is the agent's business to reach, and a directory could hold a lab."""
    # the program at its real path: a symlinked CLI (/usr/local/bin/claude) is bound and run as its target
    found = shutil.which(argv[0])
    argv = [os.path.realpath(found) if found else argv[0], *argv[1:]]
    return argv, [Path(a) for a in argv[:2] if a.startswith("/") and Path(a).is_file()]


class CommandProposer:
    name = "command"

    def __init__(self, rules: Constitution):
        self.rules = rules
        self.command = list(rules.proposer.command)
        self.program = Path(self.command[0]).name
        self.model = rules.proposer.model or self.program  # the ledger's actor: agent:<model>
        self._detected: tuple[str, str] | None = None

    def level(self) -> tuple[str, str | None]:
        """Always bubblewrap, or why the agent can't start. Unlike training, an agent never runs
        weaker (`sandbox.level = "none"` or `allow_weaker` do not apply): unsandboxed it would run as
        the controller, with the ledger, the data and the network in reach."""
        if self._detected is None:
            self._detected = sandbox.detect_level()
        level, detail = self._detected
        if level == "bubblewrap":
            return level, None
        return "", (f"the command proposer runs agents only under bubblewrap, which can't run here ({detail}); "
                    "the agent was not started")

    def time_limit(self, ctx: ProposalContext) -> float:
        limit = self.rules.proposer.deadline_seconds
        if ctx.deadline is not None:
            limit = min(limit, ctx.deadline - time.time() - DEADLINE_MARGIN_S)
        return limit

    def spec(self, scratch: Path, home: Path, level: str, limit: float, protected: tuple[Path, ...] = ()) -> SandboxSpec:
        argv, shown = named_files(self.command)
        network = self.rules.proposer.network
        env = sandbox.minimal_env(Path("/tmp") if level == "bubblewrap" else home, {"PYTHONDONTWRITEBYTECODE": "1"})
        env |= {k: os.environ[k] for k in self.rules.proposer.env if k in os.environ}
        shown += [Path(p) for p in self.rules.proposer.program_paths if Path(p).exists()]
        if network:
            shown += [Path(p) for p in NETWORK_FILES if Path(p).exists()]
        return SandboxSpec(
            argv=argv + [str(scratch / PROMPT_FILE)], cwd=scratch, writable=[scratch], readable=shown,
            # not in the allow-list anyway; a deny in case a shown tree (program_paths) holds them
            hidden=[cache_dir(), *protected],
            env=env, timeout_s=limit, network=network,
            memory_mb=self.rules.budgets.experiment.memory_hard_mb,
            max_processes=self.rules.sandbox.max_processes,
            max_file_mb=min(self.rules.sandbox.max_file_mb, AGENT_MAX_FILE_MB),
        )

    def propose(self, ctx: ProposalContext) -> ProposerResult:
        level, refused = self.level()
        if refused:
            return ProposerResult(None, failure=refused)
        limit = self.time_limit(ctx)
        if limit < MIN_RUN_S:
            return ProposerResult(None, failure=f"no time left for the agent ({limit:.1f} s before the step's deadline)")
        base = Path(tempfile.mkdtemp(prefix="charter-agent-", dir=ctx.workdir))
        try:
            scratch, home = base / "lab", base / "home"
            scratch.mkdir()
            home.mkdir()
            agent_uid = sandbox.SANDBOX_UID if level == "bubblewrap" and os.geteuid() == 0 else None
            before = write_copy(scratch, ctx, prompt_document(ctx, self.rules), agent_uid)
            try:
                result = sandbox.run(self.spec(scratch, home, level, limit, ctx.protected), level)
            except (sandbox.SandboxUnavailable, ValueError) as e:
                return ProposerResult(None, failure=f"the agent's sandbox could not be set up: {clean(str(e))}")
            usage = self.usage(result)
            failed = run_failure(result, limit, self.rules.budgets.experiment.memory_hard_mb)
            if failed:
                return ProposerResult(None, usage=usage, failure=failed)
            return dataclasses.replace(self.result(scratch, before, ctx, result), usage=usage)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def usage(self, run: SandboxResult) -> AgentUsage:
        """One agent_call row per run of the CLI: its identity, time and how it ended. Its own token
        spend is the provider's to count: Charter can't see it, so token and dollar budgets can't
        bind a command agent."""
        ended = run.kill_reason and f"killed: {run.kill_reason}" or f"exit {run.returncode}"
        return AgentUsage(model=self.model, calls=1, seconds=round(run.wall_seconds, 3), stop_reason=ended,
                          latency_ms=round(run.wall_seconds * 1000, 1))

    def result(self, scratch: Path, before: dict[str, bytes], ctx: ProposalContext, run: SandboxResult) -> ProposerResult:
        """The proposal the copy's diff makes, or the failure of a run that changed nothing."""
        files, outside, problems = changes(scratch, before, ctx.editable)
        description = note(scratch, DESCRIPTION_FILE) or f"{self.program} changed {', '.join(sorted(files)) or 'files'}"
        source = f"command:{self.program}"
        if outside or problems:
            return ProposerResult(Proposal(description, source=source, malformed=malformed_reason(outside, problems)))
        if not files:
            return ProposerResult(None, failure=f"the agent changed nothing{said(run)}")
        return ProposerResult(Proposal(description, note(scratch, HYPOTHESIS_FILE), files=files, source=source,
                                       lesson=clean(note(scratch, LESSON_FILE), 300)))


def build(options: ProposerOptions) -> CommandProposer:
    if not options.rules.proposer.command:
        raise ProposerError('the command proposer needs proposer.command, the agent\'s argv (e.g. ["claude", "-p"])')
    return CommandProposer(options.rules)
