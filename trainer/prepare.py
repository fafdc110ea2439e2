"""
prepare.py: data, tokenizer, loader and the trusted evaluator of a Charter lab.

This file is IMMUTABLE inside a lab: the harness hashes it before and after every run.
train.py imports the data/tokenizer helpers from here; the metric comes only from
`python prepare.py evaluate RUN_DIR`, which never runs the model code in its own process.

    python prepare.py [--source debian|climbmix|DIR] [--force]   build the cache (idempotent)
    python prepare.py verify [--json]                           re-hash every cached artifact
    python prepare.py evaluate RUN_DIR [--out PATH]             val_bpb of a finished run

Cache ($CHARTER_CACHE_DIR or ~/.cache/charter):
    data/train/*.parquet  data/val/*.parquet  data/manifest.json
    tokenizer/vocab<N>/ranks.tiktoken  token_bytes.npy  tokenizer.json
"""

import argparse
import base64
import fcntl
import hashlib
import json
import math
import os
import select
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

# ---------------------------------------------------------------------------
# Profiles: every constant the harness fixes. Chosen by $CHARTER_PROFILE, else auto.

PROFILES = {
    "cpu": dict(seq_len=256, vocab_size=2048, eval_tokens=2**17, time_budget=60.0, eval_batch=32),
    # gpu: logits cross a pipe as float32 (vocab * 4 bytes per token), and the offline corpus has
    # ~200k validation tokens at vocab 8192, so eval_tokens stays far below upstream's 20M
    "gpu": dict(seq_len=2048, vocab_size=8192, eval_tokens=2**17, time_budget=300.0, eval_batch=8),
}
BOS_TOKEN = "<|bos|>"
SPECIAL_TOKENS = [BOS_TOKEN]
# GPT-4 style pre-tokenization, with numbers split into groups of at most two digits
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
VAL_PERCENT = 10           # share of documents (by sha256 of their relative path) held out for validation
SHARD_MAX_BYTES = 64 << 20  # text bytes per parquet shard
DEBIAN_PACKAGE = "python3.11-doc"
DEBIAN_SOURCES = "usr/share/doc/python3.11/html/_sources"
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542
TEXT_SUFFIXES = (".txt", ".rst", ".md")


class PrepareError(Exception):
    """A problem a person can fix; the CLI prints it as one line and exits nonzero."""


