"""Offline and queue proposers: real hyperparameter search, deterministic, never repeating; queue order."""

import dataclasses
import math
import random
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
    assert dead_constants(src + "from cfg import *\n") == {}  # may rebind any of them
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
    # the controls: one move fewer, one move that cleared its bar (discarded, say, when the confirming
    # runs disagreed), or moves whose mean |effect| is above noise, and it is tried
    assert decay_moves(lab(moves[:-1])) > 0
    assert decay_moves(lab(moves[:-1] + [(0.03, 0.012)])) > 0
    assert decay_moves(lab(moves[:-1] + [(0.03, -0.02)])) > 0


def noisy(item, sd):
    """The record with the run-to-run sd its keep rule assumed."""
    if "noise_sd" in HistoryItem.__dataclass_fields__:
        return dataclasses.replace(item, noise_sd=sd)
    object.__setattr__(item, "noise_sd", sd)  # a HistoryItem without the field: the proposer uses getattr
    return item


def decay_lab(gains, threshold=0.01, sd=None, start=BASE):
    """An earlier session that moved the weight decay from `start`, once per gain."""
    return [baseline(start, "s1")] + [
        noisy(run(dict(start, WEIGHT_DECAY=round(0.01 * i, 4)), improvement=g, session="s1", experiment=i,
                  threshold=threshold), sd) for i, g in enumerate(gains, 1)]


def inert_now(lab, history=(), text=TRAIN):
    return OfflineProposer().inert(ctx(list(history) or [baseline(BASE)], text=text, lab=lab))


@pytest.mark.parametrize("sd", [None, 0.01])
def test_a_knob_at_its_optimum_is_not_inert(sd):
    # every move costs ~0.04 against a bar of 0.035: far from noise, the knob matters (it is tuned)
    assert "WEIGHT_DECAY" not in inert_now(decay_lab([-0.04, -0.042, -0.038], threshold=0.035, sd=sd))
    # the control: the same moves at noise level are inert
    assert "WEIGHT_DECAY" in inert_now(decay_lab([-0.004, 0.003, -0.002], threshold=0.035, sd=sd))


def test_inert_by_results_measures_noise_by_the_recorded_noise_sd():
    gains = [-0.009, 0.008, -0.0095]  # mean |effect| 0.0088, none clears the bar of 0.01
    assert "WEIGHT_DECAY" in inert_now(decay_lab(gains, sd=0.007))  # two runs differ by ~0.008 at this noise
    assert "WEIGHT_DECAY" not in inert_now(decay_lab(gains, sd=0.002))  # quieter runs: that's an effect
    assert "WEIGHT_DECAY" not in inert_now(decay_lab(gains))  # no sd: half the bar stands in for the noise


def test_an_inert_knob_is_flagged_more_surely_as_its_moves_accumulate():
    # Simulated sessions moving a knob that does nothing: each move's improvement is the difference
    # of two noisy runs; one that clears the bar is kept (the incumbent then holds its value).
    rng = random.Random(0)
    sd, bar = 0.007, 0.025

    def flagged(n, trials=100):
        hits = 0
        for _ in range(trials):
            incumbent, lab = dict(BASE), [baseline(BASE, "s1")]
            for i in range(1, n + 1):
                params = dict(incumbent, WEIGHT_DECAY=round(0.01 * i, 4))
                gain = rng.gauss(0.0, sd * math.sqrt(2))
                lab.append(noisy(run(params, "keep" if gain >= bar else "discard", gain, "s1", i, bar), sd))
                incumbent = params if gain >= bar else incumbent
            text = with_values(WEIGHT_DECAY=incumbent["WEIGHT_DECAY"])
            hits += "WEIGHT_DECAY" in inert_now(lab, [baseline(incumbent)], text)
        return hits

    counts = [flagged(n) for n in (3, 10, 30)]
    assert counts == sorted(counts) and counts[0] >= 60 and counts[-1] >= 90, counts


def test_inert_by_results_counts_only_moves_from_the_knobs_current_value():
    lab = decay_lab([-0.003, 0.002, -0.004])  # moved from a weight decay of 0.0, no effect
    assert "WEIGHT_DECAY" in inert_now(lab)
    # this session kept a weight decay of 0.05: those moves were measured elsewhere, so it is judged afresh
    here = dict(BASE, WEIGHT_DECAY=0.05)
    assert "WEIGHT_DECAY" not in inert_now(lab, [baseline(BASE), run(here, "keep", 0.02)], with_values(WEIGHT_DECAY=0.05))
    # an incumbent that moved another knob leaves the evidence standing
    deeper = dict(BASE, DEPTH=3.0)
    assert "WEIGHT_DECAY" in inert_now(lab, [baseline(BASE), run(deeper, "keep", 0.02)], with_values(DEPTH=3))


def test_batch_moves_stay_whole_numbers_and_params_are_what_the_file_says():
    text = TRAIN.replace("DEVICE_BATCH_SIZE = 32     # sequences",
                         "DEVICE_BATCH_SIZE = 3      # sequences\nTOTAL_BATCH_SIZE = 3072   # tokens")
    consts = parse_constants(text)
    # halving would make 1.5 sequences: the file would say 1
    assert OfflineProposer._moves(OfflineProposer._knobs(consts)["BATCH"], consts) == [
        {"DEVICE_BATCH_SIZE": 6.0, "TOTAL_BATCH_SIZE": 6144.0}]
    batch = 0
    for i in range(1, 81):
        p = OfflineProposer(seed=0).propose(ctx(experiment=i, text=text))
        after = parse_constants(p.files["train.py"].decode())
        assert p.params == {k: c.value for k, c in after.items()}, p.description  # floats too: 3e-3 x 1.5
        batch += p.params["DEVICE_BATCH_SIZE"] != 3
    assert batch > 0


