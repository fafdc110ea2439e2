"""bench/eval_noise.py's arithmetic: the error a subset of validation rows adds to a comparison of
two models, for contiguous and spread subsets, and the count it chooses from it."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_eval_noise", ROOT / "bench" / "eval_noise.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_eval_noise"] = module
    spec.loader.exec_module(module)
    return module


def test_subsets_are_runs_of_rows_or_every_kth_row(bench):
    nats = np.arange(12, dtype=float)[None, :]  # one model, rows 0..11, one byte per row
    nbytes = np.ones(12)
    contiguous = bench.subset_bpb(nats, nbytes, 4, "contiguous") * math.log(2)
    spread = bench.subset_bpb(nats, nbytes, 4, "spread") * math.log(2)
    assert contiguous[0].tolist() == pytest.approx([1.5, 5.5, 9.5])            # rows 0-3, 4-7, 8-11
    assert spread[0].tolist() == pytest.approx([4.5, 5.5, 6.5])                # rows 0,3,6,9 / 1,4,7,10 / 2,5,8,11


def test_a_difference_that_depends_on_the_document_shows_in_contiguous_subsets_only(bench):
    # two models that differ by +0.2 on the first half of the split's documents and -0.2 on the
    # second (a change that helps code and hurts prose, say): the first rows alone mislead
    rows = 64
    a = np.full(rows, 2.0)
    b = a + np.where(np.arange(rows) < rows // 2, 0.2, -0.2)
    nats, nbytes = np.stack([a, b]) * math.log(2), np.ones(rows)
    contiguous = bench.comparison_error(nats, nbytes, [0, 1], 8, "contiguous")
    spread = bench.comparison_error(nats, nbytes, [0, 1], 8, "spread")
    assert contiguous == pytest.approx(np.std([0.2] * 4 + [-0.2] * 4, ddof=1))
    assert spread == pytest.approx(0.0, abs=1e-12)
    # runs of one experiment (seeds of one commit) are not a comparison
    assert bench.comparison_error(nats, nbytes, [3, 3], 8, "contiguous") is None
    # one subset has no spread
    assert bench.comparison_error(nats, nbytes, [0, 1], 64, "spread") is None


def test_the_chosen_count_is_the_smallest_within_a_quarter_of_the_noise_floor(bench):
    errors = {4096: 0.05, 8192: 0.012, 16384: 0.009, 32768: None, 65536: 0.004}
    assert bench.choose(errors, noise_sd=0.04) == 16384
    assert bench.choose(errors, noise_sd=0.01) is None