def _auto_profile():
    try:
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def _resolve_profile():
    name = os.environ.get("CHARTER_PROFILE") or _auto_profile()
    if name not in PROFILES:
        raise PrepareError(f"CHARTER_PROFILE={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    p = dict(PROFILES[name])
    if os.environ.get("CHARTER_TIME_BUDGET"):
        p["time_budget"] = float(os.environ["CHARTER_TIME_BUDGET"])
    if os.environ.get("CHARTER_EVAL_TOKENS"):
        p["eval_tokens"] = int(os.environ["CHARTER_EVAL_TOKENS"])
    return name, p


PROFILE, _P = _resolve_profile()
MAX_SEQ_LEN = _P["seq_len"]        # context length of training and evaluation
VOCAB_SIZE = _P["vocab_size"]      # tokenizer size, special tokens included
EVAL_TOKENS = _P["eval_tokens"]    # validation tokens scored by evaluate
TIME_BUDGET = _P["time_budget"]    # training seconds (compile warm-up excluded)
EVAL_BATCH = _P["eval_batch"]      # rows per evaluation batch

CACHE_DIR = os.path.abspath(os.path.expanduser(os.environ.get("CHARTER_CACHE_DIR") or "~/.cache/charter"))
DATA_DIR = os.path.join(CACHE_DIR, "data")
TRAIN_DIR = os.path.join(DATA_DIR, "train")
VAL_DIR = os.path.join(DATA_DIR, "val")
MANIFEST_PATH = os.path.join(DATA_DIR, "manifest.json")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer", f"vocab{VOCAB_SIZE}")


def profile_info():
    return dict(profile=PROFILE, seq_len=MAX_SEQ_LEN, vocab_size=VOCAB_SIZE,
                eval_tokens=EVAL_TOKENS, time_budget=TIME_BUDGET)

# ---------------------------------------------------------------------------
# Hashing helpers


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise PrepareError(f"{what} missing: {path} (run `python prepare.py`)")
    except (ValueError, UnicodeDecodeError):
        raise PrepareError(f"{what} is corrupted: {path} (run `python prepare.py --force`)")


def _check_file(path, expected, what):
    if not os.path.isfile(path):
        raise PrepareError(f"{what} missing: {path} (run `python prepare.py --force`)")
    if sha256_file(path) != expected:
        raise PrepareError(f"{what} does not match its recorded sha256: {path} (run `python prepare.py --force`)")

# ---------------------------------------------------------------------------
# Corpus sources: each yields (relative_path, text) in a deterministic order


def _progress(iterable, **kw):
    try:
        from tqdm import tqdm
        return tqdm(iterable, **kw)
    except ImportError:
        return iterable


def _docs_from_dir(root):
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise PrepareError(f"corpus directory not found: {root}")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(TEXT_SUFFIXES) or name.endswith(".parquet"):
                paths.append(os.path.join(dirpath, name))
    if not paths:
        raise PrepareError(f"no .txt/.rst/.md/.parquet files under {root}")
    for path in _progress(paths, desc="reading corpus", unit="file"):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
            for i, text in enumerate(texts):
                if text:
                    yield f"{rel}#{i}", text
        else:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            if text.strip():
                yield rel, text


def _docs_from_debian(workdir):
    def run(cmd, cwd):
        return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(f"fetching Debian package {DEBIAN_PACKAGE} (download only, not installed)")
    r = run(["apt-get", "download", DEBIAN_PACKAGE], workdir)
    if r.returncode != 0:
        print("apt-get download failed; running apt-get update once")
        run(["apt-get", "update"], workdir)
        r = run(["apt-get", "download", DEBIAN_PACKAGE], workdir)
    debs = [n for n in os.listdir(workdir) if n.endswith(".deb")]
    if r.returncode != 0 or not debs:
        raise PrepareError(f"could not download {DEBIAN_PACKAGE} with apt-get; use --source DIR with a local corpus")
    extract = os.path.join(workdir, "x")
    r = run(["dpkg-deb", "-x", os.path.join(workdir, debs[0]), extract], workdir)
    sources = os.path.join(extract, DEBIAN_SOURCES)
    if r.returncode != 0 or not os.path.isdir(sources):
        raise PrepareError(f"could not extract {DEBIAN_SOURCES} from {debs[0]}")
    yield from _docs_from_dir(sources)


def _docs_from_climbmix(workdir, num_train_shards):
    # Needs network (Hugging Face). Train shards 0..n-1, the pinned last shard for validation.
    import urllib.request
    import pyarrow.parquet as pq
    for i in list(range(num_train_shards)) + [CLIMBMIX_VAL_SHARD]:
        name = f"shard_{i:05d}.parquet"
        path = os.path.join(workdir, name)
        print(f"downloading {name}")
        urllib.request.urlretrieve(f"{CLIMBMIX_URL}/{name}", path)
        split = "val" if i == CLIMBMIX_VAL_SHARD else "train"
        for j, text in enumerate(pq.read_table(path, columns=["text"]).column("text").to_pylist()):
            yield split, f"{name}#{j}", text


def split_of(relpath):
    """Deterministic train/val split by the sha256 of a document's relative path."""
    return "val" if int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT else "train"

# ---------------------------------------------------------------------------
# Data: parquet shards + manifest


def _write_shards(docs, out_dir, split):
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(out_dir, exist_ok=True)
    files, batch, batch_bytes = [], [], 0

    def flush():
        nonlocal batch, batch_bytes
        name = f"shard_{len(files):05d}.parquet"
        path = os.path.join(out_dir, name)
        table = pa.table({"path": [p for p, _ in batch], "text": [t for _, t in batch]})
        pq.write_table(table, path, compression="zstd")
        files.append(dict(file=f"{split}/{name}", sha256=sha256_file(path), docs=len(batch),
                          bytes=sum(len(t.encode()) for _, t in batch)))
        batch, batch_bytes = [], 0

    for rel, text in docs:
        batch.append((rel, text))
        batch_bytes += len(text)
        if batch_bytes >= SHARD_MAX_BYTES:
            flush()
    if batch:
        flush()
    return files


def prepare_data(source="debian", force=False):
    """Build data/train, data/val and data/manifest.json; a valid existing cache is kept."""
    source_id = source if source in ("debian", "climbmix") else os.path.abspath(source)
    if not force and os.path.exists(MANIFEST_PATH):
        manifest = _read_json(MANIFEST_PATH, "data manifest")
        if manifest.get("source") == source_id:
            verify_data()
            print(f"data: cached ({manifest['data_hash'][:12]})")
            return manifest
        print(f"data: cached source {manifest.get('source')!r} differs from {source_id!r}; rebuilding")
    for d in (TRAIN_DIR, VAL_DIR):
        shutil.rmtree(d, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="charter-corpus-") as tmp:
        if source == "climbmix":
            n = int(os.environ.get("CHARTER_CLIMBMIX_SHARDS", "4"))
            labelled = list(_docs_from_climbmix(tmp, n))
            train = [(r, t) for s, r, t in labelled if s == "train"]
            val = [(r, t) for s, r, t in labelled if s == "val"]
        else:
            docs = list(_docs_from_debian(tmp) if source == "debian" else _docs_from_dir(source))
            train = [(r, t) for r, t in docs if split_of(r) == "train"]
            val = [(r, t) for r, t in docs if split_of(r) == "val"]
    if not train or not val:
        raise PrepareError(f"corpus too small: {len(train)} train and {len(val)} validation documents")
    files = _write_shards(train, TRAIN_DIR, "train") + _write_shards(val, VAL_DIR, "val")
    manifest = dict(source=source_id, val_percent=VAL_PERCENT, files=files, data_hash=sha256_json(files))
    with open(MANIFEST_PATH, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"data: {len(train)} train / {len(val)} val documents, data_hash {manifest['data_hash'][:12]}")
    return manifest


def verify_data(splits=("train", "val")):
    """Check the manifest and the shards of the given splits (training checks only 'train')."""
    manifest = _read_json(MANIFEST_PATH, "data manifest")
    files = manifest.get("files")
    if not isinstance(files, list) or sha256_json(files) != manifest.get("data_hash"):
        raise PrepareError(f"data manifest is inconsistent: {MANIFEST_PATH} (run `python prepare.py --force`)")
    for entry in files:
        if entry["file"].split("/")[0] in splits:
            _check_file(os.path.join(DATA_DIR, entry["file"]), entry["sha256"], "data shard")
    for split, d in (("train", TRAIN_DIR), ("val", VAL_DIR)):
        if split not in splits:
            continue
        listed = {e["file"] for e in files if e["file"].startswith(split + "/")}
        present = {f"{split}/{n}" for n in os.listdir(d)} if os.path.isdir(d) else set()
        if present != listed:
            extra = sorted(present - listed) or sorted(listed - present)
            raise PrepareError(f"data shard not in manifest or missing: {os.path.join(DATA_DIR, extra[0])}")
    return manifest


def _read_split(split, manifest):
    """Texts of one split, verified against the manifest. Training only ever asks for 'train'."""
    import pyarrow.parquet as pq
    texts = []
    for entry in manifest["files"]:
        if entry["file"].startswith(split + "/"):
            path = os.path.join(DATA_DIR, entry["file"])
            _check_file(path, entry["sha256"], "data shard")
            texts.extend(pq.read_table(path, columns=["text"]).column("text").to_pylist())
    return texts

# ---------------------------------------------------------------------------
# Tokenizer: rustbpe training, tiktoken loading, no pickle anywhere


def prepare_tokenizer(manifest, force=False):
    json_path = os.path.join(TOKENIZER_DIR, "tokenizer.json")
    if not force and os.path.exists(json_path):
        meta = _read_json(json_path, "tokenizer metadata")
        if meta.get("data_hash") == manifest["data_hash"]:
            load_tokenizer()
            print(f"tokenizer: cached ({tokenizer_hash()[:12]})")
            return
        print("tokenizer: trained on other data; retraining")
    import rustbpe
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    texts = _read_split("train", manifest)
    t0 = time.time()
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = sorted(((bytes(b), r) for b, r in tok.get_mergeable_ranks()), key=lambda x: x[1])
    ranks_path = os.path.join(TOKENIZER_DIR, "ranks.tiktoken")
    with open(ranks_path, "w") as f:
        for b, r in ranks:
            f.write(f"{base64.b64encode(b).decode()} {r}\n")
    n = len(ranks)
    token_bytes = np.array([len(b) for b, _ in ranks] + [0] * len(SPECIAL_TOKENS), dtype=np.int32)
    tb_path = os.path.join(TOKENIZER_DIR, "token_bytes.npy")
    np.save(tb_path, token_bytes, allow_pickle=False)
    meta = dict(vocab_size=n + len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN,
                special_tokens={s: n + i for i, s in enumerate(SPECIAL_TOKENS)}, bos_token=BOS_TOKEN,
                ranks_file="ranks.tiktoken", ranks_sha256=sha256_file(ranks_path),
                token_bytes_file="token_bytes.npy", token_bytes_sha256=sha256_file(tb_path),
                data_hash=manifest["data_hash"])
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(f"tokenizer: vocab {meta['vocab_size']} trained in {time.time() - t0:.1f}s, hash {tokenizer_hash()[:12]}")


def tokenizer_hash():
    return sha256_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))


