"""The harm test: a static judgement of a proposed change before anything of it runs.

A proposal is a list of `Change`s to lab files. `harm_test(changes, scope)` returns the reasons to
refuse it (an empty list means it may be committed and run): paths outside the constitution's
editable scope, symlinks, binary content, a diff over the size limit, Python that does not parse,
constructs of the forbidden kinds the scope names (network, subprocess, dynamic_import, file_write,
data_access, timing, evaluation), found by walking the `ast` of the new text with import aliases
resolved, and the constitution's hard-constraint regexes.

File access is judged by value, not by name: every path handed to a writer (open in a write mode,
os/shutil/pathlib/tarfile/zipfile/numpy/torch/pickle/sqlite/tempfile, environment variables and
compiler settings that choose where libraries write) is followed back through the assignments of
its function and module (and the call sites of nested helpers) to every value it may have; a write
passes only when each of them is built from $RUN_DIR without '..', an absolute part or an unknown
component. Reads pass for the lab, the run dir and a few system-information files; tensor and
array loaders for the run dir only; listings for the lab and the run dir. What the analyzer cannot
resolve (a computed attribute name, a module handed around as a value, a rebound builtin) is
refused, never guessed. Only what a change *adds* is judged: a
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
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

from constitution.schema import Scope

EVIDENCE_CHARS = 120


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
    "socket", "_socket", "ssl", "_ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp",
    "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib", "xmlrpc", "socketserver",
    "websocket", "websockets", "paramiko", "grpc", "zmq", "pycurl", "webbrowser", "antigravity",
    "wsgiref", "huggingface_hub", "kernels", "datasets", "torch.hub", "torch.utils.model_zoo",
    "torch.distributed", "torch._C._distributed*", "torchvision.datasets", "tiktoken.get_encoding",
    "tiktoken.encoding_for_model", "tiktoken.load", "tiktoken_ext",
    "asyncio.open_connection", "asyncio.start_server", "asyncio.open_unix_connection",
    "asyncio.start_unix_server", "asyncio.streams", "asyncio.base_events", "asyncio.selector_events",
    "asyncio.proactor_events", "asyncio.unix_events", "asyncio.windows_events", "asyncio.sslproto",
    "asyncio.trsock", "logging.handlers", "logging.config.listen", "multiprocessing.connection",
    "multiprocessing.managers", "multiprocessing.resource_sharer", "xml.sax", "xml.dom.pulldom",
    "lxml", "numpy.DataSource", "numpy.lib.npyio.DataSource", "numpy.lib._datasource",
    "pip", "ensurepip", "fsspec", "s3fs", "gcsfs", "boto3", "botocore", "google.cloud", "wandb",
    "mlflow", "comet_ml", "neptune", "redis", "pymongo", "psycopg", "psycopg2", "pymysql", "kafka",
    "paho", "tornado", "twisted", "scapy", "dns", "uvicorn", "flask", "fastapi", "socketio",
]
# torch.distributed questions that open nothing
NETWORK_ALLOWED = {"torch.distributed.is_available", "torch.distributed.is_initialized",
                   "torch.distributed.get_rank", "torch.distributed.get_world_size"}
# method names that open connections whatever object they are reached through (an event loop, a
# socket handed over by another module, a model class)
NETWORK_METHODS = {
    "create_connection", "create_server", "create_datagram_endpoint", "create_unix_connection",
    "create_unix_server", "open_connection", "open_unix_connection", "start_server",
    "start_unix_server", "sock_connect", "sock_accept", "sock_sendall", "sock_sendto", "sock_recv",
    "sock_recvfrom", "getaddrinfo", "getnameinfo", "connect_ex", "urlopen", "urlretrieve",
    "init_process_group", "TCPStore", "rendezvous", "load_state_dict_from_url",
    "download_url_to_file", "hf_hub_download", "snapshot_download", "from_pretrained",
}
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
    "eval", "compile", "globals", "locals", "breakpoint", "sys.modules", "sys.path", "sys.meta_path",
    "sys.path_hooks", "sys.path_importer_cache", "sys._getframe", "sys._current_frames",
    "inspect.currentframe", "inspect.stack", "inspect.getmembers", "inspect.getmembers_static",
    "inspect.getattr_static", "inspect.getmodule", "types.FunctionType", "types.CodeType",
    "types.LambdaType", "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle", "marshal",
    "dill", "cloudpickle", "shelve", "joblib.load", "pandas.read_pickle", "yaml.load",
    "yaml.unsafe_load", "yaml.full_load", "codecs", "operator.attrgetter", "operator.methodcaller",
    "pydoc", "site", "logging.config", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "builtins.__dict__",
]
TIMING = [
    "signal.alarm", "signal.signal", "signal.setitimer", "signal.siginterrupt",
    "signal.pthread_sigmask", "sys.settrace", "sys.setprofile", "threading.settrace",
    "threading.setprofile",
]
DATA_ACCESS = [
    "pyarrow.parquet", "pyarrow.dataset", "pyarrow.feather", "pyarrow.csv", "pyarrow.json",
    "pyarrow.orc", "pyarrow.ipc", "pyarrow.fs", "fastparquet", "duckdb", "polars.read_*",
    "polars.scan_*", "pandas.read_*", "pandas.HDFStore", "pandas.ExcelFile", "linecache",
    "fileinput", "importlib.resources", "importlib_resources", "pkg_resources", "pkgutil.get_data",
    "datasets", "torchvision.datasets", "zarr", "tables", "lmdb",
]
RULE_NAMES = {
    "network": NETWORK, "subprocess": SUBPROCESS, "dynamic_import": DYNAMIC_IMPORT,
    "timing": TIMING, "data_access": DATA_ACCESS,
}
# builtins that must not be handed around as values: `f = getattr; f(os, ...)` escapes alias tracking
INDIRECT_BUILTINS = {"getattr", "setattr", "delattr", "__import__", "eval", "exec", "compile", "globals",
                     "vars", "locals", "breakpoint"}
# attribute names that reach interpreter internals (sandbox-escape classics)
ESCAPE_ATTRIBUTES = {
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__loader__",
    "__import__", "__setattr__", "__delattr__", "__getattribute__", "__getattr__", "__reduce__",
    "__reduce_ex__", "__mro__", "__bases__", "__base__", "f_globals", "f_locals", "f_builtins",
    "f_back", "f_code", "gi_frame", "cr_frame", "ag_frame", "tb_frame",
}
ESCAPE_NAMES = {"__builtins__", "__loader__", "__spec__"}
# names from prepare a training script has no business with: validation, evaluation, raw data paths
PREPARE_PRIVATE = re.compile(r"val|eval|manifest|data_dir|cache_dir|split|verify|^_", re.IGNORECASE)
PREPARE_METRIC_CALL = re.compile(r"eval|val|bpb|bits_per_byte", re.IGNORECASE)
METRIC_FUNCTION_NAME = re.compile(r"^evaluate|val_bpb|bits_per_byte", re.IGNORECASE)
FAKE_METRIC_LINE = re.compile(r"^\s*val_bpb", re.IGNORECASE | re.MULTILINE)
# monkeypatching these torch namespaces is ordinary tuning (tf32, compile caches), not tampering
TORCH_CONFIG_PREFIXES = ("torch.backends", "torch._dynamo.config", "torch._inductor.config",
                         "torch._functorch.config", "torch.fx.experimental._config")
# ... except the settings that choose where the compiler writes: those must point into the run dir
LOCATION_SETTING = re.compile(r"(dir|path|file|root|prefix|home|location)$", re.IGNORECASE)

# ---- the environment --------------------------------------------------------------------------
# variables that make this process or its children (compile workers) load code
CODE_ENV = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONBREAKPOINT",
            "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "PYTHONINSPECT", "PYTHONWARNINGS", "PATH",
            "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV"}
# variables that tell a library where to write (compile caches, temp files, home)
LOCATION_ENV = re.compile(r"(DIR|HOME|PATH|ROOT|PREFIX|FILE|LOCATION|DEST|OUTPUT)$|^(TMP|TEMP)$")
ENV_MAPPINGS = ("os.environ", "os.environb")
ENV_MUTATORS = {"setdefault", "update", "__setitem__", "__delitem__", "pop", "popitem", "clear"}

# ---- file access ------------------------------------------------------------------------------
# callables that open a file: qualified name ->
#   (path index, path keyword, mode index, mode keyword, default mode, write mode chars, data reader)
_W = "wax+"
FILE_OPENERS = {
    "open": (0, "file", 1, "mode", "r", _W, False), "io.open": (0, "file", 1, "mode", "r", _W, False),
    "_io.open": (0, "file", 1, "mode", "r", _W, False), "io.FileIO": (0, "file", 1, "mode", "r", _W, False),
    "_io.FileIO": (0, "file", 1, "mode", "r", _W, False), "os.fdopen": (0, "fd", 1, "mode", "r", _W, False),
    "codecs.open": (0, "filename", 1, "mode", "r", _W, False),
    "gzip.open": (0, "filename", 1, "mode", "rb", _W, False),
    "gzip.GzipFile": (0, "filename", 1, "mode", "rb", _W, False),
    "bz2.open": (0, "filename", 1, "mode", "rb", _W, False), "bz2.BZ2File": (0, "filename", 1, "mode", "r", _W, False),
    "lzma.open": (0, "filename", 1, "mode", "rb", _W, False),
    "lzma.LZMAFile": (0, "filename", 1, "mode", "r", _W, False),
    "tarfile.open": (0, "name", 1, "mode", "r", _W, False), "tarfile.TarFile": (0, "name", 1, "mode", "r", _W, False),
    "tarfile.TarFile.open": (0, "name", 1, "mode", "r", _W, False),
    "zipfile.ZipFile": (0, "file", 1, "mode", "r", _W, False),
    "zipfile.PyZipFile": (0, "file", 1, "mode", "r", _W, False),
    "dbm.open": (0, "file", 1, "flag", "r", "wcn", False), "dbm.gnu.open": (0, "file", 1, "flag", "r", "wcn", False),
    "dbm.ndbm.open": (0, "file", 1, "flag", "r", "wcn", False),
    "dbm.dumb.open": (0, "file", 1, "flag", "c", "wcn", False),
    "shelve.open": (0, "filename", 1, "flag", "c", "wcn", False),
    "wave.open": (0, "f", 1, "mode", "rb", _W, False),
    "h5py.File": (0, "name", 1, "mode", "r", _W, True),
    "numpy.memmap": (0, "filename", 2, "mode", "r+", _W, True),
    "numpy.lib.format.open_memmap": (0, "filename", 1, "mode", "r+", _W, True),
    "pyarrow.OSFile": (0, "path", 1, "mode", "r", _W, True),
    "pyarrow.memory_map": (0, "path", 1, "mode", "r", _W, True),
}
NUMPY_MODES = {"readonly": "r", "copyonwrite": "c", "readwrite": "r+", "write": "w+"}
# os.open flags that do not write
READ_ONLY_FLAGS = {"os.O_RDONLY", "os.O_CLOEXEC", "os.O_NOFOLLOW", "os.O_NONBLOCK", "os.O_DIRECTORY",
                   "os.O_NOATIME", "os.O_NOCTTY", "os.O_PATH", "os.O_LARGEFILE", "os.O_BINARY"}
# callables that always write: qualified name -> (path arg positions, path keywords, a path is required)
# an empty position and keyword list means "never allowed": links (out of the run directory) and
# special files (a FIFO for stats.json hangs whoever reads it)
FILE_WRITERS = {
    **{f"os.{n}": ([0], ["path"], True) for n in (
        "remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "chmod", "lchmod", "chown",
        "lchown", "truncate", "utime", "chdir", "chroot", "chflags", "lchflags",
        "setxattr", "removexattr")},
    "os.rename": ([0, 1], ["src", "dst"], True), "os.renames": ([0, 1], ["old", "new"], True),
    "os.replace": ([0, 1], ["src", "dst"], True), "os.symlink": ([], [], True),
    "os.link": ([], [], True), "os.mkfifo": ([], [], True), "os.mknod": ([], [], True),
    **{f"shutil.{n}": ([1], ["dst"], True) for n in ("copy", "copy2", "copyfile", "copytree", "copymode", "copystat")},
    "shutil.move": ([0, 1], ["src", "dst"], True), "shutil.rmtree": ([0], ["path"], True),
    "shutil.chown": ([0], ["path"], True), "shutil.make_archive": ([0], ["base_name"], True),
    "torch.save": ([1], ["f"], True), "torch.serialization.save": ([1], ["f"], True),
    "torch.jit.save": ([1], ["f"], True), "torch.export.save": ([1], ["f"], True),
    "torch.onnx.export": ([2], ["f"], True), "torch.cuda.memory._dump_snapshot": ([0], ["filename"], True),
    "torch.profiler.tensorboard_trace_handler": ([0], ["dir_name"], True),
    "torch.utils.tensorboard.SummaryWriter": ([0], ["log_dir"], True),
    "tensorboardX.SummaryWriter": ([0], ["logdir", "log_dir"], True),
    "numpy.save": ([0], ["file"], True), "numpy.savez": ([0], ["file"], True),
    "numpy.savez_compressed": ([0], ["file"], True), "numpy.savetxt": ([0], ["fname"], True),
    "numpy.ndarray.tofile": ([1], ["fid"], True), "numpy.ndarray.dump": ([1], ["file"], True),
    "safetensors.torch.save_file": ([1], ["filename"], True),
    "safetensors.torch.save_model": ([1], ["filename"], True),
    "safetensors.numpy.save_file": ([1], ["filename"], True),
    "pyarrow.parquet.write_table": ([1], ["where"], True), "pyarrow.parquet.ParquetWriter": ([0], ["where"], True),
    "pyarrow.parquet.write_to_dataset": ([1], ["root_path"], True),
    "pyarrow.feather.write_feather": ([1], ["dest"], True), "pyarrow.csv.write_csv": ([1], ["output_file"], True),
    "pyarrow.dataset.write_dataset": ([1], ["base_dir"], True), "pyarrow.orc.write_table": ([1], ["where"], True),
    "pyarrow.ipc.new_file": ([0], ["sink"], True), "pyarrow.ipc.new_stream": ([0], ["sink"], True),
    "pyarrow.output_stream": ([0], ["source"], True), "pyarrow.create_memory_map": ([0], ["path"], True),
    "pandas.HDFStore": ([0], ["path"], True), "pandas.ExcelWriter": ([0], ["path"], True),
    "sqlite3.connect": ([0], ["database"], True), "duckdb.connect": ([0], ["database"], False),
    "logging.FileHandler": ([0], ["filename"], True),
    **{f"logging.handlers.{n}": ([0], ["filename"], True) for n in (
        "RotatingFileHandler", "TimedRotatingFileHandler", "WatchedFileHandler")},
    "logging.basicConfig": ([], ["filename"], False),
    "matplotlib.pyplot.savefig": ([0], ["fname"], True),
    "joblib.dump": ([1], ["filename"], True),
    # writers handed a file object (or a path): it must be one opened inside the run directory
    "pickle.dump": ([1], ["file"], True), "pickle.Pickler": ([0], ["file"], True),
    "_pickle.dump": ([1], ["file"], True), "marshal.dump": ([1], ["file"], True),
    "json.dump": ([1], ["fp"], True), "yaml.dump": ([1], ["stream"], False),
    "yaml.safe_dump": ([1], ["stream"], False), "yaml.dump_all": ([1], ["stream"], False),
    "toml.dump": ([1], ["f"], True), "tomli_w.dump": ([1], ["fp"], True),
    "dill.dump": ([1], ["file"], True), "cloudpickle.dump": ([1], ["file"], True),
}
# writers that also read their first argument (a copy reads its source)
COPY_SOURCES = {f"shutil.{n}": ([0], ["src"]) for n in (
    "copy", "copy2", "copyfile", "copytree", "copymode", "copystat", "move")}
COPIES_INTO_DIRECTORY = {"shutil.copy", "shutil.copy2", "shutil.move", "shutil.copytree"}
# tempfile: qualified name -> (position of dir, positions of suffix and prefix)
TEMPFILE = {
    "tempfile.mkstemp": (2, (0, 1)), "tempfile.mkdtemp": (2, (0, 1)),
    "tempfile.TemporaryDirectory": (2, (0, 1)), "tempfile.NamedTemporaryFile": (6, (4, 5)),
    "tempfile.TemporaryFile": (6, (4, 5)), "tempfile.SpooledTemporaryFile": (7, (5, 6)),
}
# SQL that writes files, loads code or fetches: sqlite3 and duckdb run it from any connection
SQL_METHODS = {"execute", "executemany", "executescript", "sql", "query"}
SQL_MODULES = ("sqlite3", "duckdb")
SQL_WRITES = re.compile(r"\bCOPY\b[\s\S]*\bTO\b|\bATTACH\b|\bEXPORT\s+DATABASE\b|\bVACUUM\b[\s\S]*\bINTO\b"
                        r"|\bDETACH\b|\bPRAGMA\b", re.IGNORECASE)
SQL_CODE = re.compile(r"\bload_extension\b|\bLOAD\b", re.IGNORECASE)
SQL_NETWORK = re.compile(r"\bINSTALL\b|httpfs|[a-z0-9]+://", re.IGNORECASE)
IN_MEMORY_DATABASES = {"sqlite3.connect", "duckdb.connect"}
# archive extraction writes whatever paths the archive's members name
EXTRACTORS = {"shutil.unpack_archive"}
# readers of tensors and arrays: only what the trainer itself wrote into its run directory
DATA_READERS = {
    "torch.load": ([0], ["f"]), "torch.serialization.load": ([0], ["f"]), "torch.jit.load": ([0], ["f"]),
    "torch.export.load": ([0], ["f"]), "torch.from_file": ([0], ["filename"]),
    "torch.UntypedStorage.from_file": ([0], ["filename"]), "torch.TypedStorage.from_file": ([0], ["filename"]),
    "numpy.load": ([0], ["file"]), "numpy.fromfile": ([0], ["file"]), "numpy.loadtxt": ([0], ["fname"]),
    "numpy.genfromtxt": ([0], ["fname"]), "numpy.fromregex": ([0], ["file"]),
    "numpy.lib.npyio.load": ([0], ["file"]), "numpy.lib.format.read_array": ([0], ["fp"]),
    "safetensors.torch.load_file": ([0], ["filename"]), "safetensors.numpy.load_file": ([0], ["filename"]),
    "safetensors.safe_open": ([0], ["filename"]), "safetensors.torch.load_model": ([1], ["filename"]),
    "pickle.load": ([0], ["file"]), "joblib.load": ([0], ["filename"]),
}
# other readers: the lab, the run directory and a few system-information files
GENERAL_READERS = {
    "tokenize.open": ([0], ["filename"]), "io.open_code": ([0], ["path"]),
    "xml.etree.ElementTree.parse": ([0], ["source"]), "xml.etree.ElementTree.iterparse": ([0], ["source"]),
    "json.load": ([0], ["fp"]), "yaml.safe_load": ([0], ["stream"]),
}
# directory listings: qualified name -> (path positions, path keywords, listing the lab when absent)
LISTERS = {
    "os.listdir": ([0], ["path"], True), "os.scandir": ([0], ["path"], True), "os.walk": ([0], ["top"], False),
    "os.fwalk": ([0], ["top"], True), "glob.glob": ([0], ["pathname"], False),
    "glob.iglob": ([0], ["pathname"], False), "glob.glob0": ([0], ["dirname"], False),
    "glob.glob1": ([0], ["dirname"], False),
}
PATH_CLASSES = {"pathlib.Path", "pathlib.PurePath", "pathlib.PosixPath", "pathlib.PurePosixPath",
                "pathlib.WindowsPath", "pathlib.PureWindowsPath", "zipfile.Path"}
# methods that write whatever object they are called on (pathlib.Path)
RECEIVER_WRITE_METHODS = {"write_text", "write_bytes", "unlink", "mkdir", "rmdir", "touch", "chmod", "lchmod"}
LINK_METHODS = {"symlink_to", "hardlink_to", "link_to"}
# methods that write to the path in their first argument (numpy, pandas, matplotlib, PIL, jit modules)
ARGUMENT_WRITE_METHODS = {"tofile", "to_csv", "to_parquet", "to_json", "to_pickle", "to_feather",
                          "to_hdf", "to_excel", "to_stata", "to_orc", "to_xml", "to_netcdf", "to_zarr",
                          "savefig", "save_pretrained", "save", "dump", "export_chrome_trace",
                          "export_stacks", "export_memory_timeline", "write_html", "write_image"}
PATH_KEYWORDS = {"path", "path_or_buf", "fname", "file", "filename", "f", "fp", "buf", "fid",
                 "excel_writer", "save_directory", "where", "dest", "output_file"}
EXTRACT_METHODS = {"extract", "extractall"}
PATH_READ_METHODS = {"read_text", "read_bytes"}
PATH_LIST_METHODS = {"iterdir", "glob", "rglob", "walk"}
# a written file with one of these suffixes could be imported by the evaluator's worker
IMPORTABLE_SUFFIXES = (".py", ".pyc", ".pth", ".so")
EVALUATOR_SOURCE = "model_source.py"  # the copy of train.py the evaluator imports, by design
# absolute paths a trainer may read: CPU and memory facts about its own machine and process
SYSTEM_READABLE = re.compile(
    r"/proc/(cpuinfo|meminfo|loadavg|stat|uptime|version|self/(status|statm|stat))"
    r"|/sys/(fs/cgroup|devices/system/cpu)(/[\w.,:-]+)*/?")
# the default of os.environ.get("RUN_DIR", ...): one plain directory name (the lab's run/)
RUN_DIR_DEFAULT = re.compile(r"[A-Za-z0-9_-]+")

# modules a file at the lab root must not shadow (the lab root is sys.path[0] of train and evaluate)
SHADOWED_MODULES = set(getattr(sys, "stdlib_module_names", ())) | {
    "torch", "numpy", "pyarrow", "tiktoken", "rustbpe", "kernels", "prepare", "sitecustomize",
    "usercustomize", "triton", "pandas", "typing_extensions",
}
BUILTIN_NAMES = set(dir(builtins))
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
CODING_COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
UTF8_NAMES = {"utf-8", "utf8", "utf_8", "ascii", "us-ascii", "utf-8-sig"}


def _prefixes(entries) -> set[str]:
    out = set()
    for entry in entries:
        parts = entry.rstrip("*").split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


# modules that must not be handed around as values (`m = [os][0]; m.system(...)` escapes resolution)
DANGEROUS_MODULES = _prefixes(
    [e for entries in RULE_NAMES.values() for e in entries]
    + list(FILE_OPENERS) + list(FILE_WRITERS) + list(DATA_READERS) + list(GENERAL_READERS) + list(LISTERS)
    + list(TEMPFILE)) | {e for entries in RULE_NAMES.values() for e in entries if "*" not in e} | {
    "builtins", "pathlib", "time", "prepare", "torch", "sys", "os", "signal", "threading", "io", "shutil",
    "tempfile", "glob", "mmap"}
# classes (numpy.ndarray in isinstance, torch.UntypedStorage) are no way around resolution
DANGEROUS_MODULES = {m for m in DANGEROUS_MODULES if not m.rpartition(".")[2][:1].isupper()} - {"numpy.ndarray"}
IO_TABLES = (FILE_OPENERS, FILE_WRITERS, DATA_READERS, GENERAL_READERS, LISTERS, TEMPFILE)
READ_TABLES = (FILE_OPENERS, DATA_READERS, GENERAL_READERS)


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


def path_problem(path: str, editable: list[str]) -> str | None:
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
    problem = path_problem(path, list(scope.editable))
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


# ---------------------------------------------------------------------------
# What a path expression can be. The analyzer follows a value through the assignments of its
# function and module (and the call sites of nested helpers) and keeps, for every possible value,
# one of these; a write is accepted only when every possible value lies inside the run directory.

ANY = "\x00"  # an unknown stretch of text: may hold '/', '..', anything
SAFE = "\x01"  # unknown text without '/' that is never '.' or '..' (a number, a directory entry)
RUN, LAB, TEXT, NUM, MEM, FILE, UNKNOWN = "run", "lab", "text", "num", "mem", "file", "unknown"
DEPTH_CAP = 4  # components below a root that are counted (deeper paths count as this deep)
MAX_VALUES = 32  # more possible values than this: unknown
FIXPOINT_ROUNDS = 8  # a variable that grows with every round of its own assignments: unknown
MAX_EVAL_DEPTH = 48
STEP_BUDGET = 200_000  # evaluation steps per module; spent, everything is unknown (and refused)


@dataclass(frozen=True)
class _Value:
    kind: str  # RUN: the run dir or below; LAB: the lab dir or below (through __file__); TEXT: a string
    depth: int = 0  # RUN/LAB: components below the root (capped at DEPTH_CAP)
    text: str = ""  # TEXT: the string (ANY/SAFE for unknown parts); RUN/LAB: the last component, or
    # "/" when the path ends in a separator (what is appended next starts a new component)
    inner: "_Value | None" = None  # FILE: what the file object was opened on


_UNKNOWN = _Value(UNKNOWN)
_NUMBER = _Value(NUM)
_MEMORY = _Value(MEM)
_RUN_ROOT = _Value(RUN)
_LAB_ROOT = _Value(LAB)
_THIS_FILE = _Value(LAB, 1, "train.py")
_ONLY_UNKNOWN = frozenset({_UNKNOWN})
_EMPTY: frozenset = frozenset()


def _text(s: str) -> _Value:
    return _Value(TEXT, text=s)


def _as_text(v: _Value) -> _Value:
    return _text(SAFE) if v.kind == NUM else v


def _descend(base: _Value, relative: str, trailing: bool | None = None) -> _Value:
    """`relative` (no leading '/') below a RUN or LAB value; unknown if it could climb out."""
    if ANY in relative:
        return _UNKNOWN
    depth, name = base.depth, base.text
    components = relative.split("/")
    for i, component in enumerate(components):
        if component == "." and i == len(components) - 1 and i > 0 or relative == ".":
            name = "."  # a last '.' stays: what is appended next extends it ('/.' + '.' is '/..')
            continue
        if component in ("", "."):
            continue
        if component == "..":
            return _UNKNOWN
        depth, name = min(depth + 1, DEPTH_CAP), component
    if relative.endswith("/") if trailing is None else trailing:
        name = "/"
    return _Value(base.kind, depth, name)


def _join(a: _Value, b: _Value) -> _Value:
    """os.path.join(a, b), Path(a) / b."""
    a, b = _as_text(a), _as_text(b)
    if b.kind in (RUN, LAB):
        return b
    if b.kind != TEXT:
        return _UNKNOWN
    t = b.text
    if t.startswith("/"):
        return b  # an absolute part starts the path afresh
    if t.startswith(ANY):
        return _UNKNOWN
    if a.kind in (RUN, LAB):
        return _descend(a, t, trailing=t == "" or t.endswith("/"))
    if a.kind == TEXT:
        s = a.text
        return _text(t if not s else s + ("" if s.endswith("/") else "/") + t)
    return _UNKNOWN


def _concat(a: _Value, b: _Value) -> _Value:
    """a + b on strings (f-strings, format, %)."""
    a, b = _as_text(a), _as_text(b)
    if a.kind == TEXT and b.kind == TEXT:
        return _text(a.text + b.text)
    if a.kind in (RUN, LAB) and b.kind == TEXT:
        t = b.text
        if t == "":
            return a
        if t.startswith("/"):
            return _descend(a, t[1:], trailing=t.endswith("/"))
        if a.text == "/":
            return _descend(_Value(a.kind, a.depth, ""), t)  # after a separator: new components
        if a.depth == 0:
            return _UNKNOWN  # run_dir + "_old" names a sibling of the run directory
        first, slash, rest = t.partition("/")
        name = a.text + first
        if ANY in first or name in (".", ".."):
            return _UNKNOWN
        extended = _Value(a.kind, a.depth, name)
        return _descend(extended, rest) if slash else extended
    if a.kind == TEXT and a.text == "" and b.kind in (RUN, LAB):
        return b
    return _UNKNOWN


def _parent(v: _Value) -> _Value:
    if v.kind in (RUN, LAB):
        if v.depth == 0:
            return _UNKNOWN
        return _Value(v.kind, v.depth - 1, SAFE if v.depth > 1 else "")
    if v.kind == TEXT and ANY not in v.text:
        stripped = v.text.rstrip("/") or v.text
        head = stripped.rpartition("/")[0]
        return _text(head if head or not stripped.startswith("/") else "/")
    return _UNKNOWN


def _basename(v: _Value) -> _Value:
    if v.kind == FILE and v.inner is not None:
        v = v.inner
    if v.kind in (RUN, LAB) and v.depth > 0:
        return _text("" if v.text == "/" else v.text)
    if v.kind == TEXT and ANY not in v.text:
        return _text(v.text.rstrip("/").rpartition("/")[2])
    return _UNKNOWN


def _clean_component(text: str) -> bool:
    return bool(text) and "/" not in text and ANY not in text and text not in (".", "..")


def _importable(name: str) -> bool:
    return name.endswith(IMPORTABLE_SUFFIXES) and name != EVALUATOR_SOURCE


def _write_problem(values: frozenset) -> str | None:
    """Why a write to any of `values` might land outside the run directory, or None."""
    if not values:
        return "not provably inside the run directory"
    for v in values:
        if v.kind == FILE:
            v = v.inner or _UNKNOWN
        if v.kind == MEM:
            continue
        if v.kind != RUN:
            return "not provably inside the run directory"
        if v.depth > 0 and _importable(v.text):
            return "writes importable code"
    return None


def _read_problem(values: frozenset, data: bool) -> str | None:
    """Why reading any of `values` may reach data the trainer is not given, or None."""
    if not values:
        return "reads a path the analyzer cannot place"
    for v in values:
        if v.kind == FILE:
            v = v.inner or _UNKNOWN
        if v.kind in (MEM, RUN):
            continue
        if v.kind == LAB:
            if data:
                return "reads data the trainer is not given"
            continue
        if v.kind != TEXT:
            return "reads a path the analyzer cannot place"
        t = v.text
        if "://" in t:
            return "reads a URL"
        if ANY in t:
            return "reads a path the analyzer cannot place"
        components = t.split("/")
        if ".." in components or t.startswith("~"):
            return "reads outside the lab"
        if t.startswith("/"):
            if not data and SAFE not in t and SYSTEM_READABLE.fullmatch(t):
                continue
            return "reads outside the lab"
        if data:
            return "reads data the trainer is not given"
        if ".git" in components or ".charter" in components:
            return "reads git's or Charter's own files"
    return None


def _list_problem(values: frozenset) -> str | None:
    if not values:
        return "lists a directory the analyzer cannot place"
    for v in values:
        if v.kind in (RUN, LAB):
            continue
        if v.kind != TEXT or ANY in v.text:
            return "lists a directory the analyzer cannot place"
        components = v.text.split("/")
        if v.text.startswith(("/", "~")) or ".." in components or "://" in v.text:
            return "lists outside the lab"
        if ".git" in components or ".charter" in components:
            return "lists git's or Charter's own files"
    return None


def _cap(values) -> frozenset:
    values = frozenset(values)
    return _ONLY_UNKNOWN if len(values) > MAX_VALUES else values


def _product(op, left: frozenset, right: frozenset) -> frozenset:
    out = set()
    for a in left:
        for b in right:
            out.add(op(a, b))
            if len(out) > MAX_VALUES:
                return _ONLY_UNKNOWN
    return frozenset(out)


class _Scope:
    __slots__ = ("node", "parent", "kind", "bindings")

    def __init__(self, node: ast.AST, parent: "_Scope | None", kind: str):
        self.node, self.parent, self.kind = node, parent, kind
        self.bindings: dict[str, list[tuple]] = {}


@dataclass(frozen=True)
class _Finding:
    rule: str
    line: int
    evidence: str
    key: tuple  # (rule, exact source): what "the same construct" means when comparing old and new


def _fold(node: ast.AST | None, depth: int = 0, exact: bool = False) -> str | None:
    """The string value of a constant-ish expression ('o' + 's', f'{x}', ''.join([...])), or None.

    Not exact, unknown parts of f-strings read as '{}' and formatting is skipped: good enough to
    spot a string that names private data. Exact, anything not known is None: for names that are
    resolved (getattr, __import__, environment keys), where a guess would be an evasion."""
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
                inner = _fold(value.value, depth + 1, exact)
                if inner is None or (exact and (value.format_spec is not None or value.conversion not in (-1, 115))):
                    if exact:
                        return None
                    inner = "{}"
                parts.append(inner)
            else:
                parts.append(_fold(value, depth + 1, exact) or "")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left, depth + 1, exact), _fold(node.right, depth + 1, exact)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return None if exact else _fold(node.left, depth + 1)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        base = _fold(node.value, depth + 1, exact)
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
            return _fold(node.args[0], depth + 1, exact)
        if isinstance(func, ast.Attribute):
            base = _fold(func.value, depth + 1, exact)
            if base is None:
                return None
            args = [_fold(a, depth + 1, exact) for a in node.args]
            if func.attr == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
                items = [_fold(e, depth + 1, exact) for e in node.args[0].elts]
                return None if None in items else base.join(items)
            if any(a is None for a in args):
                return None
            if func.attr in ("lower", "upper", "strip", "lstrip", "rstrip", "decode", "encode") and len(args) <= 1:
                if func.attr in ("decode", "encode"):
                    return base
                return getattr(base, func.attr)(*args)
            if func.attr == "replace" and len(args) == 2:
                return base.replace(args[0], args[1])
            if func.attr == "format":
                return None if exact else base
    return None


NUMERIC_SPEC = set("bcdeEfFgGnoxX%")
NUMERIC_CALLS = {"int", "float", "len", "round", "abs", "min", "max", "sum", "hash", "id", "ord",
                 "os.getpid", "os.getppid", "os.cpu_count", "time.time", "time.perf_counter",
                 "time.monotonic", "time.time_ns", "time.perf_counter_ns", "math.floor", "math.ceil"}
IDENTITY_CALLS = {"str", "os.fspath", "os.fsdecode", "os.fsencode", "os.path.abspath", "os.path.normpath",
                  "os.path.realpath", "os.path.expanduser", "posixpath.abspath", "posixpath.normpath",
                  "posixpath.realpath", "posixpath.expanduser"}
CONSTANT_PATHS = {"os.sep": "/", "os.path.sep": "/", "posixpath.sep": "/", "os.curdir": ".",
                  "os.path.curdir": ".", "os.pardir": "..", "os.path.pardir": "..", "os.extsep": "."}
IN_MEMORY = {"sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__", "os.devnull", "os.path.devnull"}


class _Analyzer:
    """One pass over a module: resolves import aliases, then records every forbidden construct."""

    def __init__(self, text: str, tree: ast.Module):
        self.text = text
        self.tree = tree
        self.lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)
        self.aliases: dict[str, tuple[str, bool]] = {}  # local name -> (qualified name, came from an import)
        self.prepare_names: set[str] = set()  # local names bound to prepare or its contents
        self.time_names: set[str] = set()  # local names bound to time or its functions
        self.parents: dict[int, ast.AST] = {}
        self.findings: list[_Finding] = []
        # the data flow: scopes, every binding of every name, where each node lives
        self.module_scope = _Scope(tree, None, "module")
        self.scope_of: dict[int, _Scope] = {}
        self.function_scope: dict[int, _Scope] = {}
        self.all_bindings: dict[str, list[tuple]] = {}
        self.merged: set[str] = set()  # names declared global/nonlocal: all their bindings count everywhere
        self.import_names: set[str] = set()
        self.star_import = False  # a star import may rebind any builtin
        self.name_loads: list[ast.Name] = []
        self.flow_ready = False
        self.fold_depth = 0
        self.steps = STEP_BUDGET
        self.cache: dict[tuple, frozenset] = {}
        self.pending: dict[tuple, frozenset] = {}
        self.frame_index: dict[tuple, int] = {}
        self.frame_low: list[int] = []
        self.frame_hit: list[bool] = []
        self.site_cache: dict[int, list | None] = {}

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

    def scope_at(self, node: ast.AST) -> _Scope:
        return self.scope_of.get(id(node), self.module_scope)

    def fold(self, node: ast.AST | None) -> str | None:
        """The exact string `node` always evaluates to (following variables), or None."""
        if node is None:
            return None
        if not self.flow_ready or self.fold_depth > 8:
            return _fold(node, exact=True)
        self.fold_depth += 1
        try:
            values = self.values(node, self.scope_at(node))
        finally:
            self.fold_depth -= 1
        if len(values) == 1:
            (value,) = values
            if value.kind == TEXT and ANY not in value.text and SAFE not in value.text:
                return value.text
        return None

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
            if node.attr == "__call__":
                return self.resolve(node.value, depth + 1)
            base = self.resolve(node.value, depth + 1)
            return None if base is None else (_normal(base[0] + "." + node.attr), base[1])
        if isinstance(node, ast.Subscript):
            key = self.fold(node.slice)
            if key is None:
                return None
            value = node.value
            # sys.modules['os'] -> os; vars(os)['system'] / os.__dict__['system'] -> os.system
            if isinstance(value, ast.Attribute) and value.attr == "__dict__":
                base = self.resolve(value.value, depth + 1)
                return None if base is None else (_normal(base[0] + "." + key), base[1])
            if isinstance(value, ast.Call) and value.args:
                func = self.resolve(value.func, depth + 1)
                if func and func[0] == "vars":
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
                base, attr = self.resolve(node.args[0], depth + 1), self.fold(node.args[1])
                if base is not None and attr is not None:
                    return (_normal(base[0] + "." + attr), base[1])
            if func[0] in ("__import__", "importlib.import_module") and node.args:
                module = self.fold(node.args[0])
                if module is not None:
                    return (_normal(module), True)
        return None

    def certain(self, node: ast.AST) -> tuple[str, bool] | None:
        """resolve(), but only where nothing in the module rebinds the name it starts from: what the
        analyzer *accepts* (os.path.join keeps a path in the run dir, str() is the identity) must not
        rest on `str = lambda p: "/etc"` or `import json` followed by `json = Path(...)`."""
        base = node
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name):
            if not self.certain_name(base.id, set()):
                return None
        elif isinstance(base, ast.Call):  # getattr(os.path, "join"): as certain as its receiver
            callee = self.resolve(base.func)
            if not (callee and callee[0] == "getattr" and base.args and self.certain_name("getattr", set())
                    and self.certain(base.args[0])):
                return None
        elif isinstance(base, ast.Subscript):
            return None  # sys.modules[...], vars(m)[...]: refused as dynamic anyway
        return self.resolve(node)

    def certain_name(self, name: str, seen: set) -> bool:
        if name in self.merged or name in seen or len(seen) > 20:
            return False
        bindings = self.all_bindings.get(name, [])
        if name in self.aliases:
            target = self.aliases[name][0]
            imports = [b for b in bindings if b[0] == "import"]
            if imports and len(imports) == len(bindings):
                return all(b[3] == target or _normal(b[3]) == target for b in imports)
            if len(bindings) != 1 or bindings[0][0] != "expr":
                return False
            # a plain alias, bound exactly once, to something itself certain (j = os.path.join)
            value = bindings[0][1]
            while isinstance(value, ast.Attribute):
                value = value.value
            return isinstance(value, ast.Name) and self.certain_name(value.id, seen | {name})
        return not bindings and not self.star_import

    def method_of(self, func: ast.AST) -> tuple[ast.AST, str] | None:
        """(receiver, method name) of `x.m` or `getattr(x, 'm')`."""
        if isinstance(func, ast.Attribute):
            return func.value, func.attr
        if isinstance(func, ast.Call) and len(func.args) >= 2 and not _has_starred(func):
            callee = self.resolve(func.func)
            if callee and callee[0] == "getattr":
                name = self.fold(func.args[1])
                if name is not None:
                    return func.args[0], name
        return None

    # ---- scopes and bindings ----

    def bind(self, scope: _Scope, name: str, binding: tuple) -> None:
        scope.bindings.setdefault(name, []).append(binding)
        self.all_bindings.setdefault(name, []).append(binding)

    def bind_target(self, scope: _Scope, target: ast.AST, kind: str, value: ast.AST, path: tuple) -> None:
        if isinstance(target, ast.Name):
            self.bind(scope, target.id, (kind, value, scope, path))
        elif isinstance(target, (ast.Tuple, ast.List)):
            starred = any(isinstance(e, ast.Starred) for e in target.elts)
            for i, element in enumerate(target.elts):
                if starred:
                    self.bind_target(scope, element.value if isinstance(element, ast.Starred) else element,
                                     "unknown", value, ())
                else:
                    self.bind_target(scope, element, kind, value, path + (i,))
        elif isinstance(target, ast.Starred):
            self.bind_target(scope, target.value, "unknown", value, ())

    def build_scopes(self) -> None:
        stack: list[tuple[ast.AST, _Scope]] = [(self.tree, self.module_scope)]
        while stack:  # explicit stack: deeply nested expressions must not exhaust recursion
            node, scope = stack.pop()
            self.scope_of[id(node)] = scope
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                lambda_ = isinstance(node, ast.Lambda)
                inner = _Scope(node, scope, "lambda" if lambda_ else "function")
                self.function_scope[id(node)] = inner
                outer: list[ast.AST] = []
                if not lambda_:
                    kind = "unknown" if node.decorator_list else "def"
                    self.bind(scope, node.name, (kind, node, scope, ()))
                    outer += node.decorator_list + ([node.returns] if node.returns else [])
                a = node.args
                self.scope_of[id(a)] = inner
                outer += a.defaults + [d for d in a.kw_defaults if d is not None]
                for arg in a.posonlyargs + a.args + a.kwonlyargs:
                    self.bind(inner, arg.arg, ("param", node, inner, arg.arg))
                    self.scope_of[id(arg)] = inner
                    if arg.annotation is not None:
                        outer.append(arg.annotation)
                for arg in (a.vararg, a.kwarg):
                    if arg is not None:
                        self.bind(inner, arg.arg, ("unknown", node, inner, ()))
                        self.scope_of[id(arg)] = inner
                        if arg.annotation is not None:
                            outer.append(arg.annotation)
                body = node.body if isinstance(node.body, list) else [node.body]
                stack.extend((n, scope) for n in outer)
                stack.extend((n, inner) for n in body)
                continue
            if isinstance(node, ast.ClassDef):
                self.bind(scope, node.name, ("unknown", node, scope, ()))
                inner = _Scope(node, scope, "class")
                stack.extend((n, scope) for n in node.decorator_list + node.bases + node.keywords)
                stack.extend((n, inner) for n in node.body)
                continue
            self.note_bindings(node, scope)
            stack.extend((child, scope) for child in ast.iter_child_nodes(node))

    def note_bindings(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self.bind_target(scope, target, "expr", node.value, ())
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name):
                self.bind(scope, node.target.id, ("aug", node, scope, ()))
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.value is not None:
                self.bind(scope, node.target.id, ("expr", node.value, scope, ()))
        elif isinstance(node, ast.NamedExpr):
            self.bind_target(scope, node.target, "expr", node.value, ())
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            self.bind_target(scope, node.target, "iter", node.iter, ())
        elif isinstance(node, ast.withitem):
            if node.optional_vars is not None:
                self.bind_target(scope, node.optional_vars, "with", node.context_expr, ())
        elif isinstance(node, ast.ExceptHandler):
            if node.name:
                self.bind(scope, node.name, ("unknown", node, scope, ()))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    continue
                if isinstance(node, ast.Import):
                    local = alias.asname or alias.name.split(".")[0]
                    target = alias.name if alias.asname else local
                else:
                    local = alias.asname or alias.name
                    target = _normal(f"{node.module}.{alias.name}" if node.module else alias.name)
                self.bind(scope, local, ("import", node, scope, target))
                self.import_names.add(local)
            if any(alias.name == "*" for alias in node.names):
                self.star_import = True
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.merged.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            if node.name:
                self.bind(scope, node.name, ("unknown", node, scope, ()))
        elif isinstance(node, ast.MatchMapping):
            if node.rest:
                self.bind(scope, node.rest, ("unknown", node, scope, ()))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            self.name_loads.append(node)

    def lookup(self, name: str, scope: _Scope) -> tuple[object, list] | None:
        """(key, bindings) of the scope `name` refers to from `scope`, or None (builtin or unbound)."""
        if name in self.merged:
            return ("merged", self.all_bindings.get(name, []))
        current, first = scope, True
        while current is not None:
            if (first or current.kind != "class") and name in current.bindings:
                return (id(current), current.bindings[name])
            current, first = current.parent, False
        return None

    def local_function(self, name: str, scope: _Scope) -> ast.FunctionDef | None:
        found = self.lookup(name, scope)
        if found is None or len(found[1]) != 1 or found[1][0][0] != "def":
            return None
        return found[1][0][1]

    # ---- the values of expressions ----

    def fixpoint(self, key: tuple, compute) -> frozenset:
        """`compute()` to a fixed point over its own recursion (a variable built from itself)."""
        if key in self.cache:
            return self.cache[key]
        if key in self.frame_index:
            j = self.frame_index[key]
            self.frame_low[-1] = min(self.frame_low[-1], j)
            self.frame_hit[j] = True
            return self.pending[key]
        index = len(self.frame_low)
        self.frame_index[key] = index
        self.frame_low.append(index)
        self.frame_hit.append(False)
        self.pending[key] = _EMPTY
        result = _ONLY_UNKNOWN
        try:
            for _ in range(FIXPOINT_ROUNDS):
                self.frame_hit[index] = False
                new = compute()
                if not self.frame_hit[index] or new == self.pending[key]:
                    result = new
                    break
                self.pending[key] = new
        finally:
            low = self.frame_low.pop()
            self.frame_hit.pop()
            del self.frame_index[key], self.pending[key]
        if self.frame_low and low < index:
            self.frame_low[-1] = min(self.frame_low[-1], low)
        if low >= index:
            self.cache[key] = result  # depends on nothing still being computed
        return result

    def values(self, node: ast.AST | None, scope: _Scope, depth: int = 0) -> frozenset:
        """Every value `node` may have, as far as it matters for paths."""
        self.steps -= 1
        if node is None or depth > MAX_EVAL_DEPTH or self.steps < 0:
            return _ONLY_UNKNOWN
        d = depth + 1
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str):
                return frozenset({_text(value)})
            if isinstance(value, bytes):
                return frozenset({_text(value.decode("latin-1"))})
            if isinstance(value, (int, float)):
                return frozenset({_NUMBER})
            return _ONLY_UNKNOWN
        if isinstance(node, ast.Name):
            return self.name_values(node.id, scope, d)
        if isinstance(node, ast.JoinedStr):
            acc = frozenset({_text("")})
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    piece = self.formatted_values(part.value, part.conversion, part.format_spec, scope, d)
                else:
                    piece = self.values(part, scope, d)
                acc = _product(_concat, acc, piece)
            return acc
        if isinstance(node, ast.BinOp):
            return self.binop_values(node, scope, d)
        if isinstance(node, ast.UnaryOp):
            operand = self.values(node.operand, scope, d)
            return frozenset({_NUMBER}) if _all_numbers(operand) else _ONLY_UNKNOWN
        if isinstance(node, ast.IfExp):
            return _cap(self.values(node.body, scope, d) | self.values(node.orelse, scope, d))
        if isinstance(node, ast.BoolOp):
            out: set = set()
            after_run_dir = False
            for operand in node.values:
                found = self.values(operand, scope, d)
                if after_run_dir:
                    found = frozenset(_run_dir_default(v) for v in found)
                out |= found
                if isinstance(node.op, ast.Or) and self.is_run_dir_lookup(operand):
                    after_run_dir = True  # os.environ.get("RUN_DIR") or "run"
            return _cap(out)
        if isinstance(node, ast.NamedExpr):
            return self.values(node.value, scope, d)
        if isinstance(node, ast.Attribute):
            return self.attribute_values(node, scope, d)
        if isinstance(node, ast.Subscript):
            return self.subscript_values(node, scope, d)
        if isinstance(node, ast.Call):
            return self.call_values(node, scope, d)
        return _ONLY_UNKNOWN

    def name_values(self, name: str, scope: _Scope, depth: int) -> frozenset:
        found = self.lookup(name, scope)
        if found is None:
            return frozenset({_THIS_FILE}) if name == "__file__" else _ONLY_UNKNOWN
        key, bindings = found

        def compute():
            out: set = set()
            for binding in bindings:
                out |= self.binding_values(binding, depth)
                if len(out) > MAX_VALUES:
                    return _ONLY_UNKNOWN
            return frozenset(out)

        return self.fixpoint(("name", key, name), compute)

    def binding_values(self, binding: tuple, depth: int) -> frozenset:
        kind, node, scope, extra = binding
        if kind == "expr":
            return self.element_values(node, scope, extra, depth)
        if kind == "aug":
            left = self.name_values(node.target.id, scope, depth + 1)
            right = self.values(node.value, scope, depth + 1)
            if isinstance(node.op, ast.Add):
                return _product(_concat, left, right)
            if isinstance(node.op, ast.Div):
                return _product(_join, left, right)
            return frozenset({_NUMBER}) if _all_numbers(left) and _all_numbers(right) else _ONLY_UNKNOWN
        if kind == "iter":
            return self.iter_values(node, scope, extra, depth + 1)
        if kind == "with":
            if extra:
                return _ONLY_UNKNOWN
            found = self.values(node, scope, depth + 1)
            callee = self.certain(node.func) if isinstance(node, ast.Call) else None
            if callee and callee[0] == "tempfile.TemporaryDirectory":  # `as` gives the directory's name
                found = frozenset(v.inner if v.kind == FILE and v.inner else v for v in found)
            return found
        if kind == "param":
            return self.param_values(node, extra, depth + 1)
        return _ONLY_UNKNOWN

    def element_values(self, node: ast.AST, scope: _Scope, path: tuple, depth: int) -> frozenset:
        """The value at `path` inside a literal tuple or list (`a, b = x, y`)."""
        while path:
            if isinstance(node, (ast.Tuple, ast.List)) and not any(isinstance(e, ast.Starred) for e in node.elts) \
                    and path[0] < len(node.elts):
                node, path = node.elts[path[0]], path[1:]
            else:
                return _ONLY_UNKNOWN
        return self.values(node, scope, depth)

    def iter_values(self, node: ast.AST, scope: _Scope, path: tuple, depth: int) -> frozenset:
        """The values a for loop over `node` binds (literal sequences, range, listings)."""
        if depth > MAX_EVAL_DEPTH:
            return _ONLY_UNKNOWN
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return _ONLY_UNKNOWN
            out: set = set()
            for element in node.elts:
                out |= self.element_values(element, scope, path, depth + 1)
            return _cap(out)
        if not isinstance(node, ast.Call) or _has_starred(node):
            return _ONLY_UNKNOWN
        callee = self.certain(node.func)
        q = callee[0] if callee else None
        args = node.args
        if q == "range":
            return frozenset({_NUMBER}) if not path else _ONLY_UNKNOWN
        if q == "enumerate" and args:
            if path == (0,):
                return frozenset({_NUMBER})
            if path and path[0] == 1:
                return self.iter_values(args[0], scope, path[1:], depth + 1)
            return _ONLY_UNKNOWN
        if q in ("sorted", "reversed", "list", "tuple", "set") and len(args) == 1:
            return self.iter_values(args[0], scope, path, depth + 1)
        if path:
            return _ONLY_UNKNOWN
        if q == "os.listdir":
            return frozenset({_text(SAFE)})  # entry names: no '/', never '.' or '..'
        if q in ("glob.glob", "glob.iglob") and args and not node.keywords:
            return frozenset(_Value(v.kind, v.depth, SAFE) if v.kind in (RUN, LAB) and v.depth > 0 else _UNKNOWN
                             for v in self.values(args[0], scope, depth + 1))
        if isinstance(node.func, ast.Attribute) and not (callee and callee[1]) \
                and node.func.attr in ("iterdir", "glob", "rglob"):
            if node.func.attr != "iterdir":
                pattern = self.fold(args[0]) if len(args) == 1 else None
                if pattern is None or _list_problem(frozenset({_text(pattern)})):
                    return _ONLY_UNKNOWN
            return frozenset(_Value(v.kind, min(v.depth + 1, DEPTH_CAP), SAFE) if v.kind in (RUN, LAB) else _UNKNOWN
                             for v in self.values(node.func.value, scope, depth + 1))
        return _ONLY_UNKNOWN

    def param_values(self, function: ast.AST, name: str, depth: int) -> frozenset:
        """A parameter of a helper nested in a function: whatever its call sites pass."""
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return _ONLY_UNKNOWN
        home = self.scope_of.get(id(function))
        # module-level functions can be called from outside (the evaluator calls config.json's entry
        # with config.json's kwargs), methods through any object: their parameters are unknown
        if home is None or home.kind in ("module", "class") or function.name in self.merged:
            return _ONLY_UNKNOWN
        own = home.bindings.get(function.name, [])
        if len(own) != 1 or own[0][1] is not function or own[0][0] != "def":
            return _ONLY_UNKNOWN
        sites = self.call_sites(function, home)
        if sites is None:
            return _ONLY_UNKNOWN
        a = function.args
        positional = [p.arg for p in a.posonlyargs + a.args]
        keyword_only = [p.arg for p in a.kwonlyargs]
        if name in positional:
            index = positional.index(name)
            first_default = len(positional) - len(a.defaults)
            default = a.defaults[index - first_default] if index >= first_default else None
        elif name in keyword_only:
            index, default = None, a.kw_defaults[keyword_only.index(name)]
        else:
            return _ONLY_UNKNOWN
        out: set = set()
        for call in sites:
            if _has_starred(call):
                return _ONLY_UNKNOWN
            call_scope = self.scope_at(call)
            if index is not None and index < len(call.args):
                out |= self.values(call.args[index], call_scope, depth)
                continue
            keyword = next((k for k in call.keywords if k.arg == name), None)
            if keyword is not None:
                out |= self.values(keyword.value, call_scope, depth)
            elif default is not None:
                out |= self.values(default, home, depth)
        return _cap(out)

    def call_sites(self, function: ast.AST, home: _Scope) -> list | None:
        """Every call of a nested helper, or None when it is also used as a value."""
        if id(function) in self.site_cache:
            return self.site_cache[id(function)]
        own = home.bindings.get(function.name)
        sites: list | None = []
        for load in self.name_loads:
            if load.id != function.name:
                continue
            found = self.lookup(load.id, self.scope_at(load))
            if found is None or found[1] is not own:
                continue
            parent = self.parents.get(id(load))
            if isinstance(parent, ast.Call) and parent.func is load:
                sites.append(parent)
            else:
                sites = None
                break
        self.site_cache[id(function)] = sites
        return sites

    def return_values(self, function: ast.AST, depth: int) -> frozenset:
        def compute():
            if not isinstance(function, ast.FunctionDef):
                return _ONLY_UNKNOWN
            inner = self.function_scope[id(function)]
            returns, stack = [], list(function.body)
            while stack:
                node = stack.pop()
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                    continue
                if isinstance(node, (ast.Yield, ast.YieldFrom)):
                    return _ONLY_UNKNOWN
                if isinstance(node, ast.Return) and node.value is not None:
                    returns.append(node.value)
                stack.extend(ast.iter_child_nodes(node))
            out: set = set()
            for value in returns:
                out |= self.values(value, inner, depth + 1)
            return _cap(out)

        return self.fixpoint(("return", id(function)), compute)

    def formatted_values(self, value: ast.AST, conversion: int, spec: ast.AST | None, scope: _Scope,
                         depth: int) -> frozenset:
        text = ""
        if spec is not None:
            text = _fold(spec, exact=True)
            if text is None:
                return _ONLY_UNKNOWN
            if text and text[-1] in NUMERIC_SPEC:
                return frozenset({_NUMBER})
        found = self.values(value, scope, depth)
        if _all_numbers(found):
            return frozenset({_NUMBER})
        if text or conversion not in (-1, 115):  # padding or repr() changes the text
            return _ONLY_UNKNOWN
        return found

    def binop_values(self, node: ast.BinOp, scope: _Scope, depth: int) -> frozenset:
        if isinstance(node.op, ast.Mod):
            template = self.fold(node.left)
            if template is not None:
                return self.percent_values(template, node.right, scope, depth)
        left = self.values(node.left, scope, depth)
        right = self.values(node.right, scope, depth)
        if _all_numbers(left) and _all_numbers(right):
            return frozenset({_NUMBER})
        if isinstance(node.op, ast.Add):
            return _product(_concat, left, right)
        if isinstance(node.op, ast.Div):
            return _product(_join, left, right)
        return _ONLY_UNKNOWN

    def percent_values(self, template: str, right: ast.AST, scope: _Scope, depth: int) -> frozenset:
        args = right.elts if isinstance(right, ast.Tuple) else [right]
        if isinstance(right, ast.Dict) or any(isinstance(a, ast.Starred) for a in args):
            return _ONLY_UNKNOWN
        acc, used, position = frozenset({_text("")}), 0, 0
        for m in re.finditer(r"%(\([^)]*\))?([-#0 +]*)(\*|\d+)?(\.(?:\*|\d+))?[hlL]?(.)", template, re.DOTALL):
            acc = _product(_concat, acc, frozenset({_text(template[position:m.start()])}))
            position = m.end()
            conversion = m.group(5)
            if conversion == "%":
                acc = _product(_concat, acc, frozenset({_text("%")}))
                continue
            if m.group(1) or used >= len(args) or "*" in (m.group(3) or "") + (m.group(4) or ""):
                return _ONLY_UNKNOWN
            found = self.values(args[used], scope, depth)
            used += 1
            if conversion in "diouxXeEfFgG" or _all_numbers(found):
                piece = frozenset({_NUMBER})
            elif conversion == "s" and not m.group(3):
                piece = found
            else:
                return _ONLY_UNKNOWN
            acc = _product(_concat, acc, piece)
        if used != len(args):
            return _ONLY_UNKNOWN
        return _product(_concat, acc, frozenset({_text(template[position:])}))

    def format_values(self, template: str, call: ast.Call, scope: _Scope, depth: int) -> frozenset:
        if _has_starred(call):
            return _ONLY_UNKNOWN
        try:
            parsed = list(string.Formatter().parse(template))
        except (ValueError, TypeError):
            return _ONLY_UNKNOWN
        acc, auto = frozenset({_text("")}), 0
        for literal, field, spec, conversion in parsed:
            acc = _product(_concat, acc, frozenset({_text(literal)}))
            if field is None:
                continue
            if field == "":
                node = call.args[auto] if auto < len(call.args) else None
                auto += 1
            elif field.isdigit():
                node = call.args[int(field)] if int(field) < len(call.args) else None
            elif field.isidentifier():
                node = next((k.value for k in call.keywords if k.arg == field), None)
            else:
                return _ONLY_UNKNOWN  # {0.attr} or {0[key]}
            if node is None or (spec and "{" in spec):
                return _ONLY_UNKNOWN
            found = self.values(node, scope, depth)
            if (spec and spec[-1] in NUMERIC_SPEC) or _all_numbers(found):
                piece = frozenset({_NUMBER})
            elif not spec and conversion in (None, "s"):
                piece = found
            else:
                return _ONLY_UNKNOWN
            acc = _product(_concat, acc, piece)
        return acc

    def is_run_dir_lookup(self, node: ast.AST) -> bool:
        """os.environ["RUN_DIR"], os.environ.get("RUN_DIR", ...), os.getenv("RUN_DIR", ...)."""
        if isinstance(node, ast.Subscript):
            base = self.certain(node.value)
            return bool(base) and base[0] in ENV_MAPPINGS and self.fold(node.slice) == "RUN_DIR"
        if isinstance(node, ast.Call) and node.args and not _has_starred(node):
            callee = self.certain(node.func)
            return bool(callee) and callee[0] in ENV_GETTERS and self.fold(node.args[0]) == "RUN_DIR"
        return False

    def attribute_values(self, node: ast.Attribute, scope: _Scope, depth: int) -> frozenset:
        resolved = self.resolve(node)
        if resolved and resolved[1]:
            resolved = self.certain(node)
            if resolved is None:
                return _ONLY_UNKNOWN
            if resolved[0] in CONSTANT_PATHS:
                return frozenset({_text(CONSTANT_PATHS[resolved[0]])})
            if resolved[0] in IN_MEMORY:
                return frozenset({_MEMORY})
            return _ONLY_UNKNOWN
        if node.attr == "parent":
            return frozenset(_parent(v) for v in self.values(node.value, scope, depth))
        if node.attr == "name":  # a file object's name is its path; a path's name its last component
            return frozenset((v.inner or _UNKNOWN) if v.kind == FILE else _basename(v)
                             for v in self.values(node.value, scope, depth))
        if node.attr in ("stem", "suffix"):
            out = set()
            for v in self.values(node.value, scope, depth):
                base = _basename(v)
                if base.kind != TEXT or ANY in base.text:
                    return _ONLY_UNKNOWN
                pure = PurePosixPath(base.text or ".")
                out.add(_text(pure.stem if node.attr == "stem" else pure.suffix))
            return frozenset(out)
        return _ONLY_UNKNOWN

    def subscript_values(self, node: ast.Subscript, scope: _Scope, depth: int) -> frozenset:
        base = self.certain(node.value)
        if base and base[0] in ENV_MAPPINGS:
            return frozenset({_RUN_ROOT}) if self.fold(node.slice) == "RUN_DIR" else _ONLY_UNKNOWN
        index = node.slice
        container = node.value
        if isinstance(container, (ast.Tuple, ast.List)) and isinstance(index, ast.Constant) \
                and isinstance(index.value, int) and not isinstance(index.value, bool) \
                and not any(isinstance(e, ast.Starred) for e in container.elts) \
                and -len(container.elts) <= index.value < len(container.elts):
            return self.values(container.elts[index.value], scope, depth)
        if isinstance(container, ast.Dict) and None not in container.keys:
            key = self.fold(index)
            if key is not None:
                chosen = [v for k, v in zip(container.keys, container.values) if self.fold(k) == key]
                if chosen:
                    return self.values(chosen[-1], scope, depth)
        return _ONLY_UNKNOWN

    def call_values(self, node: ast.Call, scope: _Scope, depth: int) -> frozenset:
        func = node.func
        if isinstance(func, ast.Name):
            helper = self.local_function(func.id, scope)
            if helper is not None:
                return self.return_values(helper, depth)
        resolved = self.certain(func)
        q = resolved[0] if resolved else None
        args = node.args
        starred = _has_starred(node)
        if q in NUMERIC_CALLS:
            return frozenset({_NUMBER})
        if q in ("os.path.join", "posixpath.join") or q in PATH_CLASSES:
            if starred or node.keywords:
                return _ONLY_UNKNOWN
            if not args:
                return frozenset({_text(".")}) if q in PATH_CLASSES else _ONLY_UNKNOWN
            acc = self.values(args[0], scope, depth)
            for arg in args[1:]:
                acc = _product(_join, acc, self.values(arg, scope, depth))
            return acc
        if starred:
            return _ONLY_UNKNOWN
        if q in IDENTITY_CALLS:
            if q == "str" and not args:
                return frozenset({_text("")})
            return self.values(args[0], scope, depth) if len(args) == 1 else _ONLY_UNKNOWN
        if q in ("os.path.dirname", "posixpath.dirname") and len(args) == 1:
            return frozenset(_parent(v) for v in self.values(args[0], scope, depth))
        if q in ("os.path.basename", "posixpath.basename") and len(args) == 1:
            return frozenset(_basename(v) for v in self.values(args[0], scope, depth))
        if q in ("os.getcwd", "os.getcwdb", "pathlib.Path.cwd"):
            return frozenset({_LAB_ROOT})
        if q == "pathlib.Path.home":
            return frozenset({_text("~")})
        if q == "tempfile.gettempdir":
            return frozenset({_text("/tmp")})
        if q in TEMPFILE or q == "tempfile.mktemp":
            where = _argument(node, TEMPFILE.get(q, (2,))[0], "dir")
            inside = frozenset(_Value(RUN, min(v.depth + 1, DEPTH_CAP), SAFE) if v.kind == RUN else _UNKNOWN
                               for v in (self.values(where, scope, depth) if where is not None else _ONLY_UNKNOWN))
            if q in ("tempfile.mkdtemp", "tempfile.mktemp"):
                return inside
            if q == "tempfile.mkstemp":
                return _ONLY_UNKNOWN
            return frozenset(_Value(FILE, inner=v) for v in inside)
        if q in ENV_GETTERS:
            if not args or self.fold(args[0]) != "RUN_DIR":
                return _ONLY_UNKNOWN
            default = args[1] if len(args) > 1 else _keyword(node, "default")
            out = {_RUN_ROOT}
            if default is not None:
                out |= {_run_dir_default(v) for v in self.values(default, scope, depth)}
            return _cap(out)
        if q in ("io.BytesIO", "io.StringIO", "_io.BytesIO", "_io.StringIO"):
            return frozenset({_MEMORY})
        if q in FILE_OPENERS or q == "os.open":
            path_index, path_keyword = FILE_OPENERS[q][:2] if q in FILE_OPENERS else (0, "path")
            path = _argument(node, path_index, path_keyword) or _keyword(node, "fileobj")
            found = self.values(path, scope, depth) if path is not None else _ONLY_UNKNOWN
            return frozenset(v if v.kind == FILE else _Value(FILE, inner=v) for v in found)
        if q in ("os.fdopen", "os.dup") and args:
            return self.values(args[0], scope, depth)
        if isinstance(func, ast.Attribute) and not (resolved and resolved[1]):
            base = self.resolve(func.value)
            if base is None or (not base[1] and base[0].split(".")[0] not in BUILTIN_NAMES):
                # a method of a value: Path(x).joinpath(...), p.with_suffix(...), "{}/x".format(...)
                return self.method_values(node, func.value, func.attr, scope, depth)
        return _ONLY_UNKNOWN

    def method_values(self, node: ast.Call, receiver: ast.AST, attr: str, scope: _Scope, depth: int) -> frozenset:
        args = node.args
        if attr == "joinpath" and not node.keywords:
            acc = self.values(receiver, scope, depth)
            for arg in args:
                acc = _product(_join, acc, self.values(arg, scope, depth))
            return acc
        if attr in ("resolve", "absolute", "expanduser", "as_posix", "__fspath__", "__str__") and not args:
            return self.values(receiver, scope, depth)
        if attr in ("with_suffix", "with_name", "with_stem") and len(args) == 1:
            new = self.fold(args[0])
            if new is None:
                return _ONLY_UNKNOWN
            return frozenset(_renamed(v, attr, new) for v in self.values(receiver, scope, depth))
        if attr == "format":
            template = self.fold(receiver)
            return _ONLY_UNKNOWN if template is None else self.format_values(template, node, scope, depth)
        if attr == "join" and len(args) == 1 and isinstance(args[0], (ast.List, ast.Tuple)) \
                and not any(isinstance(e, ast.Starred) for e in args[0].elts):
            separator = self.fold(receiver)
            if separator is None:
                return _ONLY_UNKNOWN
            acc = frozenset({_text("")})
            for i, element in enumerate(args[0].elts):
                if i:
                    acc = _product(_concat, acc, frozenset({_text(separator)}))
                acc = _product(_concat, acc, self.values(element, scope, depth))
            return acc
        if attr == "fileno" and not args:
            return frozenset(v if v.kind == FILE else _UNKNOWN for v in self.values(receiver, scope, depth))
        if attr == "open":
            return frozenset(_Value(FILE, inner=v) for v in self.values(receiver, scope, depth))
        if attr in ("encode", "decode", "lower", "upper", "rstrip", "strip", "lstrip", "replace"):
            texts = [self.fold(a) for a in args]
            if None in texts or node.keywords:
                return _ONLY_UNKNOWN
            out = set()
            for v in self.values(receiver, scope, depth):
                if attr in ("encode", "decode", "lower", "upper") and v.kind == TEXT:
                    out.add(v if attr in ("encode", "decode") else _text(getattr(v.text, attr)()))
                elif attr == "rstrip" and texts == ["/"] and v.kind in (RUN, LAB):
                    out.add(v)
                elif v.kind == TEXT and ANY not in v.text and SAFE not in v.text:
                    try:
                        out.add(_text(getattr(v.text, attr)(*texts)))
                    except (TypeError, ValueError):
                        return _ONLY_UNKNOWN
                else:
                    return _ONLY_UNKNOWN
            return frozenset(out)
        return _ONLY_UNKNOWN

    # ---- the pass ----

    def run(self) -> list[_Finding]:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        self.build_scopes()
        self.collect_aliases()
        self.flow_ready = True
        stack = [self.tree]
        while stack:  # explicit stack: deeply nested expressions must not exhaust recursion
            node = stack.pop()
            self.visit(node)
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
        return self.findings

    def collect_aliases(self) -> None:
        for name, bindings in self.all_bindings.items():
            targets = {b[3] for b in bindings if b[0] == "import"}
            if len(targets) > 1:  # `import os as j` here, `import json as j` there: resolution would guess
                node = next(b[1] for b in bindings if b[0] == "import")
                self.add("dynamic_import", node, note=f"{name} names different modules")
        for node in ast.walk(self.tree):
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
                    qualified = _normal(f"{module}.{alias.name}" if module else alias.name)
                    self.aliases[alias.asname or alias.name] = (qualified, True)
                    self.note_binding(alias.asname or alias.name, qualified)
        # plain aliases (`run = subprocess.run`, `o = open`): a name bound exactly once, outside a
        # class body, to something that resolves; to a fixed point so chains resolve too
        for _ in range(3):
            for name, bindings in self.all_bindings.items():
                if len(bindings) != 1 or name in self.merged or name in self.import_names:
                    continue
                kind, value, scope, path = bindings[0]
                if kind != "expr" or path or scope.kind == "class":
                    continue
                resolved = self.resolve(value)
                if resolved and (resolved[1] or resolved[0].split(".")[0] in BUILTIN_NAMES):
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
                for table in IO_TABLES:
                    if any(key.startswith(module + ".") for key in table):
                        self.add("data_access" if table in (DATA_READERS, GENERAL_READERS, LISTERS) else "file_write",
                                 node, note="star import")
                if module == "prepare":
                    self.add("data_access", node, note="star import from prepare")
        for module in modules:
            for rule, entries in RULE_NAMES.items():
                if matches(module, entries) and module not in NETWORK_ALLOWED:
                    self.add(rule, node)
            if module.startswith("prepare.") and PREPARE_PRIVATE.search(module.split(".", 1)[1]):
                self.add("data_access", node)

    def visit_reference(self, node: ast.AST) -> None:
        parent = self.parents.get(id(node))
        if isinstance(node, ast.Name) and node.id in ESCAPE_NAMES:
            self.add("dynamic_import", node, note="interpreter internals")
        if isinstance(node, ast.Attribute):
            if node.attr in ESCAPE_ATTRIBUTES:
                self.add("dynamic_import", node, note="interpreter internals")
            if node.attr == "__dict__":
                base = self.resolve(node.value)
                if base and (base[1] or base[0] == "builtins"):
                    self.add("dynamic_import", node, note="module namespace")
            called = isinstance(parent, ast.Call) and parent.func is node
            if node.attr in NETWORK_METHODS:
                self.add("network", node, parent if called else node)
            if not called and isinstance(node.ctx, ast.Load):
                self.judge_method_as_value(node, node.attr)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            return  # `p = os.popen`: the value is judged, not the new name
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return  # judged as part of the longer name (torch.distributed.is_available, not torch.distributed)
        resolved = self.resolve(node)
        if resolved is None:
            return
        qualified, from_import = resolved
        if not from_import and qualified.split(".")[0] not in BUILTIN_NAMES:
            return  # a local variable that happens to be called `code` or `datasets`
        is_called = isinstance(parent, ast.Call) and parent.func is node
        evidence = parent if is_called else node
        if qualified not in NETWORK_ALLOWED:
            for rule, entries in RULE_NAMES.items():
                if matches(qualified, entries):
                    self.add(rule, node, evidence)
        if not is_called and not self.is_alias_assignment(node):
            if qualified in INDIRECT_BUILTINS:
                self.add("dynamic_import", node, note="builtin used as a value")
            if qualified in FILE_OPENERS or qualified in FILE_WRITERS or qualified in TEMPFILE:
                self.add("file_write", node, note="file writer used as a value")
            if qualified in DATA_READERS or qualified in GENERAL_READERS or qualified in LISTERS \
                    or qualified == "mmap.mmap":
                self.add("data_access", node, note="file reader used as a value")
            if from_import and qualified in DANGEROUS_MODULES and isinstance(node, (ast.Name, ast.Attribute)) \
                    and isinstance(node.ctx, ast.Load) and not self.is_introspection_argument(node):
                self.add("dynamic_import", node, note="module used as a value")
        if qualified.startswith("prepare."):
            name = qualified.split(".", 1)[1]
            if PREPARE_PRIVATE.search(name):
                self.add("data_access", node, evidence)
            if is_called and PREPARE_METRIC_CALL.search(name):
                self.add("evaluation", node, evidence)

    def judge_method_as_value(self, node: ast.AST, attr: str) -> None:
        """`w = p.write_text; w(...)` or `map(Path.write_text, ...)`: a writer handed around."""
        if attr in RECEIVER_WRITE_METHODS or attr in LINK_METHODS or attr in ARGUMENT_WRITE_METHODS:
            self.add("file_write", node, note="write method used as a value")
        if attr in PATH_READ_METHODS or attr in PATH_LIST_METHODS:
            self.add("data_access", node, note="read method used as a value")

    def is_alias_assignment(self, node: ast.AST) -> bool:
        parent = self.parents.get(id(node))
        if not (isinstance(parent, ast.Assign) and parent.value is node and all(
                isinstance(t, ast.Name) for t in parent.targets)):
            return False
        resolved = self.resolve(node)
        return all(self.aliases.get(t.id) == resolved for t in parent.targets)

    def is_introspection_argument(self, node: ast.AST) -> bool:
        """`getattr(os, "sep")`, `hasattr(torch, "compile")`: the module is named, not handed on."""
        parent = self.parents.get(id(node))
        if not (isinstance(parent, ast.Call) and parent.args and parent.args[0] is node):
            return False
        callee = self.resolve(parent.func)
        return bool(callee) and callee[0] in ("getattr", "hasattr", "setattr", "delattr", "vars", "dir",
                                              "isinstance", "issubclass")

    def visit_call(self, call: ast.Call) -> None:
        resolved = self.resolve(call.func)
        qualified = resolved[0] if resolved else None
        parent = self.parents.get(id(call))
        if qualified in ("setattr", "delattr") and call.args:
            target = self.resolve(call.args[0])
            if target and _is_module_like(target):
                attr = self.fold(call.args[1]) if len(call.args) > 1 else None
                value = call.args[2] if qualified == "setattr" and len(call.args) > 2 else None
                self.judge_module_patch(call, target[0], attr or "?", value)
                if target[0].split(".")[0] in ("torch", "prepare", "builtins"):
                    self.add("dynamic_import", call, note="setattr on a module")
        if qualified == "getattr":
            name = self.fold(call.args[1]) if len(call.args) >= 2 and not _has_starred(call) else None
            receiver = call.args[0] if call.args else None
            if name is None and not (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")):
                self.add("dynamic_import", call, note="computed attribute name")
            elif name is not None:
                if name in NETWORK_METHODS:
                    self.add("network", call)
                if not (isinstance(parent, ast.Call) and parent.func is call):
                    self.judge_method_as_value(call, name)
        if qualified == "vars" and call.args:
            target = self.resolve(call.args[0])
            if target and (target[1] or target[0] == "builtins"):
                self.add("dynamic_import", call, note="module namespace")
        if qualified == "torch.load":
            for keyword in call.keywords:
                if keyword.arg == "weights_only" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
                    self.add("dynamic_import", call, note="unpickling runs code")
        if qualified == "numpy.load":
            for keyword in call.keywords:
                if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    self.add("dynamic_import", call, note="unpickling runs code")
        self.judge_env_call(call, qualified)
        if qualified and qualified.endswith(".patch") and qualified[:-len(".patch")].startswith(TORCH_CONFIG_PREFIXES):
            for keyword in call.keywords:
                if keyword.arg is not None:
                    self.judge_module_patch(call, qualified[:-len(".patch")], keyword.arg, keyword.value)
        if qualified and (matches(qualified, DATA_ACCESS) or any(qualified in t for t in READ_TABLES)):
            self.judge_url_arguments(call)
        func_attr = call.func.attr if isinstance(call.func, ast.Attribute) else None
        if qualified == "print" or func_attr == "write":
            for arg in call.args[:1]:
                text = _fold(arg)
                if text is not None and FAKE_METRIC_LINE.search(text):
                    self.add("evaluation", call, note="prints a metric line")
        self.judge_io(call, qualified, self.method_of(call.func))

    def judge_url_arguments(self, call: ast.Call) -> None:
        """A reader handed a URL (pandas.read_csv("https://..."), numpy.loadtxt) fetches it."""
        for arg in call.args + [k.value for k in call.keywords]:
            if any(v.kind == TEXT and re.match(r"[A-Za-z][\w+.-]*://", v.text)
                   for v in self.values(arg, self.scope_at(arg))):
                self.add("network", call, note="reads a URL")
                return

    # ---- the environment ----

    def judge_env_call(self, call: ast.Call, qualified: str | None) -> None:
        if qualified is None:
            return
        base, _, operation = qualified.rpartition(".")
        args = call.args
        pairs: list[tuple[object, ast.AST | None]] | None = None
        if base in ENV_MAPPINGS and operation in ENV_MUTATORS:
            if _has_starred(call):
                pairs = [(None, None)]
            elif operation in ("setdefault", "__setitem__"):
                pairs = [(args[0] if args else None, args[1] if len(args) > 1 else None)]
            elif operation in ("pop", "__delitem__"):
                pairs = [(args[0] if args else None, None)]
            elif operation in ("popitem", "clear"):
                pairs = [(None, None)]
            else:  # update
                pairs = []
                for arg in args:
                    if isinstance(arg, ast.Dict):
                        pairs += [(k, v) for k, v in zip(arg.keys, arg.values)]
                    else:
                        pairs.append((None, None))
                pairs += [(k.arg, k.value) for k in call.keywords]
        elif qualified == "os.putenv":
            pairs = [(args[0] if args else None, args[1] if len(args) > 1 else None)]
        elif qualified == "os.unsetenv":
            pairs = [(args[0] if args else None, None)]
        for key, value in pairs or []:
            self.judge_env_pair(call, key if isinstance(key, str) else self.fold(key), value)

    def judge_env_pair(self, statement: ast.AST, key: str | None, value: ast.AST | None) -> None:
        if key is None:
            self.add("file_write", statement, note="changes an environment variable the analyzer cannot name")
        elif key == "RUN_DIR":
            self.add("file_write", statement, note="redirects the run directory")
        elif key in CODE_ENV:
            self.add("dynamic_import", statement, note=f"sets {key}")
        elif value is not None and LOCATION_ENV.search(key.upper()):
            if _write_problem(self.values(value, self.scope_at(value))):
                self.add("file_write", statement, note=f"points {key} outside the run directory")

    # ---- file access ----

    def judge_io(self, call: ast.Call, q: str | None, method: tuple[ast.AST, str] | None) -> None:
        if q in FILE_OPENERS:
            self.judge_opener(call, q)
        elif q == "os.open":
            path = _argument(call, 0, "path")
            flags = _argument(call, 1, "flags")
            if flags is not None and self.read_only_flags(flags):
                self.check_read(call, [path])
            else:
                self.check_write(call, [path])
        elif q in TEMPFILE:
            self.judge_tempfile(call, q)
        elif q in EXTRACTORS:
            self.add("file_write", call, note="extracts an archive")
        elif q in IN_MEMORY_DATABASES and self.certain(call.func) \
                and self.fold(_argument(call, 0, "database")) in (":memory:", ""):
            return
        elif q in FILE_WRITERS:
            positions, keywords, required = FILE_WRITERS[q]
            if not positions and not keywords:
                if required:
                    kind = "links" if "link" in q else "special files"
                    self.add("file_write", call, note=f"{kind} are never allowed")
                return
            targets = _path_arguments(call, positions, keywords)
            if targets == [] and not required:
                return
            if q in COPY_SOURCES:
                self.check_read(call, _path_arguments(call, *COPY_SOURCES[q]) or [None])
            if self.check_write(call, targets or [None]) and q in COPIES_INTO_DIRECTORY:
                self.check_copied_name(call)
        elif q in DATA_READERS:
            self.check_read(call, _path_arguments(call, *DATA_READERS[q]) or [None], data=True)
        elif q in GENERAL_READERS:
            self.check_read(call, _path_arguments(call, *GENERAL_READERS[q]) or [None])
        elif q in LISTERS:
            positions, keywords, lab_by_default = LISTERS[q]
            targets = _path_arguments(call, positions, keywords)
            if targets is None or (not targets and not lab_by_default):
                targets = [None]
            root = _keyword(call, "root_dir") or _keyword(call, "dir_fd")
            self.check_list(call, targets + ([root] if root is not None else []))
        elif q == "mmap.mmap":
            first = _argument(call, 0, "fileno")
            if not (isinstance(first, ast.UnaryOp) and isinstance(first.op, ast.USub)
                    and isinstance(first.operand, ast.Constant) and first.operand.value == 1):
                self.add("data_access", call, note="maps a file into memory")
        elif q in ("fileinput.input", "fileinput.FileInput"):
            inplace = _argument(call, 1, "inplace")
            if inplace is not None and not (isinstance(inplace, ast.Constant) and not inplace.value):
                self.add("file_write", call, note="rewrites files in place")
        elif method is not None:
            self.judge_method(call, q, method)
        if (method is not None and method[1] in SQL_METHODS or q in ("duckdb.sql", "duckdb.query", "duckdb.execute")) \
                and self.uses_sql():
            self.judge_sql(call)
        if method is not None and method[1] in ("load_extension", "enable_load_extension"):
            self.add("dynamic_import", call, note="loads a shared library")

    def uses_sql(self) -> bool:
        return any(q.split(".")[0] in SQL_MODULES for q, _ in self.aliases.values())

    def judge_sql(self, call: ast.Call) -> None:
        statement = call.args[0] if call.args and not isinstance(call.args[0], ast.Starred) else _keyword(call, "query")
        text = self.fold(statement) if statement is not None else None
        if text is None:
            self.add("file_write", call, note="runs SQL the analyzer cannot read")
            return
        if SQL_WRITES.search(text):
            self.add("file_write", call, note="SQL that writes files")
        if SQL_CODE.search(text):
            self.add("dynamic_import", call, note="SQL that loads code")
        if SQL_NETWORK.search(text):
            self.add("network", call, note="SQL that fetches")

    def judge_opener(self, call: ast.Call, q: str) -> None:
        path_index, path_keyword, mode_index, mode_keyword, default, write_chars, data = FILE_OPENERS[q]
        mode_node = _argument(call, mode_index, mode_keyword)
        if mode_node is None and _has_starred(call):
            mode = None  # unknown: judged as a write
        elif mode_node is None:
            mode = default
        else:
            mode = self.fold(mode_node)
        if mode is not None:
            mode = NUMPY_MODES.get(mode, mode)
        path = _argument(call, path_index, path_keyword) or _keyword(call, "fileobj")
        if mode is None or set(mode) & set(write_chars):
            self.check_write(call, [path])
        else:
            self.check_read(call, [path], data=data)

    def read_only_flags(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value == 0 and not isinstance(node.value, bool)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.read_only_flags(node.left) and self.read_only_flags(node.right)
        resolved = self.certain(node)
        return bool(resolved) and resolved[0] in READ_ONLY_FLAGS

    def judge_tempfile(self, call: ast.Call, q: str) -> None:
        dir_index, name_indexes = TEMPFILE[q]
        where = None if _has_starred(call) else _argument(call, dir_index, "dir")
        if where is None or _write_problem(self.values(where, self.scope_at(where))):
            self.add("file_write", call, note="not provably inside the run directory")
            return
        for index, keyword in zip(name_indexes, ("suffix", "prefix")):
            node = _argument(call, index, keyword)
            if node is None:
                continue
            text = self.fold(node)
            if text is None or "/" in text or (keyword == "suffix" and _importable("x" + text)):
                self.add("file_write", call, note=f"a {keyword} the analyzer cannot place")
                return

    def judge_method(self, call: ast.Call, q: str | None, method: tuple[ast.AST, str]) -> None:
        receiver, attr = method
        args = list(call.args)
        on = self.certain(receiver)
        if on and on[1]:  # called on an imported module, class or function
            if on[0] in PATH_CLASSES:  # Path.write_text(p, ...): the path is the first argument
                receiver, args = (args[0] if args else None), args[1:]
            elif attr in ARGUMENT_WRITE_METHODS and q not in FILE_WRITERS:
                target = _path_arguments(call, [1 if attr == "dump" else 0], PATH_KEYWORDS)
                if target != []:
                    self.check_write(call, target or [None])
                return
            else:
                return
        if any(isinstance(a, ast.Starred) for a in args):
            if attr in RECEIVER_WRITE_METHODS or attr in ARGUMENT_WRITE_METHODS or attr in ("rename", "replace"):
                self.add("file_write", call, note="not provably inside the run directory")
            return
        if attr in LINK_METHODS:
            self.add("file_write", call, note="links are never allowed")
        elif attr in RECEIVER_WRITE_METHODS:
            self.check_write(call, [receiver])
        elif attr in ("rename", "replace"):
            none = isinstance(args[0], ast.Constant) and args[0].value is None if args else False
            if len(args) == 1 and not call.keywords and not none:  # Path.rename/replace(target); str.replace takes two
                self.check_write(call, [receiver, args[0]])
        elif attr in ARGUMENT_WRITE_METHODS:
            target = [args[0]] if args else _path_arguments(call, [], PATH_KEYWORDS)
            if target != []:
                self.check_write(call, target or [None])  # to_csv() without a path returns a string
        elif attr in EXTRACT_METHODS:
            self.add("file_write", call, note="extracts an archive")
        elif attr == "open":
            if self.is_write_mode_method(call):
                self.check_write(call, [receiver])
            elif self.is_pathlike(receiver):
                self.check_read(call, [receiver])
        elif attr in PATH_READ_METHODS:
            self.check_read(call, [receiver])
        elif attr in PATH_LIST_METHODS:
            self.check_list(call, [receiver] + (args[:1] if attr in ("glob", "rglob") else []))

    def check_write(self, call: ast.Call, targets: list | None) -> bool:
        for target in targets or [None]:
            values = self.values(target, self.scope_at(target)) if target is not None else _ONLY_UNKNOWN
            problem = _write_problem(values)
            if problem:
                self.add("file_write", call, note=problem)
                return False
        return True

    def check_copied_name(self, call: ast.Call) -> None:
        """shutil.copy(src, run_dir) names the copy after src: that name must not be importable."""
        destination = _path_arguments(call, [1], ["dst"]) or [None]
        if destination[0] is None:
            return
        if not any(v.kind == RUN and v.depth == 0 for v in self.values(destination[0], self.scope_at(call))):
            return
        source = (_path_arguments(call, [0], ["src"]) or [None])[0]
        names = self.values(source, self.scope_at(call)) if source is not None else _ONLY_UNKNOWN
        for v in names:
            name = _basename(v)
            if name.kind != TEXT or ANY in name.text or _importable(name.text):
                self.add("file_write", call, note="writes importable code")
                return

    def check_read(self, call: ast.Call, targets: list | None, data: bool = False) -> None:
        for target in targets or [None]:
            values = self.values(target, self.scope_at(target)) if target is not None else _ONLY_UNKNOWN
            problem = _read_problem(values, data)
            if problem:
                if problem == "reads a URL":
                    self.add("network", call, note=problem)
                self.add("data_access", call, note=problem)
                return

    def check_list(self, call: ast.Call, targets: list) -> None:
        for target in targets:
            values = self.values(target, self.scope_at(target)) if target is not None else _ONLY_UNKNOWN
            problem = _list_problem(values)
            if problem:
                self.add("data_access", call, note=problem)
                return

    def is_write_mode_method(self, call: ast.Call) -> bool:
        candidates = call.args[:2] + [k.value for k in call.keywords if k.arg == "mode"]
        for candidate in candidates:
            mode = self.fold(candidate)
            if mode is not None and re.fullmatch(r"[rwaxbtU+]{1,4}", mode) and set(mode) & set(_W):
                return True
        return _has_starred(call)

    def is_pathlike(self, node: ast.AST) -> bool:
        if "Path(" in self.segment(node):
            return True
        return any(v.kind in (RUN, LAB, TEXT) for v in self.values(node, self.scope_at(node)))

    # ---- stores, patches, strings ----

    def visit_store(self, statement: ast.AST, target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.check_rebinding(statement, target.id)
            return
        value = getattr(statement, "value", None) if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(target, ast.Subscript):
            base = self.resolve(target.value)
            if base and base[0] in ENV_MAPPINGS:
                self.judge_env_pair(statement, self.fold(target.slice),
                                    value if not isinstance(statement, ast.AugAssign) else statement)
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
                self.judge_module_patch(statement, base[0], target.attr, value)

    def check_rebinding(self, statement: ast.AST, name: str) -> None:
        """Rebinding a name imported from prepare or time changes budget or timing in disguise."""
        if name in self.time_names:
            self.add("timing", statement, note=f"rebinds {name} from time")
        if name in self.prepare_names:
            self.add("timing", statement, note=f"rebinds {name} from prepare")
            self.add("evaluation", statement, note=f"rebinds {name} from prepare")

    def judge_module_patch(self, statement: ast.AST, module: str, attr: str, value: ast.AST | None = None) -> None:
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
            # tf32 switches and compiler settings are ordinary tuning, except where the compiler
            # writes and which binary it runs
            if attr in ("cxx", "cuda_cxx") or attr.endswith("compiler"):
                self.add("subprocess", statement, note="chooses the compiler binary")
            elif LOCATION_SETTING.search(attr) and value is not None \
                    and _write_problem(self.values(value, self.scope_at(value))):
                self.add("file_write", statement, note=f"points {attr} outside the run directory")
        elif module == "tempfile" and attr == "tempdir":
            if value is None or _write_problem(self.values(value, self.scope_at(value))):
                self.add("file_write", statement, note="points tempfile outside the run directory")
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


ENV_GETTERS = {"os.environ.get", "os.getenv", "os.environb.get", "os.getenvb", "os.environ.setdefault"}


def _all_numbers(values: frozenset) -> bool:
    return bool(values) and all(v.kind == NUM for v in values)


def _run_dir_default(v: _Value) -> _Value:
    """The default of a RUN_DIR lookup: one plain name (the lab's run/) stands for the run directory."""
    if v.kind == TEXT and RUN_DIR_DEFAULT.fullmatch(v.text):
        return _RUN_ROOT
    return v


def _renamed(v: _Value, how: str, new: str) -> _Value:
    """with_suffix / with_name / with_stem."""
    if v.kind in (RUN, LAB):
        if v.depth == 0 or ANY in new or "/" in new:
            return _UNKNOWN
        pure = PurePosixPath(v.text)
        if how == "with_name":
            name = new
        elif how == "with_stem":
            name = new + pure.suffix
        else:
            if new and not new.startswith("."):
                return _UNKNOWN
            name = pure.stem + new
        return _Value(v.kind, v.depth, name) if _clean_component(name) else _UNKNOWN
    if v.kind == TEXT and ANY not in v.text:
        try:
            return _text(str(getattr(PurePosixPath(v.text), how)(new)))
        except ValueError:
            return _UNKNOWN
    return _UNKNOWN


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


def _keyword(call: ast.Call, keyword: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _path_arguments(call: ast.Call, positions: list[int], keywords) -> list | None:
    """The arguments at `positions` and `keywords`; None when *args or **kwargs may carry one."""
    out = []
    for i in positions:
        if any(isinstance(a, ast.Starred) for a in call.args[:i + 1]):
            return None
        if i < len(call.args):
            out.append(call.args[i])
    for k in call.keywords:
        if k.arg is None:
            return None
        if k.arg in keywords:
            out.append(k.value)
    return out


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
