"""Data, tokenizer, loader and cache integrity of trainer/prepare.py."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import lab_env, run


def test_prepare_is_idempotent_and_verify_reports_hashes(prepared):
    lab, env = prepared["lab"], prepared["env"]
    r = run(["prepare.py", "--source", str(prepared["corpus"])], lab, env)
    assert r.returncode == 0, r.stderr
    assert "data: cached" in r.stdout and "tokenizer: cached" in r.stdout
    r = run(["prepare.py", "verify", "--json"], lab, env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("profile", "data_hash", "tokenizer_hash", "cache_dir", "train_dir", "val_dir", "tokenizer_dir"):
        assert info[key], key
    assert info["profile"] == "cpu"
    assert info["train_dir"] != info["val_dir"]
    manifest = json.loads((prepared["cache"] / "data" / "manifest.json").read_text())
    assert info["data_hash"] == manifest["data_hash"]
    files = {f["file"].split("/")[0] for f in manifest["files"]}
    assert files == {"train", "val"}
    val_docs = sum(f["docs"] for f in manifest["files"] if f["file"].startswith("val/"))
    all_docs = sum(f["docs"] for f in manifest["files"])
    assert 0.03 < val_docs / all_docs < 0.2


def test_split_is_deterministic_by_path(prepared):
    p = prepared["prepare"]
    names = [f"dir/doc{i}.rst" for i in range(2000)]
    first = [p.split_of(n) for n in names]
    assert first == [p.split_of(n) for n in names]
    assert 0.07 < first.count("val") / len(names) < 0.13


def test_tokenizer_round_trip_and_bos(prepared):
    enc = prepared["prepare"].load_tokenizer()
    assert enc.n_vocab == 2048
    text = "def f(x):\n    return x ** 2  # héllo wörld, 12345 ✓\n"
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert max(ids) < enc.n_vocab and enc.bos_token_id not in ids
    assert enc.decode([enc.bos_token_id]) == "<|bos|>"
    tb = prepared["prepare"].load_token_bytes()
    assert tb[enc.bos_token_id] == 0
    assert all(tb[i] == len(enc.decode_single_token_bytes(i)) for i in range(0, enc.n_vocab - 1, 37))


def test_tokenizer_training_is_deterministic(prepared, tmp_path):
    env = lab_env(tmp_path / "cache2")
    r = run(["prepare.py", "--source", str(prepared["corpus"])], prepared["lab"], env)
    assert r.returncode == 0, r.stderr
    a = prepared["cache"] / "tokenizer" / "vocab2048"
    b = tmp_path / "cache2" / "tokenizer" / "vocab2048"
    assert (a / "ranks.tiktoken").read_bytes() == (b / "ranks.tiktoken").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 70), min_size=1, max_size=40), row_len=st.integers(2, 33))
def test_pack_rows_invariants(prepared, lengths, row_len):
    pack_rows = prepared["prepare"].pack_rows
    bos = 0
    # document d is BOS followed by tokens 1000*d+1, 1000*d+2, ... so every token is traceable
    docs = [np.array([bos] + [1000 * d + i + 1 for i in range(n)], dtype=np.int32) for d, n in enumerate(lengths)]
    rows = list(pack_rows(docs, row_len, bos, buffer_size=8))
    total = sum(len(d) for d in docs)
    for row in rows:
        assert len(row) == row_len            # exact length, no padding
        assert row[0] == bos                  # every row starts at a document (or continuation) start
        # inside a row, each segment after a BOS is a contiguous run of one document
        segments = np.split(row, np.flatnonzero(row == bos)[1:])
        for seg in segments:
            body = seg[1:]
            if len(body):
                assert len(set(body // 1000)) == 1
                assert np.all(np.diff(body) == 1)
    # no real token appears twice, and only the final partial row (< row_len tokens) is lost
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
    content = flat[flat != bos]
    assert len(content) == len(set(content.tolist()))
    assert (total - len(docs)) - len(content) < row_len


def test_dataloader_rows_are_bos_aligned_and_shifted(prepared):
    p = prepared["prepare"]
    enc = p.load_tokenizer()
    loader = p.make_dataloader(batch_size=8, seq_len=64, seed=1)
    for _ in range(5):
        x, y = next(loader)
        assert x.shape == y.shape == (8, 64)
        assert (x[:, 0] == enc.bos_token_id).all()
        assert (x[:, 1:] == y[:, :-1]).all()
        assert int(x.max()) < enc.n_vocab and int(x.min()) >= 0


def test_dataloader_tokenizes_as_it_goes_and_streams_what_tokenizing_everything_first_gave(prepared):
    # the loader tokenizes documents when first drawn (a run's start-up no longer pays for the whole
    # split); the batches must be exactly those of the old way: every document tokenized up front,
    # the same permutations, the same packing. Two epochs, so the kept tokens are reused too.
    p = prepared["prepare"]
    enc = p.load_tokenizer()
    texts = p._read_split("train", p.verify_data(splits=("train",)))
    docs = p._tokenize(enc, texts)
    rng = np.random.default_rng(3)

    def stream():
        while True:
            for i in rng.permutation(len(docs)):
                yield docs[i]

    rows = p.pack_rows(stream(), 64 + 1, enc.bos_token_id)
    total_tokens = sum(len(d) for d in docs)
    loader = p.make_dataloader(batch_size=8, seq_len=64, seed=3)
    for _ in range(2 * total_tokens // (8 * 65) + 2):
        expected = np.stack([next(rows) for _ in range(8)])
        x, y = next(loader)
        assert np.array_equal(x.numpy(), expected[:, :-1]) and np.array_equal(y.numpy(), expected[:, 1:])


def test_validation_rows_are_deterministic(prepared):
    p = prepared["prepare"]
    enc = p.load_tokenizer()
    a, b = p.validation_rows(enc, 10), p.validation_rows(enc, 10)
    assert a.shape == (10, p.MAX_SEQ_LEN + 1)
    assert np.array_equal(a, b)
    assert (a[:, 0] == enc.bos_token_id).all()


@pytest.mark.parametrize("target", ["tokenizer/vocab2048/ranks.tiktoken", "tokenizer/vocab2048/token_bytes.npy",
                                    "data/val/shard_00000.parquet", "data/train/shard_00000.parquet"])
def test_tampered_artifact_is_refused_by_name(prepared, private_cache, target):
    cache, env = private_cache
    path = cache / target
    data = bytearray(path.read_bytes())
    if target.endswith(".tiktoken"):  # swap two ranks: still a valid file, a different tokenizer
        lines = data.decode().splitlines()
        lines[300], lines[301] = lines[300].split()[0] + " " + lines[301].split()[1], \
            lines[301].split()[0] + " " + lines[300].split()[1]
        data = bytearray(("\n".join(lines) + "\n").encode())
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run(["prepare.py", "verify"], prepared["lab"], env)
    assert r.returncode == 1
    assert str(path) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run(["prepare.py", "evaluate", str(cache)], prepared["lab"], env)  # any dir: it fails before the model
    assert r.returncode == 1 and str(path) in r.stderr and "Traceback" not in r.stderr


def test_extra_shard_is_refused(prepared, private_cache):
    cache, env = private_cache
    extra = cache / "data" / "train" / "shard_00099.parquet"
    extra.write_bytes((cache / "data" / "train" / "shard_00000.parquet").read_bytes())
    r = run(["prepare.py", "verify"], prepared["lab"], env)
    assert r.returncode == 1 and "shard_00099.parquet" in r.stderr