def load_tokenizer():
    """The verified tokenizer as a tiktoken.Encoding (BOS id: enc.bos_token_id)."""
    import tiktoken
    meta = _read_json(os.path.join(TOKENIZER_DIR, "tokenizer.json"), "tokenizer metadata")
    ranks_path = os.path.join(TOKENIZER_DIR, meta.get("ranks_file", "ranks.tiktoken"))
    _check_file(ranks_path, meta.get("ranks_sha256"), "tokenizer ranks file")
    ranks = {}
    try:
        with open(ranks_path) as f:
            for line in f:
                b64, rank = line.split()
                ranks[base64.b64decode(b64)] = int(rank)
    except ValueError:
        raise PrepareError(f"tokenizer ranks file is malformed: {ranks_path}")
    enc = tiktoken.Encoding(name=f"charter-vocab{meta['vocab_size']}", pat_str=meta["pattern"],
                            mergeable_ranks=ranks, special_tokens=meta["special_tokens"])
    enc.bos_token_id = meta["special_tokens"][meta["bos_token"]]
    return enc


def load_token_bytes():
    """UTF-8 byte length of each token id (0 for special tokens), as an int32 numpy array."""
    meta = _read_json(os.path.join(TOKENIZER_DIR, "tokenizer.json"), "tokenizer metadata")
    path = os.path.join(TOKENIZER_DIR, meta.get("token_bytes_file", "token_bytes.npy"))
    _check_file(path, meta.get("token_bytes_sha256"), "token bytes file")
    try:
        tb = np.load(path, allow_pickle=False)
    except ValueError:
        raise PrepareError(f"token bytes file is malformed: {path}")
    if tb.shape != (meta["vocab_size"],):
        raise PrepareError(f"token bytes file has the wrong shape: {path}")
    return tb

