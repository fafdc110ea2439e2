"""The offline proposer: a seeded search over train.py's UPPER_CASE hyperparameter block.

It parses the block with `ast`, proposes moving one or two knobs (a constant, or all *BATCH*
constants together): learning rates geometrically, ratios by 0.1, power-of-two sizes by doubling
or halving, depth by one. It learns from the ledger's history which knobs paid (mean improvement,
scaled by a prior on the knobs known to matter most, plus a bonus for untried ones) and
never proposes a configuration already tried. Given the same seed and history it proposes the
same thing. Edits replace only the literal's characters, so the diff is one line per constant.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass

from controller.proposers.base import Proposal, ProposalContext

TARGET = "train.py"
FROZEN = ("SEED",)  # changing the seed only mines noise
# learning rate and batch size move val_bpb most in a fixed time budget (~0.08 bpb each at 60 s on CPU)
PRIORS = (("LEARNING_RATE", 4.0), ("BATCH", 4.0), ("LR", 1.5))


@dataclass(frozen=True)
class Constant:
    name: str
    value: float
    is_int: bool
    line: int  # 1-based
    col: int
    end_col: int


def parse_constants(source: str) -> dict[str, Constant]:
    """Top-level `NAME = number` assignments with UPPER_CASE names (the hyperparameter block)."""
    out: dict[str, Constant] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper() or name in FROZEN:
            continue
        v = node.value
        if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub) and isinstance(v.operand, ast.Constant):
            raw = -v.operand.value if isinstance(v.operand.value, (int, float)) else None
        elif isinstance(v, ast.Constant):
            raw = v.value
        else:
            continue
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or v.lineno != v.end_lineno:
            continue
        try:
            if not math.isfinite(float(raw)):  # `X = 1e999` is inf: no neighbour, nothing to record
                continue
        except OverflowError:  # an int too large for a float
            continue
        out[name] = Constant(name, float(raw), isinstance(raw, int), v.lineno, v.col_offset, v.end_col_offset)
    return out


def candidate_values(c: Constant) -> list[float]:
    """Neighbouring values worth trying for one constant, nearest first."""
    name, v = c.name, c.value
    if "BETA" in name and 0 < v < 1:  # momentum-like: move the distance to 1
        return [round(1 - (1 - v) / 2, 6), round(1 - (1 - v) * 2, 6)] if v > 0.5 else [round(v * 1.5, 6), round(v / 1.5, 6)]
    if c.is_int:
        if "DEPTH" in name or "LAYER" in name:
            return [v + 1, v - 1] if v > 1 else [v + 1]
        if v >= 2 and math.log2(v).is_integer():
            return [v / 2, v * 2]
        return [v + 1, v - 1] if v > 1 else [v + 1]
    if "RATIO" in name or "FRAC" in name:
        vals = [round(v + 0.1, 4), round(v - 0.1, 4), round(v + 0.2, 4)]
        return [x for x in vals if 0.0 <= x <= 0.9]
    if v == 0:
        return [0.01, 0.1]
    return [v * 2, v / 2, v * 3, v / 3, v * 1.5]


def fmt(c: Constant, value: float) -> str:
    if c.is_int:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else repr(round(value, 6))


def apply_values(source: str, consts: dict[str, Constant], new: dict[str, float]) -> str:
    lines = source.splitlines(keepends=True)
    for name, value in new.items():
        c = consts[name]
        line = lines[c.line - 1]
        lines[c.line - 1] = line[: c.col] + fmt(c, value) + line[c.end_col :]
    return "".join(lines)


class OfflineProposer:
    name = "offline"

    def __init__(self, seed: int = 0, max_tries: int = 200):
        self.seed = seed
        self.max_tries = max_tries

    @staticmethod
    def _knobs(consts: dict[str, Constant]) -> dict[str, list[str]]:
        """Constants that move together: every *BATCH* constant is one knob (sequences per
        micro-batch and tokens per step halve or double together, as the batch-size gain needs)."""
        knobs: dict[str, list[str]] = {}
        for name in sorted(consts):
            knobs.setdefault("BATCH" if "BATCH" in name else name, []).append(name)
        return knobs

    @staticmethod
    def _moves(members: list[str], consts: dict[str, Constant]) -> list[dict[str, float]]:
        if len(members) == 1:
            return [{members[0]: v} for v in candidate_values(consts[members[0]])]
        return [{m: consts[m].value * f for m in members} for f in (0.5, 2.0) if all(consts[m].value * f >= 1 for m in members)]

    def _knob_scores(self, ctx: ProposalContext, knob_of: dict[str, str]) -> dict[str, tuple[float, int]]:
        """(mean improvement, count) per knob moved, from the structured history."""
        stats: dict[str, list[float]] = {}
        prev: dict[str, float] | None = None
        for h in ctx.history:
            if h.params and prev:
                moved = {knob_of.get(k, k) for k in h.params if prev.get(k) != h.params[k]}
                gain = h.improvement if h.improvement is not None else (-0.05 if h.decision in ("crash", "timeout") else 0.0)
                for k in moved:
                    stats.setdefault(k, []).append(gain)
            if h.params and h.decision in ("baseline", "keep"):
                prev = h.params
        return {k: (sum(v) / len(v), len(v)) for k, v in stats.items()}

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        source = ctx.files.get(TARGET)
        if source is None:
            return None
        try:
            consts = parse_constants(source)
        except SyntaxError:
            return None
        if not consts:
            return None
        current = {k: c.value for k, c in consts.items()}
        tried = {tuple(sorted(h.params.items())) for h in ctx.history if h.params}
        tried.add(tuple(sorted(current.items())))
        knobs = self._knobs(consts)
        knob_of = {m: k for k, members in knobs.items() for m in members}
        scores = self._knob_scores(ctx, knob_of)
        rng = random.Random(self.seed * 1_000_003 + ctx.experiment)
        names = sorted(knobs)

        def weight(knob: str) -> float:
            mean, n = scores.get(knob, (0.0, 0))
            prior = next((w for key, w in PRIORS if key in knob), 1.0)
            # moves that paid, scaled by a prior on known high-leverage knobs, plus curiosity
            return prior * math.exp(max(-3.0, min(3.0, mean * 40))) + 1.0 / (1 + n)

        def valid(config: dict[str, float]) -> bool:
            # widths must stay a multiple of the head size, or the model can't be built
            dim, head = config.get("MODEL_DIM"), config.get("HEAD_DIM")
            return not (dim and head and (dim % head or dim < head))

        for _ in range(self.max_tries):
            first = rng.choices(names, weights=[weight(n) for n in names])[0]
            picks = [first]
            if len(names) > 1 and rng.random() < 0.3:
                picks.append(rng.choice([n for n in names if n != first]))
            new: dict[str, float] = {}
            for knob in picks:
                moves = self._moves(knobs[knob], consts)
                if not moves:
                    break
                new.update(rng.choice(moves[:2]) if rng.random() < 0.7 else rng.choice(moves))
            if not new:
                continue
            config = dict(current, **new)
            if tuple(sorted(config.items())) in tried or not valid(config):
                continue
            desc = ", ".join(f"{k} {fmt(consts[k], current[k])} -> {fmt(consts[k], v)}" for k, v in new.items())
            return Proposal(
                description=desc,
                hypothesis="offline search: neighbouring hyperparameters may train faster in the fixed budget",
                files={TARGET: apply_values(source, consts, new).encode()},
                source="offline",
                params=config,
            )
        return None


def build(options) -> OfflineProposer:
    return OfflineProposer(seed=options.seed)
