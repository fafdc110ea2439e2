"""The harm test: a static judgement of a proposed change before anything of it runs.

A proposal is a list of `Change`s to lab files. `harm_test(changes, scope)` returns the reasons to
refuse it (an empty list means it may be committed and run): paths outside the constitution's
editable scope, symlinks, binary content, a diff over the size limit, Python that does not parse,
constructs of the forbidden kinds the scope names (network, subprocess, dynamic_import, file_write,
data_access, timing, evaluation), found by walking the `ast` of the new text with import aliases
resolved, and the constitution's hard-constraint regexes. Only what a change *adds* is judged: a
finding whose exact source is already present in the old text as often is not refused, so code the
baseline already has (such as the Flash Attention 3 download through `kernels`) stays legal. The
test is pure (no processes, files or git) and never raises; it is a first line of defence only,
backed by the bubblewrap sandbox, which must catch whatever static reading cannot.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

from constitution.schema import Scope

EVIDENCE_CHARS = 120
MAX_NAME_DEPTH = 4  # how far a variable is followed back through its assignments


@dataclass(frozen=True)
class Change:
    path: str  # lab-relative posix path
    status: str  # "A" added, "M" modified, "D" deleted
    old_text: str | None  # None when added (or binary)
    new_text: str | None  # None when deleted (or binary)
    is_symlink: bool = False  # the new file is a symlink
    mode_change: bool = False  # executable bit etc. changed


@dataclass(frozen=True)
class Refusal:
    rule: str  # "scope", "diff_size", "symlink", "binary", "syntax", a forbidden rule, "hard_constraint:<name>"
    path: str | None
    line: int | None
    evidence: str
    hard: bool = False  # a hard-constraint violation: the gate goes to STOP


# ---------------------------------------------------------------------------
# What each forbidden rule names. A qualified name matches an entry when it is the entry, lies
# inside it ("subprocess.run" in "subprocess"), or, for entries ending in "*", starts with it.

NETWORK = [
    "socket", "ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "ftplib",
    "smtplib", "poplib", "imaplib", "nntplib", "telnetlib", "xmlrpc", "socketserver", "websocket",
    "websockets", "paramiko", "grpc", "zmq", "pycurl", "webbrowser", "huggingface_hub", "kernels",
    "datasets", "torch.hub", "torch.distributed.rpc", "asyncio.open_connection",
    "asyncio.start_server", "asyncio.open_unix_connection", "asyncio.start_unix_server",
]
SUBPROCESS = [
    "subprocess", "os.system", "os.popen", "os.exec*", "os.spawn*", "os.fork", "os.forkpty",
    "os.posix_spawn", "os.posix_spawnp", "os.kill", "os.killpg", "os.startfile", "posix", "pty",
    "multiprocessing", "torch.multiprocessing", "concurrent.futures.ProcessPoolExecutor",
    "concurrent.futures.process", "commands", "ctypes", "_ctypes", "cffi", "signal.pthread_kill",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell", "asyncio.subprocess",
    "_posixsubprocess", "pexpect", "sh", "plumbum", "distutils.spawn",
    "torch.utils.cpp_extension",
]
DYNAMIC_IMPORT = [
    "__import__", "importlib", "imp", "runpy", "zipimport", "pkgutil", "code", "codeop", "exec",
    "eval", "compile", "globals", "sys.modules", "sys.path", "sys.meta_path",
    "sys.path_hooks", "sys.path_importer_cache", "sys._getframe", "inspect.currentframe",
    "inspect.stack", "types.FunctionType", "types.CodeType", "types.LambdaType", "pickle.load",
    "pickle.loads", "pickle.Unpickler", "_pickle", "marshal", "dill", "cloudpickle", "shelve",
    "joblib.load", "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
    "codecs", "operator.attrgetter", "operator.methodcaller",
]
TIMING = [
    "signal.alarm", "signal.signal", "signal.setitimer", "signal.siginterrupt",
    "signal.pthread_sigmask", "sys.settrace", "sys.setprofile", "threading.settrace",
    "threading.setprofile",
]
DATA_ACCESS = [
    "pyarrow.parquet", "pyarrow.dataset", "fastparquet", "pandas.read_parquet", "polars.read_parquet",
    "polars.scan_parquet",
]
RULE_NAMES = {
    "network": NETWORK, "subprocess": SUBPROCESS, "dynamic_import": DYNAMIC_IMPORT,
    "timing": TIMING, "data_access": DATA_ACCESS,
}
# builtins that must not be handed around as values: `f = getattr; f(os, ...)` escapes alias tracking
INDIRECT_BUILTINS = {"getattr", "setattr", "delattr", "__import__", "eval", "exec", "compile", "globals", "vars"}
# attribute names that reach interpreter internals (sandbox-escape classics)
ESCAPE_ATTRIBUTES = {
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__loader__",
    "__import__", "__setattr__", "__delattr__", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "cr_frame",
    "ag_frame", "tb_frame",
}
# names from prepare a training script has no business with: validation, evaluation, raw data paths
PREPARE_PRIVATE = re.compile(r"val|eval|manifest|data_dir|cache_dir|split|verify|^_", re.IGNORECASE)
PREPARE_METRIC_CALL = re.compile(r"eval|val|bpb|bits_per_byte", re.IGNORECASE)
METRIC_FUNCTION_NAME = re.compile(r"^evaluate|val_bpb|bits_per_byte", re.IGNORECASE)
FAKE_METRIC_LINE = re.compile(r"^\s*val_bpb", re.IGNORECASE | re.MULTILINE)
# monkeypatching these torch namespaces is ordinary tuning (tf32, compile caches), not tampering
TORCH_CONFIG_PREFIXES = ("torch.backends", "torch._dynamo.config", "torch._inductor.config",
                         "torch._functorch.config", "torch.fx.experimental._config")

# ---- file writes ------------------------------------------------------------------------------
# callables that open a file: qualified name -> (path arg index, mode arg index, default mode)
FILE_OPENERS = {
    "open": (0, 1, "r"), "io.open": (0, 1, "r"), "io.FileIO": (0, 1, "r"), "os.fdopen": (0, 1, "r"),
    "gzip.open": (0, 1, "rb"), "gzip.GzipFile": (0, 1, "rb"), "bz2.open": (0, 1, "rb"),
    "bz2.BZ2File": (0, 1, "r"), "lzma.open": (0, 1, "rb"), "lzma.LZMAFile": (0, 1, "r"),
    "tarfile.open": (0, 1, "r"), "tarfile.TarFile": (0, 1, "r"), "zipfile.ZipFile": (0, 1, "r"),
    "dbm.open": (0, 1, "r"), "h5py.File": (0, 1, "r"), "numpy.memmap": (0, 2, "r+"),
    "numpy.lib.format.open_memmap": (0, 1, "r+"),
}
# callables that always write: qualified name -> (path arg positions, path keywords, path required)
# an empty position list means "never allowed" (links out of the run directory)
FILE_WRITERS = {
    **{f"os.{n}": ([0], ["path"], True) for n in (
        "remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "chmod", "lchmod", "chown",
        "lchown", "truncate", "mkfifo", "mknod", "utime", "chdir", "open", "chroot", "chflags")},
    "os.rename": ([0, 1], ["src", "dst"], True), "os.renames": ([0, 1], ["old", "new"], True),
    "os.replace": ([0, 1], ["src", "dst"], True), "os.symlink": ([], [], True),
    "os.link": ([], [], True), "os.putenv": ([], [], False),
    **{f"shutil.{n}": ([1], ["dst"], True) for n in ("copy", "copy2", "copyfile", "copytree", "copymode", "copystat")},
    "shutil.move": ([0, 1], ["src", "dst"], True), "shutil.rmtree": ([0], ["path"], True),
    "shutil.chown": ([0], ["path"], True), "shutil.make_archive": ([0], ["base_name"], True),
    "shutil.unpack_archive": ([1], ["extract_dir"], True),
    "torch.save": ([1], ["f"], True), "torch.jit.save": ([1], ["f"], True),
    "torch.export.save": ([1], ["f"], True), "torch.onnx.export": ([2], ["f"], True),
    "numpy.save": ([0], ["file"], True), "numpy.savez": ([0], ["file"], True),
    "numpy.savez_compressed": ([0], ["file"], True), "numpy.savetxt": ([0], ["fname"], True),
    "safetensors.torch.save_file": ([1], ["filename"], True),
    "safetensors.numpy.save_file": ([1], ["filename"], True),
    "pyarrow.parquet.write_table": ([1], ["where"], True),
    "sqlite3.connect": ([0], ["database"], True), "logging.FileHandler": ([0], ["filename"], True),
    "logging.basicConfig": ([], ["filename"], False),
    **{f"tempfile.{n}": ([], ["dir"], True) for n in (
        "mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory",
        "SpooledTemporaryFile")},
}
# methods that write whatever object they are called on (pathlib.Path, numpy, pandas, matplotlib)
RECEIVER_WRITE_METHODS = {"write_text", "write_bytes", "unlink", "mkdir", "rmdir", "touch",
                          "symlink_to", "hardlink_to", "link_to", "chmod", "lchmod"}
ARGUMENT_WRITE_METHODS = {"tofile", "to_csv", "to_parquet", "to_json", "to_pickle", "to_feather",
                          "to_hdf", "to_excel", "savefig", "save_pretrained"}
WRITE_MODE_CHARS = set("wax+")
RUN_DIR_MARKERS = ("RUN_DIR", "run_dir")
# a written file with one of these suffixes could be imported by the evaluator's worker
IMPORTABLE_SUFFIXES = (".py", ".pyc", ".pth", ".so")

# modules a file at the lab root must not shadow (the lab root is sys.path[0] of train and evaluate)
SHADOWED_MODULES = set(getattr(sys, "stdlib_module_names", ())) | {
    "torch", "numpy", "pyarrow", "tiktoken", "rustbpe", "kernels", "prepare", "sitecustomize",
    "usercustomize", "triton", "pandas", "typing_extensions",
}
BUILTIN_NAMES = set(dir(builtins))
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
CODING_COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
UTF8_NAMES = {"utf-8", "utf8", "utf_8", "ascii", "us-ascii", "utf-8-sig"}


def matches(qualified: str, entries: list[str]) -> bool:
    for entry in entries:
        if entry.endswith("*"):
            if qualified.startswith(entry[:-1]):
                return True
        elif qualified == entry or qualified.startswith(entry + "."):
            return True
    return False


# ---------------------------------------------------------------------------
# Public API


def diff_line_count(changes: list[Change]) -> int:
    """Added plus removed lines over all changes (a binary side counts as empty)."""
    total = 0
    for change in changes:
        old = (change.old_text or "").splitlines()
        new = (change.new_text or "").splitlines()
        # strip the common head and tail first: cheap, and keeps difflib's work to the edited middle
        head = 0
        while head < len(old) and head < len(new) and old[head] == new[head]:
            head += 1
        tail = 0
        while tail < len(old) - head and tail < len(new) - head and old[-1 - tail] == new[-1 - tail]:
            tail += 1
        old_mid, new_mid = old[head:len(old) - tail], new[head:len(new) - tail]
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_mid, new_mid).get_opcodes():
            if tag != "equal":
                total += (i2 - i1) + (j2 - j1)
    return total


def harm_test(changes: list[Change], scope: Scope) -> list[Refusal]:
    """Every reason to refuse the proposal; an empty list means it passes."""
    refusals: list[Refusal] = []
    for change in changes:
        try:
            refusals.extend(_judge_change(change, scope))
        except Exception as e:  # never raise: an input we cannot judge is refused, not run
            refusals.append(Refusal("syntax", _safe_path(change), None, f"cannot be judged ({type(e).__name__})"))
    try:
        lines = diff_line_count(changes)
    except Exception as e:
        refusals.append(Refusal("diff_size", None, None, f"diff cannot be measured ({type(e).__name__})"))
    else:
        if lines > scope.max_diff_lines:
            refusals.append(Refusal("diff_size", None, None, f"{lines} lines changed > max {scope.max_diff_lines}"))
    return refusals


# ---------------------------------------------------------------------------
# Paths, content and hard constraints


def _safe_path(change: Change) -> str | None:
    return change.path if isinstance(change.path, str) else None


def _path_problem(path: str, editable: list[str]) -> str | None:
    """Why `path` may not be touched, or None when it is inside an editable entry."""
    if not path or "\x00" in path or "\\" in path or path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        return f"{path!r} is not a lab-relative path"
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return f"{path!r} leaves the lab"
    if ".git" in parts or ".charter" in parts:
        return f"{path!r} is inside git's or Charter's own files"
    normalized = PurePosixPath(*parts) if parts else PurePosixPath(".")
    for entry in editable:
        allowed = PurePosixPath(entry)
        if normalized == allowed or allowed in normalized.parents:
            return None
    return f"{path} is not editable (editable: {', '.join(editable)})"


def _shadowed_module(path: str) -> str | None:
    """The importable module a new file at the lab root would shadow, if any."""
    parts = PurePosixPath(path).parts
    if not parts:
        return None
    first = parts[0]
    if len(parts) == 1:
        if first.endswith(".pth"):
            return first
        if not first.endswith(".py"):
            return None
        first = first[:-3]
    return first if first in SHADOWED_MODULES else None


def _content_problem(text: str) -> str | None:
    """Why `text` is not judgeable source text, or None."""
    if "\x00" in text:
        return "contains null bytes"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if BIDI_CONTROLS.search(text):
        return "contains bidirectional control characters (display differs from code)"
    return None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _hard_constraint_refusals(path: str, old: str, new: str, scope: Scope) -> list[Refusal]:
    refusals = []
    for constraint in scope.hard_constraints:
        pattern = re.compile(constraint.pattern, re.MULTILINE)
        old_matches = Counter(m.group(0) for m in pattern.finditer(old))
        new_matches = list(pattern.finditer(new))
        if len(new_matches) <= sum(old_matches.values()):
            continue
        # point at the first match the old text does not account for
        culprit = new_matches[-1]
        for m in new_matches:
            if old_matches[m.group(0)] > 0:
                old_matches[m.group(0)] -= 1
            else:
                culprit = m
                break
        line = _line_of(new, culprit.start())
        evidence = new.split("\n")[line - 1].strip() or culprit.group(0)
        refusals.append(Refusal(f"hard_constraint:{constraint.name}", path, line,
                                _truncate(evidence), hard=True))
    return refusals


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EVIDENCE_CHARS else text[:EVIDENCE_CHARS - 3] + "..."


def _judge_change(change: Change, scope: Scope) -> list[Refusal]:
    path = change.path
    if not isinstance(path, str):
        return [Refusal("scope", None, None, f"path {path!r} is not a string")]
    refusals = []
    if change.is_symlink and change.status != "D":
        refusals.append(Refusal("symlink", path, None, f"{path} would be a symlink"))
    problem = _path_problem(path, list(scope.editable))
    if problem:
        return refusals + [Refusal("scope", path, None, problem)]
    if change.status == "D" or refusals:
        return refusals
    if change.mode_change:
        refusals.append(Refusal("scope", path, None, f"{path}: file mode changed (only content edits are allowed)"))
    if change.status == "A":
        shadowed = _shadowed_module(path)
        if shadowed:
            refusals.append(Refusal("scope", path, None, f"new file {path} would shadow module {shadowed!r}"))
    new = change.new_text
    if not isinstance(new, str):
        return refusals + [Refusal("binary", path, None, f"{path}: binary or undecodable content")]
    problem = _content_problem(new)
    if problem:
        return refusals + [Refusal("binary", path, None, f"{path}: {problem}")]
    old = change.old_text if isinstance(change.old_text, str) and not _content_problem(change.old_text) else ""
    if path.endswith((".py", ".pyw", ".pyi")):
        refusals.extend(_python_refusals(path, old, new, scope))
    refusals.extend(_hard_constraint_refusals(path, old, new, scope))
    return refusals


# ---------------------------------------------------------------------------
# Python: parse, find forbidden constructs, keep only those the change adds


def _parse(text: str) -> ast.Module:
    return ast.parse(text[1:] if text.startswith("\ufeff") else text)


def _python_refusals(path: str, old: str, new: str, scope: Scope) -> list[Refusal]:
    for number, line in enumerate(new.splitlines()[:2], start=1):
        cookie = CODING_COOKIE.match(line)
        if cookie and cookie.group(1).lower() not in UTF8_NAMES:
            return [Refusal("syntax", path, number,
                            f"source encoding {cookie.group(1)!r}: only UTF-8 source is judged")]
    try:
        tree = _parse(new)
    except SyntaxError as e:
        return [Refusal("syntax", path, e.lineno, _truncate(f"{e.msg}: {(e.text or '').strip()}"))]
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        return [Refusal("syntax", path, None, f"does not parse ({type(e).__name__})")]
    forbidden = set(scope.forbidden)
    try:
        new_findings = _Analyzer(new, tree).run()
    except RecursionError:
        return [Refusal("syntax", path, None, "code nested too deeply to judge")]
    try:
        old_findings = _Analyzer(old, _parse(old)).run() if old else []
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        old_findings = []  # a baseline that does not parse grants nothing
    already_there = Counter(f.key for f in old_findings)
    refusals, seen = [], set()
    for finding in new_findings:
        if finding.rule not in forbidden:
            continue
        if already_there[finding.key] > 0:
            already_there[finding.key] -= 1
            continue
        if (finding.rule, finding.line) in seen:
            continue
        seen.add((finding.rule, finding.line))
        refusals.append(Refusal(finding.rule, path, finding.line, _truncate(finding.evidence)))
    return refusals


@dataclass(frozen=True)
class _Finding:
    rule: str
    line: int
    evidence: str
    key: tuple  # (rule, exact source): what "the same construct" means when comparing old and new


def _fold(node: ast.AST | None, depth: int = 0) -> str | None:
    """The string value of a constant-ish expression ('o' + 's', f'{x}', ''.join([...])), or None."""
    if node is None or depth > 40:
        return None
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        if isinstance(node.value, bytes):
            return node.value.decode("latin-1")
        return None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                inner = _fold(value.value, depth + 1)
                parts.append(inner if inner is not None else "{}")
            else:
                parts.append(_fold(value, depth + 1) or "")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left, depth + 1), _fold(node.right, depth + 1)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _fold(node.left, depth + 1)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        base = _fold(node.value, depth + 1)
        bounds = [node.slice.lower, node.slice.upper, node.slice.step]
        ints = [b.value if isinstance(b, ast.Constant) and isinstance(b.value, int) else None for b in bounds]
        if base is None or any(b is not None and i is None for b, i in zip(bounds, ints)) or ints[2] == 0:
            return None
        return base[ints[0]:ints[1]:ints[2]]
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, int) and 0 <= arg.value < 0x110000:
                return chr(arg.value)
        if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1:
            return _fold(node.args[0], depth + 1)
        if isinstance(func, ast.Attribute):
            base = _fold(func.value, depth + 1)
            if base is None:
                return None
            args = [_fold(a, depth + 1) for a in node.args]
            if func.attr == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
                items = [_fold(e, depth + 1) for e in node.args[0].elts]
                return None if None in items else base.join(items)
            if any(a is None for a in args):
                return None
            if func.attr in ("lower", "upper", "strip", "lstrip", "rstrip", "decode", "encode") and len(args) <= 1:
                return getattr(base, func.attr)() if func.attr not in ("decode", "encode") else base
            if func.attr == "replace" and len(args) == 2:
                return base.replace(args[0], args[1])
            if func.attr == "format":
                return base
    return None


class _Analyzer:
    """One pass over a module: resolves import aliases, then records every forbidden construct."""

    def __init__(self, text: str, tree: ast.Module):
        self.text = text
        self.tree = tree
        self.lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)
        self.aliases: dict[str, tuple[str, bool]] = {}  # local name -> (qualified name, came from an import)
        self.assignments: dict[str, list[ast.AST]] = {}  # local name -> every value assigned to it
        self.prepare_names: set[str] = set()  # local names bound to prepare or its contents
        self.time_names: set[str] = set()  # local names bound to time or its functions
        self.parents: dict[int, ast.AST] = {}
        self.findings: list[_Finding] = []
        self.path_steps_left = 100_000  # bounds the following of variables (x = x + x ... must not hang)

    # ---- helpers ----

    def segment(self, node: ast.AST) -> str:
        """The exact source of `node` (col offsets are UTF-8 byte offsets, as in ast.get_source_segment)."""
        try:
            first, last = node.lineno - 1, node.end_lineno - 1
            chunk = [line.encode("utf-8") for line in self.lines[first:last + 1]]
            if not chunk:
                return ""
            if first == last:
                return chunk[0][node.col_offset:node.end_col_offset].decode("utf-8", "replace")
            chunk[0] = chunk[0][node.col_offset:]
            chunk[-1] = chunk[-1][:node.end_col_offset]
            return b"".join(chunk).decode("utf-8", "replace")
        except (AttributeError, TypeError, IndexError):
            return type(node).__name__

    def add(self, rule: str, node: ast.AST, evidence_node: ast.AST | None = None, note: str = "") -> None:
        source = self.segment(evidence_node or node)
        evidence = f"{source} ({note})" if note else source
        self.findings.append(_Finding(rule, getattr(node, "lineno", 0) or 0, evidence, (rule, source, note)))

    def resolve(self, node: ast.AST, depth: int = 0) -> tuple[str, bool] | None:
        """(qualified name, from an import) of a name-like expression, or None."""
        if depth > 30:
            return None
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id == "__builtins__":
                return ("builtins", True)
            return (node.id, False)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value, depth + 1)
            return None if base is None else (_normal(base[0] + "." + node.attr), base[1])
        if isinstance(node, ast.Subscript):
            key = _fold(node.slice)
            if key is None:
                return None
            value = node.value
            # sys.modules['os'] -> os; vars(os)['system'] / os.__dict__['system'] -> os.system
            if isinstance(value, ast.Attribute) and value.attr == "__dict__":
                base = self.resolve(value.value, depth + 1)
                return None if base is None else (_normal(base[0] + "." + key), base[1])
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "vars" and value.args:
                base = self.resolve(value.args[0], depth + 1)
                return None if base is None else (_normal(base[0] + "." + key), base[1])
            base = self.resolve(value, depth + 1)
            if base and base[0] == "sys.modules":
                return (_normal(key), True)
            return None
        if isinstance(node, ast.Call):
            func = self.resolve(node.func, depth + 1)
            if func is None:
                return None
            if func[0] == "getattr" and len(node.args) >= 2:
                base, attr = self.resolve(node.args[0], depth + 1), _fold(node.args[1])
                if base is not None and attr is not None:
                    return (_normal(base[0] + "." + attr), base[1])
            if func[0] in ("__import__", "importlib.import_module") and node.args:
                module = _fold(node.args[0])
                if module is not None:
                    return (_normal(module), True)
        return None

    def refs_run_dir(self, node: ast.AST | None, call: ast.Call, depth: int = 0) -> bool:
        """Whether a write target is clearly inside the run directory (and cannot climb out of it)."""
        if node is None:
            node = call
        self.path_steps_left -= 1
        if depth > MAX_NAME_DEPTH or self.path_steps_left < 0:
            return False
        source = self.segment(node)
        if self.escapes(node, depth):
            return False
        if any(marker in source for marker in RUN_DIR_MARKERS):
            return True
        if isinstance(node, ast.Name):
            values = self.assignments.get(node.id)
            return bool(values) and all(self.refs_run_dir(value, call, depth + 1) for value in values)
        # os.path.join(out, "x") where out = os.environ["RUN_DIR"]
        return any(self.refs_run_dir(sub, call, depth + 1) for sub in ast.walk(node)
                   if isinstance(sub, ast.Name) and sub is not node)

    def is_leading(self, node: ast.AST) -> bool:
        """Whether a string starts its path: '/x' is absolute there, a mere suffix in run_dir + '/x'."""
        parent = self.parents.get(id(node))
        if isinstance(parent, ast.JoinedStr):
            return parent.values[0] is node and self.is_leading(parent)
        if isinstance(parent, ast.BinOp):
            return parent.left is node and self.is_leading(parent)
        return True

    def escapes(self, node: ast.AST, depth: int) -> bool:
        """An absolute or '..' literal, dirname/parent, or a run-dir name not taken from $RUN_DIR."""
        self.path_steps_left -= 1
        if self.path_steps_left < 0:
            return True
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Constant, ast.JoinedStr)):
                value = _fold(sub)
                if value and _is_escaping_path(value, leading=self.is_leading(sub)):
                    return True
            elif isinstance(sub, ast.Attribute) and sub.attr in ("parent", "parents", "dirname"):
                return True
            elif isinstance(sub, ast.Name) and sub.id in self.assignments and depth < MAX_NAME_DEPTH:
                values = self.assignments[sub.id]
                if any(self.escapes(v, depth + 1) for v in values):
                    return True
                # a run-dir-looking name must itself come from $RUN_DIR
                if any(m in sub.id for m in RUN_DIR_MARKERS) and not all(
                        any(m in self.segment(v) for m in RUN_DIR_MARKERS) for v in values):
                    return True
        return False

    # ---- the pass ----

    def run(self) -> list[_Finding]:
        self.collect_bindings()
        stack = [self.tree]
        while stack:  # explicit stack: deeply nested expressions must not exhaust recursion
            node = stack.pop()
            self.visit(node)
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
        return self.findings

    def collect_bindings(self) -> None:
        nodes = list(ast.walk(self.tree))
        for node in nodes:
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = (alias.name, True)
                    else:
                        top = alias.name.split(".")[0]
                        self.aliases[top] = (top, True)
                    self.note_binding(alias.asname or alias.name.split(".")[0], alias.name)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    qualified = f"{module}.{alias.name}" if module else alias.name
                    self.aliases[alias.asname or alias.name] = (qualified, True)
                    self.note_binding(alias.asname or alias.name, qualified)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.assignments.setdefault(target.id, []).append(node.value)
        # plain aliases (`run = subprocess.run`), to a fixed point so chains resolve too
        for _ in range(3):
            for name, values in self.assignments.items():
                if len(values) == 1 and name not in self.aliases:
                    resolved = self.resolve(values[0])
                    if resolved and resolved[1]:
                        self.aliases[name] = resolved

    def note_binding(self, local: str, qualified: str) -> None:
        if qualified == "prepare" or qualified.startswith("prepare."):
            self.prepare_names.add(local)
        if qualified == "time" or qualified.startswith("time."):
            self.time_names.add(local)

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self.visit_import(node)
        if isinstance(node, ast.Call):
            self.visit_call(node)
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)):
            self.visit_reference(node)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for element in _flatten_targets(target):
                    self.visit_store(node, element)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.withitem, ast.NamedExpr)):
            target = node.optional_vars if isinstance(node, ast.withitem) else node.target
            for element in _flatten_targets(target) if target is not None else []:
                self.visit_store(node, element)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if METRIC_FUNCTION_NAME.search(node.name):
                self.findings.append(_Finding("evaluation", node.lineno, f"def {node.name}(...)",
                                              ("evaluation", f"def {node.name}", "")))
            self.check_rebinding(node, node.name)
        if isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp, ast.Call, ast.Subscript)) and not isinstance(
                self.parents.get(id(node)), (ast.JoinedStr, ast.BinOp, ast.Expr)):
            self.visit_string(node)  # a bare string statement is a docstring or comment, not data

    def visit_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            module = node.module or ""
            modules = [module] + [f"{module}.{a.name}" if module else a.name for a in node.names if a.name != "*"]
            if any(a.name == "*" for a in node.names):
                # a star import hides which names arrive: judge it as importing all of them
                for rule, entries in RULE_NAMES.items():
                    if any(e == module or e.startswith(module + ".") or module.startswith(e + ".") for e in entries):
                        self.add(rule, node, note="star import")
                if module == "prepare":
                    self.add("data_access", node, note="star import from prepare")
        for module in modules:
            for rule, entries in RULE_NAMES.items():
                if matches(module, entries):
                    self.add(rule, node)
            if module.startswith("prepare.") and PREPARE_PRIVATE.search(module.split(".", 1)[1]):
                self.add("data_access", node)

    def visit_reference(self, node: ast.AST) -> None:
        parent = self.parents.get(id(node))
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            self.add("dynamic_import", node, note="interpreter internals")
        if isinstance(node, ast.Attribute) and node.attr in ESCAPE_ATTRIBUTES:
            self.add("dynamic_import", node, note="interpreter internals")
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            base = self.resolve(node.value)
            if base and base[1]:
                self.add("dynamic_import", node, note="module namespace")
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            return  # `p = os.popen`: the value is judged, not the new name
        resolved = self.resolve(node)
        if resolved is None:
            return
        qualified, from_import = resolved
        if not from_import and qualified.split(".")[0] not in BUILTIN_NAMES:
            return  # a local variable that happens to be called `code` or `datasets`
        is_called = isinstance(parent, ast.Call) and parent.func is node
        evidence = parent if is_called else node
        for rule, entries in RULE_NAMES.items():
            if matches(qualified, entries):
                self.add(rule, node, evidence)
        if not is_called and qualified in INDIRECT_BUILTINS and not self.is_alias_assignment(node):
            self.add("dynamic_import", node, note="builtin used as a value")
        if not is_called and (qualified in FILE_WRITERS or qualified in FILE_OPENERS) \
                and not self.is_alias_assignment(node):
            self.add("file_write", node, note="file writer used as a value")
        if qualified.startswith("prepare."):
            name = qualified.split(".", 1)[1]
            if PREPARE_PRIVATE.search(name):
                self.add("data_access", node, evidence)
            if is_called and PREPARE_METRIC_CALL.search(name):
                self.add("evaluation", node, evidence)

    def is_alias_assignment(self, node: ast.AST) -> bool:
        parent = self.parents.get(id(node))
        return isinstance(parent, ast.Assign) and parent.value is node and all(
            isinstance(t, ast.Name) for t in parent.targets)

    def visit_call(self, call: ast.Call) -> None:
        resolved = self.resolve(call.func)
        qualified = resolved[0] if resolved else None
        func_attr = call.func.attr if isinstance(call.func, ast.Attribute) else None
        if qualified in ("setattr", "delattr") and call.args:
            target = self.resolve(call.args[0])
            if target and _is_module_like(target):
                attr = _fold(call.args[1]) if len(call.args) > 1 else None
                self.judge_module_patch(call, target[0], attr or "?")
                if target[0].split(".")[0] in ("torch", "prepare", "builtins"):
                    self.add("dynamic_import", call, note="setattr on a module")
        if qualified == "getattr" and len(call.args) >= 2 and _fold(call.args[1]) is None:
            target = self.resolve(call.args[0])
            if target and (target[1] or target[0] == "builtins"):
                self.add("dynamic_import", call, note="computed attribute of a module")
        if qualified == "vars" and call.args:
            target = self.resolve(call.args[0])
            if target and target[1]:
                self.add("dynamic_import", call, note="module namespace")
        if qualified == "torch.load":
            for keyword in call.keywords:
                if keyword.arg == "weights_only" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
                    self.add("dynamic_import", call, note="unpickling runs code")
        if qualified == "numpy.load":
            for keyword in call.keywords:
                if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    self.add("dynamic_import", call, note="unpickling runs code")
        if qualified in ("os.environ.setdefault", "os.environ.update", "os.environ.__setitem__", "os.putenv"):
            if "RUN_DIR" in self.segment(call):
                self.add("file_write", call, note="redirects the run directory")
        if qualified == "print" or func_attr == "write":
            for arg in call.args[:1]:
                text = _fold(arg)
                if text is not None and FAKE_METRIC_LINE.search(text):
                    self.add("evaluation", call, note="prints a metric line")
        self.judge_write(call, qualified, func_attr)

    def judge_write(self, call: ast.Call, qualified: str | None, func_attr: str | None) -> None:
        targets: list[ast.AST | None] = []
        if qualified in FILE_OPENERS:
            path_index, mode_index, default_mode = FILE_OPENERS[qualified]
            mode_node = _argument(call, mode_index, "mode")
            if mode_node is None and (_has_starred(call)):
                mode = None  # unknown: judged as a write
            elif mode_node is None:
                mode = default_mode
            else:
                mode = _fold(mode_node)
            if mode is not None and not (set(mode) & WRITE_MODE_CHARS):
                return
            targets = [_argument(call, path_index, "file")]
        elif qualified in FILE_WRITERS:
            positions, keywords, required = FILE_WRITERS[qualified]
            if not positions and not keywords:
                if required:
                    self.add("file_write", call, note="links are never allowed")
                return
            found = [call.args[i] for i in positions if i < len(call.args) and not isinstance(call.args[i], ast.Starred)]
            found += [k.value for k in call.keywords if k.arg in keywords]
            if not found and not required:
                return
            targets = found or [None]
        elif func_attr and qualified not in FILE_WRITERS and isinstance(call.func, ast.Attribute):
            receiver = call.func.value
            if func_attr in RECEIVER_WRITE_METHODS:
                targets = [receiver]
            elif func_attr in ARGUMENT_WRITE_METHODS:
                if not call.args and not call.keywords:
                    return  # to_csv() etc. without a path return a string
                targets = [call.args[0] if call.args else None]
            elif func_attr == "open" and self.is_write_mode_method(call):
                targets = [receiver]
            elif func_attr in ("rename", "replace") and self.is_pathlike(receiver):
                targets = [receiver, call.args[0] if call.args else None]
            else:
                return
        else:
            return
        for target in targets:
            if not self.refs_run_dir(target, call):
                self.add("file_write", call, note="outside the run directory")
                return
            written = _fold(target) if target is not None else None
            if any(isinstance(s, ast.Constant) and isinstance(s.value, str)
                   and s.value.endswith(IMPORTABLE_SUFFIXES) and s.value != "model_source.py"
                   for s in ast.walk(target or call)) or (written and written.endswith(IMPORTABLE_SUFFIXES)
                                                          and not written.endswith("model_source.py")):
                self.add("file_write", call, note="writes importable code")
                return

    def is_write_mode_method(self, call: ast.Call) -> bool:
        candidates = call.args[:2] + [k.value for k in call.keywords if k.arg == "mode"]
        for candidate in candidates:
            mode = _fold(candidate)
            if mode is not None and re.fullmatch(r"[rwaxbtU+]{1,4}", mode) and set(mode) & WRITE_MODE_CHARS:
                return True
        return _has_starred(call)

    def is_pathlike(self, node: ast.AST, depth: int = 0) -> bool:
        if "Path(" in self.segment(node):
            return True
        if isinstance(node, ast.Name) and depth < MAX_NAME_DEPTH:
            return any(self.is_pathlike(v, depth + 1) for v in self.assignments.get(node.id, []))
        return False

    def visit_store(self, statement: ast.AST, target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.check_rebinding(statement, target.id)
            return
        if isinstance(target, ast.Subscript):
            base = self.resolve(target.value)
            if base and base[0] in ("os.environ",) and "RUN_DIR" in self.segment(target):
                self.add("file_write", statement, note="redirects the run directory")
            if base and base[0] in ("sys.modules", "globals"):
                self.add("dynamic_import", statement)
            if isinstance(target.value, ast.Call):
                callee = self.resolve(target.value.func)
                if callee and callee[0] in ("globals", "vars", "locals"):
                    self.add("dynamic_import", statement)
            return
        if isinstance(target, ast.Attribute):
            base = self.resolve(target.value)
            if base and _is_module_like(base):
                self.judge_module_patch(statement, base[0], target.attr)

    def check_rebinding(self, statement: ast.AST, name: str) -> None:
        """Rebinding a name imported from prepare or time changes budget or timing in disguise."""
        if name in self.time_names:
            self.add("timing", statement, note=f"rebinds {name} from time")
        if name in self.prepare_names:
            self.add("timing", statement, note=f"rebinds {name} from prepare")
            self.add("evaluation", statement, note=f"rebinds {name} from prepare")

    def judge_module_patch(self, statement: ast.AST, module: str, attr: str) -> None:
        """An attribute of an imported module is assigned, deleted or setattr'd."""
        target = f"{module}.{attr}"
        if module == "time" or module.startswith("time."):
            self.add("timing", statement, note="patches time")
        elif module == "prepare" or module.startswith("prepare."):
            self.add("timing", statement, note="patches prepare")
            self.add("evaluation", statement, note="patches prepare")
        elif module.startswith(("sys", "signal", "threading")) and attr in ("settrace", "setprofile", "alarm", "signal"):
            self.add("timing", statement)
        elif (module == "torch" or module.startswith("torch.")) and target.startswith(TORCH_CONFIG_PREFIXES):
            return  # tf32 switches and compiler settings are ordinary tuning
        elif module.startswith("sys") and attr in ("modules", "path", "meta_path", "path_hooks"):
            self.add("dynamic_import", statement)
        else:
            self.add("evaluation", statement, note=f"patches module {module}")

    def visit_string(self, node: ast.AST) -> None:
        text = _fold(node)
        if not text:
            return
        lowered = text.lower()
        if _mentions_private_data(lowered):
            self.add("data_access", node, note="names private data")
        if FAKE_METRIC_LINE.search(text):
            self.add("evaluation", node, note="a metric line")