# ---------------------------------------------------------------------------
# Loader: BOS-aligned best-fit packing, no padding


def _tokenize(enc, texts):
    bos = enc.bos_token_id
    return [np.asarray([bos] + ids, dtype=np.int32) for ids in enc.encode_ordinary_batch(texts, num_threads=2)]


def pack_rows(docs, row_len, bos, buffer_size=64):
    """
    Pack documents (int arrays that start with BOS) into rows of exactly row_len tokens.
    Each row starts at the BOS of a document. Best fit: the largest buffered document that
    fits the space left goes in next. When none fits, the oldest buffered document is cropped
    to the space left, and its remainder returns to the buffer as a continuation document with
    its own BOS, so no text is dropped and nothing is padded.
    """
    docs = iter(docs)
    buf, exhausted = [], False
    while True:
        row, space = [], row_len
        while space > 0:
            while not exhausted and len(buf) < buffer_size:
                try:
                    buf.append(next(docs))
                except StopIteration:
                    exhausted = True
            if not buf:
                return  # the last partial row is dropped
            best, best_len = -1, 0
            for i, d in enumerate(buf):
                if best_len < len(d) <= space:
                    best, best_len = i, len(d)
            if best >= 0:
                row.append(buf.pop(best))
                space -= best_len
            else:
                d = buf[0]
                row.append(d[:space])
                rest = d[space:]
                buf[0] = np.concatenate([np.asarray([bos], dtype=d.dtype), rest])
                space = 0
        yield np.concatenate(row)


