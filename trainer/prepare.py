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
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

# ---------------------------------------------------------------------------
# Profiles: every constant the harness fixes. Chosen by $CHARTER_PROFILE, else auto.

PROFILES = {
    # cpu: 2^15 tokens spread over the split compare two runs 1.3-2.6x more closely than the first 2^17
    # did (validation_rows; bench/eval_noise.py), for a third of the evaluation's work (192 rows answered, not 576)
    "cpu": dict(seq_len=256, vocab_size=2048, eval_tokens=2**15, time_budget=60.0, eval_batch=16),
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
EVAL_BATCH = int(os.environ.get("CHARTER_EVAL_BATCH") or _P["eval_batch"])  # rows per evaluation batch

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


TOKENIZE_AHEAD = 64  # documents tokenized together (tiktoken's batch on 2 threads), in the order drawn


def make_dataloader(batch_size, seq_len=MAX_SEQ_LEN, device="cpu", seed=0):
    """
    Infinite iterator over the TRAIN split: (inputs, targets) int64 tensors of shape
    (batch_size, seq_len), packed by pack_rows, documents reshuffled each epoch.
    """
    import torch
    manifest = verify_data(splits=("train",))  # training never touches the validation split
    enc = load_tokenizer()
    texts = _read_split("train", manifest)
    rng = np.random.default_rng(seed)
    # documents are tokenized when first drawn, TOKENIZE_AHEAD at a time, and kept: the first batch
    # comes after one chunk, not the whole split, and a run tokenizes only what it reaches (a 60 s
    # CPU run reads about a third of the split); the order and the tokens are those of tokenizing
    # everything first
    docs = [None] * len(texts)

    def doc_stream():
        while True:
            order = rng.permutation(len(texts))
            for k, i in enumerate(order):
                if docs[i] is None:
                    ahead = [j for j in order[k:k + TOKENIZE_AHEAD] if docs[j] is None]
                    for j, tokens in zip(ahead, _tokenize(enc, [texts[j] for j in ahead])):
                        docs[j] = tokens
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
# Evaluation (trusted). The evaluator reads the run's model files itself (no symlinks, regular
# files only, bounded sizes) and hands the same bytes to untrusted worker processes that only run
# the model and return float32 logits; the loss is computed here, from those logits.
#
# Two workers, started the same way and sharing nothing (other processes, each with its own fresh
# empty directory as cwd, HOME and TMPDIR, or whatever the sandbox prefix gives it):
#   1. the scoring worker answers every validation row, in batches shuffled per evaluation;
#   2. a fresh checking worker, only after the first one is gone, answers the check rows:
#      probe rows (a real row whose tail is replaced by tokens of another real row) and unaltered
#      control rows, batched like real rows. At the kept positions of a probe, and everywhere in a
#      control, its log-probabilities must match the scoring worker's for the original row. A model
#      that reads later tokens, mixes rows of a batch or answers from what it saw before cannot pass
#      this: the checking worker has seen none of the scoring worker's rows or answers.
# Which rows are checked, where they are cut, what replaces their tails and how rows are batched
# are drawn from os.urandom afresh by every evaluation.

EVAL_CHECK_ROWS = 64        # rows the checking worker answers at most: 3/4 probes, 1/4 controls
# the workers' log-probabilities (not logits: a shift of all logits would widen a tolerance relative
# to them, and hide a nudge) may differ this much, plus PROBE_RTOL * |log-probability|
PROBE_ATOL = 1e-3
PROBE_RTOL = 1e-4
EVAL_MAX_FILE_BYTES = 1 << 20     # config.json and the model source
EVAL_MAX_WEIGHTS_BYTES = 4 << 30  # the weights
RUN_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WORKER_TIMEOUT = float(os.environ.get("CHARTER_EVAL_TIMEOUT", "900"))  # seconds without progress
WORKER_GRACE = 5.0                # seconds a worker's wrapper may take to clean up after SIGTERM
WORKER_LOG_BYTES = 64 << 10       # tail of each worker's stderr kept in the local log of a rejection


class Rejected(Exception):
    """The run cannot be scored; the reason (the evaluator's own words) goes into the result."""


def validation_rows(enc, n_rows, seq_len=MAX_SEQ_LEN):
    """n_rows packed validation rows of seq_len+1 tokens, the same every time: evenly spaced over the
    whole split's rows, so that they reach across all of its documents. The first
    n_rows alone cover a few documents, and which ones they are biases every comparison of two
    models by the same amount: measured on a session's models, the first 2^17 tokens put an error of
    0.011 and 0.008 bpb (sd, two sessions) into a comparison of two of them, 2^15 spread tokens 0.004
    and 0.006 (bench/eval_noise.py, docs/benchmarks.md)."""
    manifest = verify_data()
    docs = _tokenize(enc, _read_split("val", manifest))
    rows = list(pack_rows(docs, seq_len + 1, enc.bos_token_id))
    if len(rows) < n_rows:
        raise PrepareError(f"validation split has only {len(rows) * seq_len} tokens; lower CHARTER_EVAL_TOKENS")
    return np.stack([rows[k] for k in (np.arange(n_rows) * len(rows)) // n_rows])


def _read_run_file(dir_fd, name, limit):
    """Bytes of one file of the run: never through a symlink, only a regular file, at most limit bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Rejected(f"run file {name} is missing")
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Rejected(f"run file {name} is a symbolic link (refused)")
        raise Rejected(f"run file {name} cannot be opened ({errno.errorcode.get(e.errno, e.errno)})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(f"run file {name} is not a regular file (refused)")
        if st.st_size > limit:
            raise Rejected(f"run file {name} is larger than {limit} bytes (refused)")
        data = bytearray()
        while len(data) <= limit:  # the size may lie (or grow): read at most limit + 1 bytes
            chunk = os.read(fd, min(1 << 24, limit + 1 - len(data)))
            if not chunk:
                return bytes(data)
            data += chunk
        raise Rejected(f"run file {name} is larger than {limit} bytes (refused)")
    finally:
        os.close(fd)


def read_model_files(run_dir):
    """config.json, the model source and the weights of a run, checked; the workers get these bytes."""
    try:
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise Rejected("run directory cannot be opened")
    try:
        try:
            config = json.loads(_read_run_file(dir_fd, "config.json", EVAL_MAX_FILE_BYTES))
        except (ValueError, UnicodeDecodeError):
            raise Rejected("config.json is not valid JSON")
        if not isinstance(config, dict):
            raise Rejected("config.json is not a JSON object")
        entry = config.get("entry", "build_model")
        kwargs = config.get("kwargs", {})
        source = config.get("source", "model_source.py")
        weights = config.get("weights", "model.pt")
        if not (isinstance(entry, str) and entry.isidentifier() and len(entry) <= 100):
            raise Rejected("config.json: entry is not a Python name")
        if not isinstance(kwargs, dict):
            raise Rejected("config.json: kwargs is not an object")
        for key, name in (("source", source), ("weights", weights)):
            if not (isinstance(name, str) and RUN_FILE_NAME.fullmatch(name)) or name == "config.json":
                raise Rejected(f"config.json: {key} is not a plain file name of the run")
        source_bytes = _read_run_file(dir_fd, source, EVAL_MAX_FILE_BYTES)
        weights_bytes = _read_run_file(dir_fd, weights, EVAL_MAX_WEIGHTS_BYTES)
    finally:
        os.close(dir_fd)
    try:
        source_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(f"run file {source} is not UTF-8 text")
    header = json.dumps(dict(entry=entry, kwargs=kwargs, source=source)).encode()
    return [b"CHARTER2" + struct.pack("<IIQ", len(header), len(source_bytes), len(weights_bytes)) + header,
            source_bytes, weights_bytes]


class _Worker:
    """An untrusted model worker: a subprocess speaking a tiny binary protocol over stdin/stdout.

    It starts with a fresh empty directory as cwd, HOME and TMPDIR (removed at close) inside the
    sandbox given by $EVAL_WORKER_PREFIX, if any; its stderr goes to a private temporary file."""

    def __init__(self, name):
        self.name = name
        self.home = tempfile.mkdtemp(prefix="charter-worker-")
        self.err = tempfile.TemporaryFile()
        self.proc = None
        cmd = [sys.executable, os.path.abspath(__file__), "_worker"]
        prefix = os.environ.get("EVAL_WORKER_PREFIX")
        self.wrapped = bool(prefix)
        if prefix:
            cmd = shlex.split(prefix) + cmd
        env = dict(os.environ, HOME=self.home, TMPDIR=self.home)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                         cwd=self.home, env=env, bufsize=0, start_new_session=True)
        except OSError:
            shutil.rmtree(self.home, ignore_errors=True)
            self.err.close()
            raise Rejected(f"{name} could not be started")
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                fcntl.fcntl(pipe.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger reads
            except OSError:
                pass
        os.set_blocking(self.proc.stdin.fileno(), False)  # writes wait in select, with a timeout
        self.out = self.proc.stdout

    def _gone(self, doing=""):
        """The worker closed its pipes: say how it ended, in the evaluator's own words."""
        try:
            code = self.proc.wait(timeout=5)
            how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        except subprocess.TimeoutExpired:
            how = "closed its pipes"
        return Rejected(f"{self.name} {how}{doing}")

    def send_model(self, parts):
        for part in parts:
            self._send(part)

    def _send(self, data):
        fd, view = self.proc.stdin.fileno(), memoryview(data).cast("B")
        while len(view):
            _, ready, _ = select.select([], [fd], [], WORKER_TIMEOUT)
            if not ready:
                raise Rejected(f"{self.name} took no input for {WORKER_TIMEOUT:.0f}s")
            try:
                view = view[os.write(fd, view[:1 << 20]):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise self._gone()

    def _read(self, n, doing=""):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            ready, _, _ = select.select([self.out], [], [], WORKER_TIMEOUT)
            if not ready:
                raise Rejected(f"{self.name} gave no answer within {WORKER_TIMEOUT:.0f}s")
            k = self.out.readinto(view[got:])
            if not k:
                raise self._gone(doing)
            got += k
        return buf

    def wait_ready(self):
        if bytes(self._read(8, " before it had loaded the model")) != b"CHARTER2":
            raise Rejected(f"{self.name} spoke an unknown protocol")

    def ask(self, tokens, vocab):
        """float32 logits (b, t, vocab) for int tokens (b, t)."""
        b, t = tokens.shape
        self._send(struct.pack("<II", b, t) + np.ascontiguousarray(tokens, dtype="<i4").tobytes())
        shape = struct.unpack("<III", self._read(12))
        if shape != (b, t, vocab):  # what it sent is not repeated: the reason has only the evaluator's words
            raise Rejected(f"model returned logits of the wrong shape, expected {(b, t, vocab)}")
        out = np.frombuffer(self._read(b * t * vocab * 4), dtype="<f4").reshape(b, t, vocab)
        if not np.isfinite(out).all():
            raise Rejected("model returned non-finite logits")
        return out

    def close(self):
        """Kill the worker and anything it started, and remove its directory. Idempotent."""
        if self.proc is not None:
            if self.proc.returncode is None and self.wrapped:
                # the prefix's wrapper is trusted: asked, it kills the worker and removes the worker's
                # own limits (a cgroup) itself; killed outright it would leave them behind
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=WORKER_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.returncode is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its process group: stragglers too
                except OSError:
                    pass
                self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def stderr_tail(self):
        self.err.seek(0, os.SEEK_END)
        self.err.seek(max(0, self.err.tell() - WORKER_LOG_BYTES))
        return self.err.read().decode("utf-8", "replace")


def _check_plan(rows, rng):
    """Check rows for the fresh worker: probes (row, cut, tokens) and controls (row)."""
    n_rows, seq_len = rows.shape[0], rows.shape[1] - 1
    n_check = min(EVAL_CHECK_ROWS, n_rows, max(n_rows // 2, 8))  # 64 of the cpu profile's 128 rows
    check = [int(i) for i in rng.choice(n_rows, size=n_check, replace=False)]
    controls, probed = check[:n_check // 4], check[n_check // 4:]
    # tails come from rows the checking worker does not see otherwise, where there are such rows
    donors = np.setdiff1d(np.arange(n_rows), check) if n_rows >= 2 * n_check else np.arange(n_rows)
    probes = []
    for i in probed:
        cut = int(rng.integers(0, seq_len - 1))  # positions 0..cut are kept, cut+1.. come from another row
        tail = seq_len - cut - 1
        pool = donors[donors != i] if n_rows > 1 else donors
        for _ in range(32):  # the first replaced token must differ from the original one, and the probe
            j = int(rng.choice(pool))  # must not be a real row (every row starts with BOS: cut 0 and a
            start = int(rng.integers(0, seq_len + 2 - tail))  # donor's own tail would make one)
            new = rows[j, start:start + tail]
            probe = np.concatenate([rows[i, :cut + 1], new])
            if new[0] != rows[i, cut + 1] and not (rows[:, :-1] == probe).all(axis=1).any():
                break
        probes.append((i, cut, probe))
    return probes, controls


def _batches(items, rng):
    """items in a random order, in batches of EVAL_BATCH, the batches in a random order."""
    items = [items[k] for k in rng.permutation(len(items))]
    batches = [items[k:k + EVAL_BATCH] for k in range(0, len(items), EVAL_BATCH)]
    return [batches[k] for k in rng.permutation(len(batches))]


def _shifted(logits):
    """(logits minus each position's max, log of the sum of exp of that) over the last axis, float32,
    in numpy (the evaluator itself never imports torch: its import costs ~2 s of CPU on the cores the
    workers start on). A log-probability is shifted - log_sum, in that order, as torch does: adding
    log_sum back to a huge max first would round it away (constant logits of 1e9 would score 0
    nats), and an unshifted sum would drop the terms that underflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted, np.log(np.exp(shifted).sum(axis=-1))


def _close_enough(a, b):
    return bool(np.all(np.abs(a - b) <= PROBE_ATOL + PROBE_RTOL * np.abs(a)))


def _write_private(path, text):
    """Write text to path through a fresh temporary file and a rename: never through a link at path."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".evaluation-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


GO_POLL_S = 0.01  # how often an evaluator started early looks for the controller's word


def wait_for_go(go_path):
    """An evaluator the controller started early, while the run still trains or saves, waits here
    before it reads anything of the run: True once go_path says "go" (the run's processes are all
    gone), False for any other word (nothing to score). The controller writes it by a rename."""
    while True:
        try:
            with open(go_path, "rb") as f:
                return f.read(16).strip() == b"go"
        except FileNotFoundError:
            time.sleep(GO_POLL_S)


def evaluate(run_dir, out_path=None, go_path=None):
    """Score a run: val_bpb over EVAL_TOKENS validation tokens (spread over the split), plus the
    causality check. With go_path, the run is read only once the controller says so (wait_for_go);
    None is returned, and nothing written, if it says there is nothing to score."""
    out_path = out_path or os.path.join(run_dir, "evaluation.json")
    n_rows = math.ceil(EVAL_TOKENS / MAX_SEQ_LEN)
    result = dict(status="rejected", reason="", val_bpb=None, val_loss=None, eval_tokens=n_rows * MAX_SEQ_LEN,
                  eval_bytes=None, causality="not checked", profile=PROFILE, seq_len=MAX_SEQ_LEN,
                  vocab_size=None, data_hash=None, tokenizer_hash=None,
                  run_dir=os.path.abspath(run_dir), eval_seconds=None, probe_rows=0, control_rows=0)
    workers = []
    t0 = time.time()
    try:
        # both workers start first: their interpreters and imports overlap each other, the data
        # preparation below and, for an evaluator started early, the run's last step and saving
        scorer = _Worker("model worker")
        workers.append(scorer)
        checker = _Worker("checking model worker")
        workers.append(checker)
        manifest = verify_data()
        enc = load_tokenizer()
        vocab = enc.n_vocab
        result.update(vocab_size=vocab, data_hash=manifest["data_hash"], tokenizer_hash=tokenizer_hash())
        tb = load_token_bytes().astype(np.int64)
        rows = validation_rows(enc, n_rows)
        if go_path is not None:
            if not wait_for_go(go_path):
                return None
            t0 = time.time()  # the evaluation's own time starts when the run may be read
        model_files = read_model_files(run_dir)
        for w in workers:
            w.send_model(model_files)
        del model_files

        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        probes, controls = _check_plan(rows, rng)
        keep = {i: cut + 1 for i, cut, _ in probes} | {i: MAX_SEQ_LEN for i in controls}
        kept = {}  # the scoring worker's log-probabilities of the check rows, at the positions compared
        row_nats, row_bytes = np.zeros(n_rows), np.zeros(n_rows, dtype=np.int64)
        scorer.wait_ready()
        print("worker ready", flush=True)  # the controller times the phases by this line
        for idx in _batches(list(range(n_rows)), rng):
            # one batch at a time: overlapping worker and scorer only made them fight for the cores
            batch = rows[idx]
            shifted, log_sum = _shifted(scorer.ask(batch[:, :-1], vocab))
            for r, i in enumerate(idx):
                if i in keep:
                    kept[i] = shifted[r, :keep[i]] - log_sum[r, :keep[i], None]
            targets = batch[:, 1:].astype(np.int64)
            # only the targets' log-probabilities, never the whole array's
            nll = log_sum.astype(np.float64) - np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
            nb = tb[targets]
            row_nats[idx] = (nll * (nb > 0)).sum(axis=1)
            row_bytes[idx] = nb.sum(axis=1)
        scorer.close()  # gone, with anything it started, before the checking worker sees a row

        checker.wait_ready()
        bad_probes = bad_controls = 0
        items = probes + [(i, None, rows[i, :-1]) for i in controls]
        for batch in _batches(items, rng):
            shifted, log_sum = _shifted(checker.ask(np.stack([tokens for _, _, tokens in batch]), vocab))
            logp = shifted - log_sum[..., None]
            for r, (i, cut, _) in enumerate(batch):
                if not _close_enough(kept[i], logp[r, :keep[i]]):
                    if cut is None:
                        bad_controls += 1
                    else:
                        bad_probes += 1
        checker.close()
        result.update(probe_rows=len(probes), control_rows=len(controls))
        if bad_probes or bad_controls:
            result["causality"] = (f"failed on {bad_probes} of {len(probes)} probe rows and "
                                   f"{bad_controls} of {len(controls)} control rows")
            if bad_probes:
                raise Rejected("model is not causal: logits changed when only later tokens changed")
            raise Rejected("model is not consistent: a fresh model worker gave other logits for the same "
                           "rows (answers that depend on earlier batches or on other rows of a batch)")
        result["causality"] = "ok"
        nats, nbytes = math.fsum(row_nats), int(row_bytes.sum())  # fsum: the same in any row order
        result.update(status="ok", val_loss=nats / max(1, n_rows * MAX_SEQ_LEN),
                      val_bpb=nats / (math.log(2) * nbytes), eval_bytes=nbytes)
    except Rejected as e:
        result["reason"] = str(e)
        for w in workers:
            w.close()
        # what the workers wrote to stderr may help a person; it stays in a local file, never in the result
        log = "".join(f"== {w.name}, exit code {w.proc.returncode} (untrusted output) ==\n{tail}\n"
                      for w in workers if w.proc is not None and (tail := w.stderr_tail()).strip())
        if log:
            _write_private(os.path.splitext(out_path)[0] + ".worker.log", log)
    finally:
        for w in workers:
            w.close()
            w.err.close()
    result["eval_seconds"] = round(time.time() - t0, 3)
    _write_private(out_path, json.dumps(result, indent=1))
    return result


def _worker_main():
    """Runs UNTRUSTED model code. Never reads data or the run: the evaluator sends the model's
    files and then token batches; it answers only logits."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything the model code prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def read(n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = proto_in.readinto(view[got:])
            if not k:
                sys.exit(0)
            got += k
        return buf

    # the slow imports first: an evaluator started early has its workers ready when the run is
    # saved, and one started late prepares its data meanwhile (no model code has run yet)
    import io
    import linecache
    import types
    import torch
    if bytes(read(8)) != b"CHARTER2":
        sys.exit("unknown protocol")
    header_len, source_len, weights_len = struct.unpack("<IIQ", read(16))
    header = json.loads(bytes(read(header_len)))
    source = bytes(read(source_len)).decode("utf-8")
    weights = read(weights_len)
    filename = os.path.abspath(header["source"])  # in the worker's own directory, not the run's
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # for tracebacks
    module = types.ModuleType("model_source")
    module.__file__ = filename
    sys.modules["model_source"] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    model = getattr(module, header["entry"])(**header["kwargs"])
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)  # never arbitrary pickle
    del weights
    model.load_state_dict(state)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    _write_all(proto_out, b"CHARTER2")

    while True:
        b, t = struct.unpack("<II", read(8))
        if b == 0:
            return
        tokens = np.frombuffer(read(b * t * 4), dtype="<i4").reshape(b, t)
        with torch.inference_mode():
            logits = model(torch.from_numpy(tokens.astype(np.int64)).to(device))
        arr = np.ascontiguousarray(logits.float().cpu().numpy(), dtype="<f4")
        _write_all(proto_out, struct.pack("<III", *arr.shape) if arr.ndim == 3 else struct.pack("<III", 0, 0, 0))
        _write_all(proto_out, arr)


def _write_all(f, data):
    view = memoryview(data).cast("B")
    while len(view):
        view = view[f.write(view):]

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
        return _worker_main()
    ap = argparse.ArgumentParser(prog="prepare.py", description="Charter lab data, tokenizer and evaluator")
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--source", default="debian", help="debian (default, offline), climbmix (network), or a directory")
    ap.add_argument("--force", action="store_true", help="rebuild data and tokenizer even if cached")
    v = sub.add_parser("verify", help="re-hash every cached artifact")
    v.add_argument("--json", action="store_true")
    e = sub.add_parser("evaluate", help="score a finished run")
    e.add_argument("run_dir")
    e.add_argument("--out", default=None)
    e.add_argument("--go", default=None, metavar="FILE",
                   help="started early: read the run only once FILE says go (any other word: exit 4, nothing scored)")
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
            r = evaluate(args.run_dir, args.out, args.go)
            if r is None:
                print("nothing to score: the controller called the evaluation off")
                return 4
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
