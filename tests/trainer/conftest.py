"""Fixtures for trainer/ tests: a small real-text corpus, a prepared cache, a tiny lab."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
PY = sys.executable
# the prepare.py the labs get: another one (an older evaluator, say) shows what the tests catch in it
PREPARE = Path(os.environ.get("CHARTER_TEST_PREPARE") or TRAINER / "prepare.py")

# a tiny model and tiny budgets, written into the lab's train.py hyperparameter block
TINY = dict(DEPTH="1", MODEL_DIM="32", HEAD_DIM="16", DEVICE_BATCH_SIZE="4", TOTAL_BATCH_SIZE="1024")


def make_corpus(root, max_bytes=400_000):
    """Real-ish text: docstrings and source of the installed stdlib, one .txt file per module."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    root.mkdir(parents=True, exist_ok=True)
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:12_000]
        (root / (path.stem + ".txt")).write_text(text, encoding="utf-8")
        total += len(text)
        if total >= max_bytes:
            break
    return root


def lab_env(cache, **extra):
    env = dict(os.environ)
    env.update(CHARTER_CACHE_DIR=str(cache), CHARTER_PROFILE="cpu", CHARTER_TIME_BUDGET="2",
               CHARTER_EVAL_TOKENS="4096", CHARTER_NO_COMPILE="1", HF_HUB_OFFLINE="1")
    env.pop("EVAL_WORKER_PREFIX", None)
    env.pop("RUN_DIR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(args, cwd, env, timeout=300):
    return subprocess.run([PY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def make_lab(path, **hyper):
    path.mkdir(parents=True, exist_ok=True)
    for name in ("prepare.py", "train.py", "program.md"):
        shutil.copy(PREPARE if name == "prepare.py" else TRAINER / name, path / name)
    src = (path / "train.py").read_text()
    for name, value in {**TINY, **hyper}.items():
        src, n = re.subn(rf"^{name} = [^#\n]+", f"{name} = {value} ", src, flags=re.M)
        assert n == 1, name
    (path / "train.py").write_text(src)
    return path


def import_file(path, env):
    """Import a lab module in-process with the lab's environment (prepare reads env at import)."""
    old = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("CHARTER_", "HF_"))})
    try:
        name = f"{path.stem}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(path.parent))
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A lab with a prepared cache over a local corpus (shared, read-only for tests)."""
    base = tmp_path_factory.mktemp("trainer")
    corpus = make_corpus(base / "corpus")
    cache = base / "cache"
    lab = make_lab(base / "lab")
    env = lab_env(cache)
    r = run(["prepare.py", "--source", str(corpus)], lab, env)
    assert r.returncode == 0, r.stderr
    prep = import_file(lab / "prepare.py", env)
    return dict(base=base, corpus=corpus, cache=cache, lab=lab, env=env, prepare=prep)


def _cache_state(cache):
    """Every path under the cache with its size and modification time (cheap: no reading)."""
    return sorted((str(p.relative_to(cache)), p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*"))


@pytest.fixture(autouse=True)
def _shared_cache_is_left_untouched(request):
    """A test that uses the shared prepared cache must leave it as it found it (damage goes to private_cache)."""
    if "prepared" not in request.fixturenames:
        yield
        return
    cache = request.getfixturevalue("prepared")["cache"]
    before = _cache_state(cache)
    yield
    assert _cache_state(cache) == before, "this test changed the shared prepared cache: use private_cache"


@pytest.fixture
def private_cache(prepared, tmp_path):
    """A copy of the prepared cache that a test may damage."""
    cache = tmp_path / "cache"
    shutil.copytree(prepared["cache"], cache)
    return cache, lab_env(cache)


def write_run(run_dir, model, kwargs, source_text):
    """A run directory as train.py writes it, for a model built in the test."""
    import torch
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, run_dir / "model.pt")
    (run_dir / "config.json").write_text(json.dumps(dict(entry="build_model", source="model_source.py",
                                                         weights="model.pt", kwargs=kwargs, profile="cpu")))
    (run_dir / "model_source.py").write_text(source_text)
    return run_dir