def make_dataloader(batch_size, seq_len=MAX_SEQ_LEN, device="cpu", seed=0):
    """
    Infinite iterator over the TRAIN split: (inputs, targets) int64 tensors of shape
    (batch_size, seq_len), packed by pack_rows, documents reshuffled each epoch.
    """
    import torch
    manifest = verify_data(splits=("train",))  # training never touches the validation split
    enc = load_tokenizer()
    docs = _tokenize(enc, _read_split("train", manifest))
    rng = np.random.default_rng(seed)

    def doc_stream():
        while True:
            for i in rng.permutation(len(docs)):
                yield docs[i]

    rows = pack_rows(doc_stream(), seq_len + 1, enc.bos_token_id)
    pin = torch.device(device).type == "cuda"
    while True:
        batch = torch.from_numpy(np.stack([next(rows) for _ in range(batch_size)]).astype(np.int64))
        if pin:
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        yield batch[:, :-1], batch[:, 1:]

# ---------------------------------------------------------------------------
# Evaluation (trusted): the evaluator sends token batches to an untrusted worker that only
# runs the model and returns float32 logits; the loss is computed here.

EVAL_PROBE_BATCHES = 2      # causality probe batches mixed among the real ones
PROBE_ATOL = 1e-3           # logits at positions <= p may move this much (plus PROBE_RTOL * |logit|)
PROBE_RTOL = 1e-3
WORKER_TIMEOUT = float(os.environ.get("CHARTER_EVAL_TIMEOUT", "900"))  # seconds without an answer


class Rejected(Exception):
    """The run cannot be scored; the reason goes into evaluation.json."""


def validation_rows(enc, n_rows, seq_len=MAX_SEQ_LEN):
    """The first n_rows packed validation rows of seq_len+1 tokens: the same every time."""
    manifest = verify_data()
    docs = _tokenize(enc, _read_split("val", manifest))
    rows = []
    for row in pack_rows(docs, seq_len + 1, enc.bos_token_id):
        rows.append(row)
        if len(rows) == n_rows:
            return np.stack(rows)
    raise PrepareError(f"validation split has only {len(rows) * seq_len} tokens; lower CHARTER_EVAL_TOKENS")


def _write_all(f, data):
    view = memoryview(data).cast("B")
    while len(view):
        view = view[f.write(view):]