def _is_module_like(resolved: tuple[str, bool]) -> bool:
    # an imported name, or one of the modules whose patching matters even without a visible import
    return resolved[1] or resolved[0].split(".")[0] in ("prepare", "time", "torch", "builtins")


def _normal(qualified: str) -> str:
    # builtins.exec and exec are the same thing
    return qualified[len("builtins."):] if qualified.startswith("builtins.") else qualified


def _argument(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    if index < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[:index + 1]):
        return call.args[index]
    for k in call.keywords:
        if k.arg == keyword:
            return k.value
    return None


def _has_starred(call: ast.Call) -> bool:
    return any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)


def _flatten_targets(target: ast.AST) -> list[ast.AST]:
    if isinstance(target, (ast.Tuple, ast.List)):
        out = []
        for element in target.elts:
            out.extend(_flatten_targets(element))
        return out
    if isinstance(target, ast.Starred):
        return _flatten_targets(target.value)
    return [target]


def _is_escaping_path(value: str, leading: bool = True) -> bool:
    if leading and (value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return True
    return ".." in re.split(r"[\\/]", value)


def _mentions_private_data(lowered: str) -> bool:
    """Validation data, the data cache or its manifest, named in a string."""
    stripped = lowered.strip()
    if stripped in ("val", "valid", "validation"):
        return True
    if "charter" in lowered and "cache" in lowered:
        return True
    if "manifest.json" in lowered or ".parquet" in lowered or ("shard_" in lowered and "val" in lowered):
        return True
    components = [c for c in re.split(r"[\\/]+", lowered) if c]
    if len(components) > 1 or re.search(r"[\\/]", lowered):
        for component in components:
            if component in ("val", "valid", "validation") or component.startswith(("val_", "val.", "validation")):
                return True
    return False
