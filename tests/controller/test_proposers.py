"""Offline and queue proposers: real hyperparameter search, deterministic, never repeating; queue order."""

import subprocess
from pathlib import Path

from controller.proposers import HistoryItem, ProposalContext
from controller.proposers.offline import OfflineProposer, parse_constants
from controller.proposers.queue import QueueProposer

TRAIN = '''"""toy"""
import torch

# ---------------------------------------------------------------------------
DEPTH = 2                  # blocks
MODEL_DIM = 128            # width
DEVICE_BATCH_SIZE = 32     # sequences
LEARNING_RATE = 3e-3       # adamw
WARMDOWN_RATIO = 0.1       # share
WEIGHT_DECAY = 0.0         # decay
SEED = 42                  # never searched
OPTIMIZER = "adamw"        # strings are left alone


def main():
    pass
'''


def ctx(history=(), experiment=1, text=TRAIN):
    return ProposalContext(Path("/nonexistent"), ["train.py"], {"train.py": text}, list(history), 1.8, experiment)


def test_parse_constants_finds_the_numeric_block_only():
    consts = parse_constants(TRAIN)
    assert set(consts) == {"DEPTH", "MODEL_DIM", "DEVICE_BATCH_SIZE", "LEARNING_RATE", "WARMDOWN_RATIO", "WEIGHT_DECAY"}
    assert consts["LEARNING_RATE"].value == 3e-3 and not consts["LEARNING_RATE"].is_int
    assert consts["DEPTH"].is_int


def test_proposal_changes_one_or_two_constants_and_only_their_literals():
    p = OfflineProposer(seed=0).propose(ctx())
    new = p.files["train.py"].decode()
    before, after = parse_constants(TRAIN), parse_constants(new)
    changed = [k for k in before if before[k].value != after[k].value]
    assert 1 <= len(changed) <= 2
    assert p.params == {k: c.value for k, c in after.items()}
    diff_lines = [a for a, b in zip(TRAIN.splitlines(), new.splitlines()) if a != b]
    assert len(diff_lines) == len(changed)
    assert all("#" in line for line in new.splitlines() if any(line.startswith(k) for k in changed))  # comments kept
    assert "SEED = 42" in new


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = [OfflineProposer(seed=7).propose(ctx(experiment=i)).description for i in range(1, 6)]
    b = [OfflineProposer(seed=7).propose(ctx(experiment=i)).description for i in range(1, 6)]
    c = [OfflineProposer(seed=8).propose(ctx(experiment=i)).description for i in range(1, 6)]
    assert a == b and a != c


def test_never_repeats_a_tried_configuration():
    proposer = OfflineProposer(seed=1)
    history, seen = [], {tuple(sorted({k: c.value for k, c in parse_constants(TRAIN).items()}.items()))}
    for i in range(1, 40):
        p = proposer.propose(ctx(history, experiment=i))
        if p is None:
            break
        key = tuple(sorted(p.params.items()))
        assert key not in seen, f"repeated {p.description}"
        seen.add(key)
        history.append(HistoryItem(p.description, "discard", 1.81, "offline", p.params, -0.01))
    assert len(seen) > 20


def test_learns_to_prefer_moves_that_paid():
    # The same experiments twice, with the same seed and experiment numbers: once where the warmdown
    # move paid and the width move hurt, once (the control) where neither changed anything. Moves,
    # counts and tried configurations are identical, so any difference in what gets proposed comes
    # from the improvements alone, i.e. from learning.
    base = {k: c.value for k, c in parse_constants(TRAIN).items()}
    kept = dict(base, WARMDOWN_RATIO=0.2)
    text = TRAIN.replace("WARMDOWN_RATIO = 0.1 ", "WARMDOWN_RATIO = 0.2 ")
    assert parse_constants(text)["WARMDOWN_RATIO"].value == 0.2

    def history(warmdown_gain, width_gain):
        return [HistoryItem("baseline", "baseline", 1.8, "baseline", base, None),
                HistoryItem("warmdown up", "keep", 1.75, "offline", kept, warmdown_gain),
                HistoryItem("wider", "discard", 1.9, "offline", dict(kept, MODEL_DIM=256.0), width_gain)]

    def moved(hist):
        """How often the warmdown and the width knob are moved over 200 experiment numbers."""
        warmdown = width = 0
        for experiment in range(1, 201):
            p = OfflineProposer(seed=0).propose(ctx(hist, experiment=experiment, text=text))
            warmdown += p.params["WARMDOWN_RATIO"] != kept["WARMDOWN_RATIO"]
            width += p.params["MODEL_DIM"] != kept["MODEL_DIM"]
        return warmdown, width

    paid_warmdown, paid_width = moved(history(0.05, -0.1))
    control_warmdown, control_width = moved(history(0.0, 0.0))
    assert paid_warmdown >= 2 * control_warmdown and paid_warmdown - control_warmdown >= 20, \
        (paid_warmdown, control_warmdown)
    assert paid_width < control_width, (paid_width, control_width)


def test_queue_takes_entries_in_name_order_and_skips_consumed(tmp_path):
    q = tmp_path / "queue"
    q.mkdir()
    (q / "002-bigger-lr.patch").write_text("raise the learning rate\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-x\n+y\n")
    (q / "001-folder").mkdir()
    (q / "001-folder" / "train.py").write_text("print('hi')\n")
    (q / "001-folder" / "description.txt").write_text("replace train.py wholesale\n")
    (q / "003-from-slug.patch").write_text("--- a/train.py\n+++ b/train.py\n")
    (q / "notes.txt").write_text("ignored: not NNN-slug")
    proposer = QueueProposer(q)
    first = proposer.propose(ctx())
    assert first.description == "replace train.py wholesale" and first.files == {"train.py": b"print('hi')\n"}
    assert first.source == "queue:001-folder"
    done = [HistoryItem(first.description, "discard", None, first.source, None, None)]
    second = proposer.propose(ctx(done))
    assert second.description == "raise the learning rate" and second.patch.startswith("raise")
    done.append(HistoryItem("", "refused", None, second.source, None, None))
    third = proposer.propose(ctx(done))
    assert third.description == "from slug"
    done.append(HistoryItem("", "refused", None, third.source, None, None))
    assert proposer.propose(ctx(done)) is None
