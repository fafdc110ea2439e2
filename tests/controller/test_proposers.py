"""Offline and queue proposers: real hyperparameter search, deterministic, never repeating; queue order."""

import subprocess
from pathlib import Path

from controller.proposers import HistoryItem, ProposalContext
import pytest

from controller.proposers.offline import INERT_AFTER, OfflineProposer, apply_values, dead_constants, parse_constants
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
    model = build(DEPTH, MODEL_DIM)
    train(model, DEVICE_BATCH_SIZE, LEARNING_RATE, WARMDOWN_RATIO, WEIGHT_DECAY, OPTIMIZER, SEED)
'''


def ctx(history=(), experiment=1, text=TRAIN, lab=()):
    return ProposalContext(Path("/nonexistent"), ["train.py"], {"train.py": text}, list(history), 1.8, experiment,
                           lab_history=list(lab))


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


BASE = {k: c.value for k, c in parse_constants(TRAIN).items()}


def with_values(text=TRAIN, **values):
    """The train.py text with some constants set (the literal replaced in place)."""
    return apply_values(text, parse_constants(text), values)


def run(params, decision="discard", improvement=-0.05, session="", experiment=1, threshold=0.01):
    """One decided experiment, as the session hands it to proposers."""
    return HistoryItem(f"experiment {experiment}", decision, 1.8, "offline", dict(params), improvement,
                       session=session, experiment=experiment, threshold=threshold)


def baseline(params, session=""):
    return HistoryItem("baseline", "baseline", 1.8, "baseline", dict(params), None, session=session)


MUON = TRAIN.replace("SEED = 42 ", "MATRIX_LR = 0.02           # muon only\nSEED = 42 ").replace(
    "    train(", '    if OPTIMIZER == "muon":\n        model = muon(model, MATRIX_LR)\n    train(')


def test_a_constant_read_only_under_a_false_branch_is_never_proposed():
    assert "MATRIX_LR" in parse_constants(MUON)

    def moved(text):
        proposer = OfflineProposer(seed=0)
        return sum(proposer.propose(ctx(experiment=i, text=text)).params["MATRIX_LR"] != 0.02 for i in range(1, 81))

    inert = OfflineProposer().inert(ctx(text=MUON))
    assert "MATRIX_LR" in inert and "OPTIMIZER == 'muon'" in inert["MATRIX_LR"], inert
    assert "MATRIX_LR" in OfflineProposer().propose(ctx(text=MUON)).hypothesis  # it says what it skipped
    assert moved(MUON) == 0
    # the control: under the Muon optimizer the same constant is live, and proposed
    live = MUON.replace('OPTIMIZER = "adamw"', 'OPTIMIZER = "muon" ')
    assert "MATRIX_LR" not in OfflineProposer().inert(ctx(text=live))
    assert moved(live) > 0


@pytest.mark.parametrize("guard, dead", [
    ('if OPTIMIZER == "muon":', True),
    ('if OPTIMIZER != "adamw":', True),
    ('if OPTIMIZER in ("muon", "sgd"):', True),
    ('if not OPTIMIZER == "adamw":', True),
    ('if USE_MUON and OPTIMIZER == "adamw":', True),
    ('if OPTIMIZER == "adamw":', False),
    ('if OPTIMIZER not in ("muon",):', False),
    ('if other == "muon":', False),  # not a constant: unsure, so live
    ('if FLAG == "muon":', False),  # rebound inside a function: its value is unknown, so live
])
def test_source_detection_of_false_branches(guard, dead):
    src = (f'OPTIMIZER = "adamw"\nUSE_MUON = False\nFLAG = "adamw"\nMATRIX_LR = 0.02\nUNUSED = 1\n'
           f'def set_flag():\n    global FLAG\n    FLAG = "muon"\n'
           f'def main():\n    print(OPTIMIZER, USE_MUON, FLAG)\n    {guard}\n        return MATRIX_LR\n')
    found = dead_constants(src)
    assert ("MATRIX_LR" in found) is dead, found
    assert found["UNUSED"] == "never read"
    assert "OPTIMIZER" not in found and "FLAG" not in found


def test_source_detection_conditional_expression_and_escapes():
    src = 'OPTIMIZER = "adamw"\nMATRIX_LR = 0.02\nLR = 0.1\nx = MATRIX_LR if OPTIMIZER == "muon" else LR\n'
    assert set(dead_constants(src)) == {"MATRIX_LR"}
    assert dead_constants(src + "print(globals())\n") == {}  # names may be read by string: unsure of all
    assert dead_constants('MATRIX_LR = 0.02\nprint(getattr(cfg, "MATRIX_LR"))\n') == {}


def test_a_knob_with_no_effect_in_an_earlier_session_is_not_proposed_again():
    # Session s1 started from another incumbent (DEPTH 3) than s0 and this session; its three
    # weight-decay moves are measured against its own baseline, so DEPTH was never moved and stays live.
    old = dict(BASE, DEPTH=3.0)
    moves = [(0.01, -0.003), (0.1, 0.002), (0.03, -0.004)]
    assert len(moves) == INERT_AFTER

    def lab(moves):
        return [baseline(BASE, "s0"), baseline(old, "s1")] + [run(dict(old, WEIGHT_DECAY=v), improvement=g, session="s1", experiment=i)
                                        for i, (v, g) in enumerate(moves, 1)]

    def decay_moves(history):
        proposer = OfflineProposer(seed=0)
        return sum(proposer.propose(ctx([baseline(BASE)], experiment=i, lab=history)).params["WEIGHT_DECAY"] != 0.0
                   for i in range(1, 101))

    inert = OfflineProposer().inert(ctx([baseline(BASE)], lab=lab(moves)))
    assert set(inert) == {"WEIGHT_DECAY"} and "moved 3 times" in inert["WEIGHT_DECAY"], inert
    assert decay_moves(lab(moves)) == 0
    # the controls: one move fewer, or one move that came within half of its bar, and it is tried
    assert decay_moves(lab(moves[:-1])) > 0
    assert decay_moves(lab(moves[:-1] + [(0.03, 0.006)])) > 0


def test_never_reproposes_a_configuration_tried_in_an_earlier_session():
    consts = parse_constants(TRAIN)
    knobs = OfflineProposer._knobs(consts)
    earlier = {tuple(sorted(dict(BASE, **m).items()))
               for members in knobs.values() for m in OfflineProposer._moves(members, consts)}
    lab = [baseline(BASE, "s1")] + [run(dict(key), session="s1", experiment=i) for i, key in enumerate(sorted(earlier), 1)]
    proposed = [OfflineProposer(seed=0).propose(ctx([baseline(BASE)], experiment=i, lab=lab)) for i in range(1, 61)]
    assert all(p is not None for p in proposed)
    again = [p.description for p in proposed if tuple(sorted(p.params.items())) in earlier]
    assert again == []
    # the control: without the lab's history the same proposer goes straight to those neighbours
    fresh = [OfflineProposer(seed=0).propose(ctx([baseline(BASE)], experiment=i)) for i in range(1, 61)]
    assert sum(tuple(sorted(p.params.items())) in earlier for p in fresh) > 10


def test_two_near_misses_are_combined_then_each_retried_once_on_the_new_incumbent():
    # An earlier session: a higher learning rate and a longer warmdown each came close, not quite.
    lab = [baseline(BASE, "s1"),
           run(dict(BASE, LEARNING_RATE=6e-3), improvement=0.007, session="s1", experiment=1),
           run(dict(BASE, WARMDOWN_RATIO=0.2), improvement=0.006, session="s1", experiment=2),
           run(dict(BASE, DEPTH=3.0), improvement=0.002, session="s1", experiment=3)]  # not close
    # This session started from another incumbent (twice the width).
    text = with_values(MODEL_DIM=256)
    here = dict(BASE, MODEL_DIM=256.0)
    history = [baseline(here)]
    both = dict(here, LEARNING_RATE=6e-3, WARMDOWN_RATIO=0.2)
    for seed in range(5):
        p = OfflineProposer(seed=seed).propose(ctx(history, experiment=1, text=text, lab=lab))
        assert p.params == both and "near-miss" in p.hypothesis, (seed, p.description)
    history.append(run(both, improvement=0.004, experiment=1))
    p = OfflineProposer(seed=0).propose(ctx(history, experiment=2, text=text, lab=lab))
    assert p.params == dict(here, LEARNING_RATE=6e-3), p.description  # the closer one, alone, on this incumbent
    history.append(run(p.params, improvement=0.006, experiment=2))
    p = OfflineProposer(seed=0).propose(ctx(history, experiment=3, text=text, lab=lab))
    assert p.params == dict(here, WARMDOWN_RATIO=0.2), p.description
    history.append(run(p.params, improvement=0.001, experiment=3))
    # each was re-tried once; on yet another incumbent the search moves on
    deeper = dict(here, DEPTH=3.0)
    history.append(run(deeper, "keep", 0.02, experiment=4))
    p = OfflineProposer(seed=0).propose(ctx(history, experiment=5, text=with_values(text, DEPTH=3), lab=lab))
    assert "near-miss" not in p.hypothesis, p.description


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