@pytest.mark.parametrize("before, after", [
    ("# a\fcomment\nLR = 0.1  # lr\nDEPTH = 4\n", "# a\fcomment\nLR = 0.2  # lr\nDEPTH = 4\n"),
    ('"""doc\x0b\x1c\x1d\x1e\x85\u2028\u2029"""\nLR = 0.1\nDEPTH = 4\n',
     '"""doc\x0b\x1c\x1d\x1e\x85\u2028\u2029"""\nLR = 0.2\nDEPTH = 4\n'),
    ('S = "é"; LR = 0.1\n', 'S = "é"; LR = 0.2\n'),
    ('S = "日本語 ü"; LR = 0.1  # ß\n', 'S = "日本語 ü"; LR = 0.2  # ß\n'),
    ("X = 1\r\nLR = 0.1\r\n", "X = 1\r\nLR = 0.2\r\n"),
    ("X = 1\rLR = 0.1\r", "X = 1\rLR = 0.2\r"),
])
def test_apply_values_edits_the_literal_where_ast_found_it(before, after):
    assert apply_values(before, parse_constants(before), {"LR": 0.2}) == after


def test_apply_values_edits_two_constants_on_one_line():
    src = "A = 1; B = 0.1; C = 7\n"
    assert apply_values(src, parse_constants(src), {"A": 100, "B": 0.25}) == "A = 100; B = 0.25; C = 7\n"


def test_proposals_edit_the_right_literal_past_form_feeds_and_non_ascii_text():
    text = TRAIN.replace("# width", "# largeur \f du modèle").replace(
        "LEARNING_RATE = 3e-3", 'NOTE = "é—ü"; LEARNING_RATE = 3e-3')
    before = parse_constants(text)
    for i in range(1, 41):
        p = OfflineProposer(seed=0).propose(ctx(experiment=i, text=text))
        new = p.files["train.py"].decode()
        after = parse_constants(new)
        assert p.params == {k: c.value for k, c in after.items()}, p.description
        changed = [k for k in before if before[k].value != after[k].value]
        diff = [a for a, b in zip(text.split("\n"), new.split("\n")) if a != b]
        assert len(diff) == len(changed) and len(new.split("\n")) == len(text.split("\n")), p.description


def test_valid_but_deeply_nested_python_never_makes_it_raise():
    deep = "\n\ndef total():\n    return " + "1 + " * 1500 + "1\n"  # valid; a recursive walk overflows
    text = MUON + deep
    assert set(parse_constants(text)) == set(parse_constants(MUON))
    assert "MATRIX_LR" in dead_constants(text)  # the walk is iterative: the analysis still works
    p = OfflineProposer(seed=0).propose(ctx(text=text))
    assert p is not None and "MATRIX_LR" in p.hypothesis
    # a deep test around a read: unsure, never an exception
    guarded = MUON + '\nif OPTIMIZER == "x" or not ' + "not " * 1500 + "OPTIMIZER:\n    print(MATRIX_LR)\n"
    assert isinstance(dead_constants(guarded), dict)
    assert OfflineProposer(seed=0).propose(ctx(text=guarded)) is not None
    # too deep even for the parser: nothing to propose, and nothing raised
    deeper = TRAIN + "\nX = " + "1 + " * 100_000 + "1\n"
    assert parse_constants(deeper) == {} and dead_constants(deeper) == {}
    assert OfflineProposer(seed=0).propose(ctx(text=deeper)) is None
    assert OfflineProposer().inert(ctx(text=deeper)) == {}


SHADOW = 'OPTIMIZER = "adamw"\nMATRIX_LR = 0.02\nUNREAD = 1\ndef run():\n    if OPTIMIZER == "muon":\n        return MATRIX_LR\n'


@pytest.mark.parametrize("binding", [
    "def main(NAME='muon'):\n    pass",
    "f = lambda *NAME: 0",
    "import os as NAME",
    "from os import path as NAME",
    "def NAME():\n    pass",
    "class NAME:\n    pass",
    "try:\n    pass\nexcept Exception as NAME:\n    pass",
    "for NAME in range(3):\n    pass",
    "with open(__file__) as NAME:\n    pass",
    "xs = [0 for NAME in range(3)]",
    "def g():\n    global NAME\n    NAME = 'muon'",
    "match 0:\n    case NAME:\n        pass",
])
def test_a_constant_whose_name_is_bound_elsewhere_is_live(binding):
    assert set(dead_constants(SHADOW)) == {"MATRIX_LR", "UNREAD"}  # the control
    # the test's constant is bound elsewhere too: unsure of its value, so the read under it is live
    assert "MATRIX_LR" not in dead_constants(SHADOW + binding.replace("NAME", "OPTIMIZER") + "\n")
    # the constant itself is bound elsewhere: unsure which binding a read is of, so live
    assert "UNREAD" not in dead_constants(SHADOW + binding.replace("NAME", "UNREAD") + "\n")


def test_a_guard_on_a_parameter_of_the_same_name_is_unsure():
    src = 'OPTIMIZER = "adamw"\nMATRIX_LR = 0.02\ndef main(OPTIMIZER="muon"):\n    if OPTIMIZER == "muon":\n        return MATRIX_LR\n'
    assert "MATRIX_LR" not in dead_constants(src)
    assert "MATRIX_LR" in dead_constants(src.replace('def main(OPTIMIZER="muon")', "def main()"))  # the control


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