class _Worker:
    """The untrusted model worker: a subprocess speaking a tiny binary protocol over stdin/stdout."""

    def __init__(self, run_dir, stderr_file):
        cmd = [sys.executable, os.path.abspath(__file__), "_worker", os.path.abspath(run_dir)]
        prefix = os.environ.get("EVAL_WORKER_PREFIX")
        if prefix:
            cmd = shlex.split(prefix) + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
                                     bufsize=0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                fcntl.fcntl(pipe.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger reads
            except OSError:
                pass
        self.out = self.proc.stdout

    def _read(self, n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            ready, _, _ = select.select([self.out], [], [], WORKER_TIMEOUT)
            if not ready:
                raise Rejected(f"model worker gave no answer within {WORKER_TIMEOUT:.0f}s")
            k = self.out.readinto(view[got:])
            if not k:
                raise Rejected("model worker exited early")
            got += k
        return buf

    def wait_ready(self):
        if bytes(self._read(8)) != b"CHARTER1":
            raise Rejected("model worker spoke an unknown protocol")

    def send(self, tokens):
        b, t = tokens.shape
        try:
            _write_all(self.proc.stdin, struct.pack("<II", b, t) + np.ascontiguousarray(tokens, dtype="<i4").tobytes())
        except BrokenPipeError:
            raise Rejected("model worker exited early")

    def receive(self, b, t, vocab):
        shape = struct.unpack("<III", self._read(12))
        if shape != (b, t, vocab):
            raise Rejected(f"model returned logits of shape {shape}, expected {(b, t, vocab)}")
        out = np.frombuffer(self._read(b * t * vocab * 4), dtype="<f4").reshape(b, t, vocab)
        if not np.isfinite(out).all():
            raise Rejected("model returned non-finite logits")
        return out

    def close(self):
        try:
            _write_all(self.proc.stdin, struct.pack("<II", 0, 0))
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stderr_tail(f, limit=300):
    f.seek(0)
    lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    return lines[-1][:limit] if lines else ""


def evaluate(run_dir, out_path=None):
    """Score a run: val_bpb over the first EVAL_TOKENS validation tokens, plus the causality probe."""
    import torch
    t0 = time.time()
    manifest = verify_data()
    enc = load_tokenizer()
    token_bytes = load_token_bytes()
    vocab = enc.n_vocab
    n_rows = math.ceil(EVAL_TOKENS / MAX_SEQ_LEN)
    rows = validation_rows(enc, n_rows)
    result = dict(status="rejected", reason="", val_bpb=None, val_loss=None, eval_tokens=n_rows * MAX_SEQ_LEN,
                  eval_bytes=None, causality="not checked", profile=PROFILE, seq_len=MAX_SEQ_LEN,
                  vocab_size=vocab, data_hash=manifest["data_hash"], tokenizer_hash=tokenizer_hash(),
                  run_dir=os.path.abspath(run_dir), eval_seconds=None)
    # schedule: real batches in order, probe batches at secret random places
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    real = [("real", i, rows[i:i + EVAL_BATCH]) for i in range(0, n_rows, EVAL_BATCH)]
    probes = []
    for _ in range(EVAL_PROBE_BATCHES):
        pick = rng.choice(n_rows, size=min(EVAL_BATCH, n_rows), replace=False)
        cut = rng.integers(0, MAX_SEQ_LEN - 1, size=len(pick))  # keep positions <= cut
        batch = rows[pick].copy()
        for r, p in enumerate(cut):
            batch[r, p + 1:] = rng.integers(0, vocab, size=batch.shape[1] - p - 1)
        probes.append(("probe", (pick, cut), batch))
    schedule = list(real)
    for probe in probes:
        schedule.insert(int(rng.integers(0, len(schedule) + 1)), probe)
    probe_rows = {int(i) for _, (pick, _), _ in probes for i in pick}
    kept = {}        # original logits of probed rows
    probe_out = []   # (pick, cut, probe logits)
    nats, nbytes = 0.0, 0
    tb = torch.from_numpy(token_bytes.astype(np.int64))
    with tempfile.TemporaryFile() as err:
        worker = _Worker(run_dir, err)
        try:
            worker.wait_ready()
            for kind, key, batch in schedule:
                # one batch at a time: overlapping worker and scorer only made them fight for the cores
                worker.send(batch[:, :-1])
                logits = worker.receive(len(batch), MAX_SEQ_LEN, vocab)
                if kind == "probe":
                    probe_out.append((key[0], key[1], logits))
                    continue
                for r in range(len(batch)):
                    if key + r in probe_rows:
                        kept[key + r] = logits[r].copy()
                targets = torch.from_numpy(batch[:, 1:].astype(np.int64))
                logp = torch.log_softmax(torch.from_numpy(logits), dim=-1)
                nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
                nb = tb[targets]
                nats += float((nll * (nb > 0)).sum())
                nbytes += int(nb.sum())
            worker.close()
            bad = 0
            for pick, cut, plog in probe_out:
                for r, (i, p) in enumerate(zip(pick, cut)):
                    a, b = kept[int(i)][:p + 1], plog[r, :p + 1]
                    if not np.all(np.abs(a - b) <= PROBE_ATOL + PROBE_RTOL * np.abs(a)):
                        bad += 1
            if bad:
                result["causality"] = f"failed on {bad} probe rows"
                raise Rejected("model is not causal: logits changed when only later tokens changed")
            result["causality"] = "ok"
            result.update(status="ok", val_loss=nats / max(1, n_rows * MAX_SEQ_LEN),
                          val_bpb=nats / (math.log(2) * nbytes), eval_bytes=nbytes)
        except Rejected as e:
            worker.proc.kill()
            worker.proc.wait()
            tail = _stderr_tail(err)
            result["reason"] = str(e) + (f" (worker stderr, untrusted: {tail!r})" if tail else "")
        result["probe_rows"] = sum(len(p) for p, _, _ in probe_out)
    result["eval_seconds"] = round(time.time() - t0, 3)
    out_path = out_path or os.path.join(run_dir, "evaluation.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _worker_main(run_dir):
    """Runs UNTRUSTED model code. Never reads data; only answers logits for the tokens it is sent."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything the model code prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    import importlib.util
    import torch
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    source = os.path.join(run_dir, os.path.basename(config.get("source", "model_source.py")))
    weights = os.path.join(run_dir, os.path.basename(config.get("weights", "model.pt")))
    spec = importlib.util.spec_from_file_location("model_source", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_source"] = module
    spec.loader.exec_module(module)
    model = getattr(module, config.get("entry", "build_model"))(**config.get("kwargs", {}))
    state = torch.load(weights, map_location="cpu", weights_only=True)  # never arbitrary pickle
    model.load_state_dict(state)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    _write_all(proto_out, b"CHARTER1")

    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = proto_in.read(n - len(buf))
            if not chunk:
                sys.exit(0)
            buf += chunk
        return buf

    while True:
        b, t = struct.unpack("<II", read(8))
        if b == 0:
            return
        tokens = np.frombuffer(read(b * t * 4), dtype="<i4").reshape(b, t)
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens.astype(np.int64)).to(device))
        arr = np.ascontiguousarray(logits.float().cpu().numpy(), dtype="<f4")
        _write_all(proto_out, struct.pack("<III", *arr.shape) if arr.ndim == 3 else struct.pack("<III", 0, 0, 0))
        _write_all(proto_out, arr)

# ---------------------------------------------------------------------------
# CLI


def verify():
    manifest = verify_data()
    load_tokenizer()
    load_token_bytes()
    meta = _read_json(os.path.join(TOKENIZER_DIR, "tokenizer.json"), "tokenizer metadata")
    if meta.get("data_hash") != manifest["data_hash"]:
        raise PrepareError(f"tokenizer was trained on other data: {os.path.join(TOKENIZER_DIR, 'tokenizer.json')}")
    return dict(profile=PROFILE, data_hash=manifest["data_hash"], tokenizer_hash=tokenizer_hash(),
                cache_dir=CACHE_DIR, train_dir=TRAIN_DIR, val_dir=VAL_DIR, tokenizer_dir=TOKENIZER_DIR,
                seq_len=MAX_SEQ_LEN, vocab_size=VOCAB_SIZE, eval_tokens=EVAL_TOKENS, time_budget=TIME_BUDGET)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return _worker_main(argv[1])
    ap = argparse.ArgumentParser(prog="prepare.py", description="Charter lab data, tokenizer and evaluator")
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--source", default="debian", help="debian (default, offline), climbmix (network), or a directory")
    ap.add_argument("--force", action="store_true", help="rebuild data and tokenizer even if cached")
    v = sub.add_parser("verify", help="re-hash every cached artifact")
    v.add_argument("--json", action="store_true")
    e = sub.add_parser("evaluate", help="score a finished run")
    e.add_argument("run_dir")
    e.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "verify":
            info = verify()
            if args.json:
                print(json.dumps(info, sort_keys=True))
            else:
                for k, val in info.items():
                    print(f"{k}: {val}")
            return 0
        if args.cmd == "evaluate":
            if not os.path.isdir(args.run_dir):
                raise PrepareError(f"run directory not found: {args.run_dir}")
            r = evaluate(args.run_dir, args.out)
            print("---")
            for k in ("status", "val_bpb", "val_loss", "eval_tokens", "eval_bytes", "causality",
                      "eval_seconds", "profile", "data_hash", "tokenizer_hash", "reason"):
                val = r.get(k)
                print(f"{k}: {val:.6f}" if isinstance(val, float) and k != "eval_seconds" else f"{k}: {val}")
            return 0 if r["status"] == "ok" else 3
        print(f"profile: {PROFILE} (seq_len {MAX_SEQ_LEN}, vocab {VOCAB_SIZE}); cache: {CACHE_DIR}")
        manifest = prepare_data(args.source, args.force)
        prepare_tokenizer(manifest, args.force)
        info = verify()
        print(f"data_hash: {info['data_hash']}\ntokenizer_hash: {info['tokenizer_hash']}")
        return 0
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
