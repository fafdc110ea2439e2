"""The offline proposer: a seeded search over train.py's UPPER_CASE hyperparameter block that
learns from every session of the lab.

It parses the block with `ast` and proposes moving one or two knobs (a constant, or all *BATCH*
constants together): learning rates geometrically, ratios by 0.1, power-of-two sizes by doubling
or halving, depth by one. What it learns comes from the whole lab (`ctx.lab_history`, then this
session's `ctx.history`), read session by session: an experiment moved the knobs whose values
differ from its own session's incumbent (the baseline, then each kept experiment), so sessions
that started from different incumbents are read correctly. From that it (1) scores knobs by the
mean improvement their moves bought, scaled by a prior on the knobs known to matter most, plus
a bonus for untried ones; (2) skips inert knobs, found two ways: in the source, a constant the
code never reads, or reads only under `if`s (and `x if c else y`, `and`/`or`) that are false for
the current values (`MATRIX_LR` under `if OPTIMIZER == "muon":` while `OPTIMIZER = "adamw"`;
`dead_constants`), and in the results, a knob moved `INERT_AFTER` times from its current value
whose moves never cleared their bar and whose mean |effect| stayed at noise level
(`OfflineProposer.inert` says which and why); (3) proposes first what near-misses suggest: two
knobs whose single moves each came close are combined into one move, and a near-miss is re-tried
once alone on a new incumbent; only then a seeded random draw. A configuration tried in any session is never
proposed again. Pure (no IO); given the same seed and history it proposes the same thing. Edits
replace only the literal's characters, so the diff is one line per constant, and the params it
records are the values the edited file reads back as. A source it cannot analyse (valid Python
too deep for a recursive walk, say) never makes it raise: every constant counts as live, or there
is nothing to propose.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from controller.proposers.base import HistoryItem, Proposal, ProposalContext

TARGET = "train.py"
FROZEN = ("SEED",)  # changing the seed only mines noise
# learning rate and batch size move val_bpb most in a fixed time budget (~0.08 bpb each at 60 s on CPU)
PRIORS = (("LEARNING_RATE", 4.0), ("BATCH", 4.0), ("LR", 1.5))

# What the results say. The bar an experiment had to clear is its `threshold`; older records
# without one get the constitution's default min_improvement.
DEFAULT_THRESHOLD = 0.01
NEAR_MISS = 0.5  # a discarded move that gained at least this share of its bar came close
INERT_AFTER = 3  # moves of a knob, at its current value, before its results can call it inert
# A knob that does nothing still shows the difference of two noisy runs, mean |N(0, 2 sd^2)| =
# sqrt(2/pi) * sqrt(2) * sd ~ 0.8 * sqrt(2) * sd, sd being the run-to-run noise its keep rule
# assumed (HistoryItem.noise_sd; without one, half the bar stands in). Its moves are inert when
# their mean |improvement| stays under INERT_NOISE_FACTOR times that. The yardstick is noise, not
# the bar: a knob at its optimum, every move costing ~0.04 against a bar of ~0.035, is far above
# noise and stays live; and a truly inert knob's mean settles at noise as moves accumulate, so
# more data makes the flag surer (a "no move came within half of the bar" rule grew rarer).
INERT_NOISE_FACTOR = 1.5
FAILED = ("crash", "timeout")  # it broke: the knob had an effect, a bad one
MEASURED = ("keep", "discard")


@dataclass(frozen=True)
class Constant:
    name: str
    value: float
    is_int: bool
    line: int  # 1-based
    col: int
    end_col: int


def parse_constants(source: str) -> dict[str, Constant]:
    """Top-level `NAME = number` assignments with UPPER_CASE names (the hyperparameter block).
    Valid Python too deeply nested for the parser gives {}; a source that isn't Python raises
    SyntaxError."""
    try:
        tree = ast.parse(source)
    except (RecursionError, MemoryError):  # e.g. a 3000-term sum: too deep to build its tree
        return {}
    out: dict[str, Constant] = {}
    for node in tree.body:
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


def written(c: Constant, value: float) -> float:
    """What the literal fmt(c, value) reads back as: the value the edited file holds."""
    return float(fmt(c, value))


def _number(v: object) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def apply_values(source: str, consts: dict[str, Constant], new: dict[str, float]) -> str:
    # Lines as the tokenizer counts them (ends \r\n, \r or \n; str.splitlines also splits on \f,
    # \v, \x1c-\x1e, \x85, \u2028, \u2029), and columns as ast gives them: UTF-8 byte offsets.
    lines = re.split(r"(?<=\n)|(?<=\r)(?!\n)", source)
    for name, value in sorted(new.items(), key=lambda kv: (consts[kv[0]].line, consts[kv[0]].col), reverse=True):
        c = consts[name]  # right to left, so `A = 1; B = 2` keeps B's offsets when A's literal grows
        line = lines[c.line - 1].encode("utf-8")
        lines[c.line - 1] = (line[: c.col] + fmt(c, value).encode("utf-8") + line[c.end_col :]).decode("utf-8")
    return "".join(lines)


# ---------------------------------------------------------------------------
# Inert constants, from the source

_ESCAPES = {"globals", "vars", "locals", "eval", "exec", "__import__"}  # names read by string: unsure of all
# What a test may be made of for its value to be known: literals, constants, comparisons, not/and/or.
# Nothing here can call, index or look anything up, so evaluating it runs no code of the lab's.
_PLAIN = (ast.Constant, ast.Name, ast.Load, ast.Tuple, ast.List, ast.Set, ast.Compare, ast.cmpop,
          ast.UnaryOp, ast.unaryop, ast.BoolOp, ast.boolop)


def _truth(test: ast.expr, env: dict[str, object]) -> bool | None:
    """Whether a test is true for the current values: True, False or None (can't tell)."""
    if isinstance(test, ast.BoolOp):  # `x and <unknown>` is false when x is, `x or <unknown>` true when x is
        ts = {_truth(v, env) for v in test.values}
        stop = isinstance(test.op, ast.Or)
        return stop if stop in ts else None if None in ts else not stop
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        t = _truth(test.operand, env)
        return None if t is None else not t
    if not all(isinstance(n, _PLAIN) and (not isinstance(n, ast.Name) or n.id in env) for n in ast.walk(test)):
        return None
    try:
        return bool(_value(test, env))
    except Exception:  # noqa: BLE001 - e.g. `"a" < 1`, an unhashable set member, too deep: can't tell
        return None


_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}


def _value(node: ast.expr, env: dict[str, object]) -> object:
    """The value of a _PLAIN expression, by hand: no compile, no eval of the lab's text."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, env) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e, env) for e in node.elts]
    if isinstance(node, ast.Set):
        return frozenset(_value(e, env) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_value(node.operand, env))
    if isinstance(node, ast.BoolOp):
        values = [_value(v, env) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _value(node.left, env)
        for op, right_node in zip(node.ops, node.comparators):
            right = _value(right_node, env)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"not a plain expression: {type(node).__name__}")


def _bindings(node: ast.AST) -> list[str]:
    """The names a node binds: assignment, loop, `with`/`except`/comprehension targets and the
    walrus (all `Name`s in Store/Del), parameters, imports, def/class, match captures, `global`."""
    if isinstance(node, ast.Name):
        return [] if isinstance(node.ctx, ast.Load) else [node.id]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.alias):  # `import a.b` binds a
        return [(node.asname or node.name).split(".")[0]]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names)
    if isinstance(node, ast.MatchMapping):
        return [node.rest] if node.rest else []
    name = getattr(node, "name", None)  # def, class, `except ... as`, match capture, type parameter
    return [name] if isinstance(name, str) else []


@dataclass(frozen=True)
class _Read:
    name: str
    guards: tuple[tuple[ast.expr, bool], ...]  # (test, the truth it needs) around the read
    owner: str | None  # the top-level UPPER_CASE constant whose definition holds the read


def _reads(tree: ast.Module, names: set[str]) -> list[_Read]:
    """Every read of one of `names`, in source order, with the tests it runs under. Iterative: a
    deeply nested expression (a 1500-term sum) is valid Python and must not hit the recursion limit."""
    out: list[_Read] = []
    stack: list[tuple[ast.AST, tuple, str | None]] = []
    for stmt in reversed(tree.body):
        owner = None
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id.isupper():
                owner = targets[0].id
        stack.append((stmt, (), owner))
    while stack:
        node, guards, owner = stack.pop()
        if isinstance(node, (ast.If, ast.IfExp)):
            body = node.body if isinstance(node.body, list) else [node.body]
            orelse = node.orelse if isinstance(node.orelse, list) else [node.orelse]
            children = [(node.test, guards), *((c, guards + ((node.test, True),)) for c in body),
                        *((c, guards + ((node.test, False),)) for c in orelse)]
        elif isinstance(node, ast.BoolOp):  # `a and b` reads b only when a is true; `a or b` when false
            need = isinstance(node.op, ast.And)
            children = [(v, guards + tuple((prev, need) for prev in node.values[:i])) for i, v in enumerate(node.values)]
        else:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
                out.append(_Read(node.id, guards, owner))
            children = [(c, guards) for c in ast.iter_child_nodes(node)]
        stack.extend((c, g, owner) for c, g in reversed(children))
    return out


def dead_constants(source: str) -> dict[str, str]:
    """UPPER_CASE top-level constants (numbers, strings, flags) that changing cannot affect, with
    why: never read, or read only where an enclosing test is false for the current values, or
    read only to define other dead constants. A test counts only when it is made of literals and
    constants bound once, to a literal (`==`, `!=`, `<`, `in`, `is`, `not`, `and`, `or`); anything
    else is unsure and leaves the read live. Unsure means live, too, for a constant whose name is
    bound anywhere else (a parameter, import, def, `as`, loop or comprehension target, `global`:
    a read may be of the other binding), and for all of them at any sign that names are looked up
    by string (`globals()`, `getattr(x, "NAME")`, `module.NAME`, `import *`) or when the source
    can't be analysed (not Python, or too deep)."""
    try:
        return _dead_constants(source)
    except Exception:  # noqa: BLE001 - SyntaxError, RecursionError on a deep tree, ...: all live
        return {}


def _dead_constants(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    defined: dict[str, ast.expr] = {}
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id.isupper()):
            defined[stmt.targets[0].id] = stmt.value
    bound: Counter[str] = Counter()
    by_string: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in _ESCAPES:
            return {}
        if isinstance(node, ast.alias) and node.name == "*":
            return {}
        bound.update(_bindings(node))
        if isinstance(node, ast.Attribute):
            by_string.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            by_string.add(node.value)
    env: dict[str, object] = {}  # constants whose value is known: bound once, to a literal
    for name, value in defined.items():
        if bound[name] == 1:
            try:
                env[name] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    reads = _reads(tree, set(defined))
    truth: dict[int, bool | None] = {}  # by id(test): one test guards many reads

    def blocker(r: _Read) -> tuple[ast.expr, bool] | None:
        """The first enclosing test whose current truth keeps the read from running, if any."""
        for test, need in r.guards:
            if id(test) not in truth:
                truth[id(test)] = _truth(test, env)
            if truth[id(test)] is (not need):
                return test, need
        return None

    live_reads = [r for r in reads if blocker(r) is None]
    live = (by_string | {n for n in defined if bound[n] > 1}) & set(defined)
    changed = True
    while changed:  # a read in the definition of another constant counts only if that one is live
        changed = False
        for r in live_reads:
            if r.name not in live and (r.owner is None or (r.owner in live and r.owner != r.name)):
                live.add(r.name)
                changed = True
    out: dict[str, str] = {}
    for name in sorted(set(defined) - live):
        guarded = [r for r in reads if r.name == name and blocker(r) is not None]
        if guarded:
            test, need = blocker(guarded[0])
            known = sorted({n.id for n in ast.walk(test) if isinstance(n, ast.Name) and n.id in env})
            now = ", ".join(f"{n} = {env[n]!r}" for n in known)
            out[name] = f"read only where `{ast.unparse(test)}` is {need}, and it is {not need} ({now})"
        elif any(r.name == name for r in reads):
            owners = sorted({r.owner for r in reads if r.name == name and r.owner})
            out[name] = f"read only to define {', '.join(owners)}, itself inert"
        else:
            out[name] = "never read"
    return out


# ---------------------------------------------------------------------------
# What the lab's results say


@dataclass(frozen=True)
class Move:
    """One experiment read against its own session's incumbent."""

    knobs: frozenset[str]  # the knobs it moved
    values: dict[str, float]  # the constants it changed -> their new values
    item: HistoryItem
    incumbent: dict[str, float]  # the params it was measured against

    def of(self, knob: str, knob_of: dict[str, str]) -> tuple[tuple[str, float], ...]:
        """The values it gave one knob's constants, as a key."""
        return tuple(sorted((k, v) for k, v in self.values.items() if knob_of.get(k, k) == knob))


def sessions(ctx: ProposalContext) -> list[list[HistoryItem]]:
    """The lab's history in sessions, oldest first; this session's own history comes last."""
    groups: dict[str, list[HistoryItem]] = {}
    for h in ctx.lab_history:
        groups.setdefault(h.session, []).append(h)
    return [*groups.values(), list(ctx.history)]


def lab_moves(groups: Iterable[list[HistoryItem]], knob_of: dict[str, str]) -> list[Move]:
    """Every experiment with params, with what it moved relative to its session's incumbent."""
    out: list[Move] = []
    for items in groups:
        incumbent: dict[str, float] | None = None
        for h in items:
            if not h.params:
                continue
            if incumbent is not None and h.decision != "baseline":
                values = {k: v for k, v in h.params.items() if k in incumbent and incumbent[k] != v}
                if values:
                    out.append(Move(frozenset(knob_of.get(k, k) for k in values), values, h, incumbent))
            if h.decision in ("baseline", "keep"):
                incumbent = h.params
    return out


def _bar(h: HistoryItem) -> float:
    return h.threshold if h.threshold is not None and h.threshold > 0 else DEFAULT_THRESHOLD


def _near_miss(h: HistoryItem) -> bool:
    """It helped, and was kept or came within NEAR_MISS of its bar."""
    return (h.improvement is not None and h.improvement > 0 and h.decision in MEASURED
            and (h.decision == "keep" or h.improvement >= NEAR_MISS * _bar(h)))


def _noise_diff(h: HistoryItem) -> float:
    """The mean |difference| of two runs of one configuration at the noise its keep rule assumed,
    or half its bar when the record says no noise."""
    sd = getattr(h, "noise_sd", None)
    return 0.8 * math.sqrt(2) * sd if _number(sd) and sd > 0 else _bar(h) / 2


def inert_by_results(moves: list[Move], knobs: dict[str, list[str]], current: dict[str, float]) -> dict[str, str]:
    """Knobs moved INERT_AFTER times or more from an incumbent where they had their current values,
    none of whose moves cleared its bar and whose mean |improvement| stayed under INERT_NOISE_FACTOR
    times noise; a move that crashed is an effect. Only moves from the current values count: what a
    knob does elsewhere says little about it here, and once the incumbent changes it the flag is
    judged afresh."""
    seen: dict[str, list[HistoryItem]] = {}
    broke: set[str] = set()
    for m in moves:
        for k in m.knobs:
            if not all(c in current and m.incumbent.get(c) == current[c] for c in knobs.get(k, [k])):
                continue
            if m.item.decision in FAILED:
                broke.add(k)
            elif m.item.decision in MEASURED and _number(m.item.improvement):
                seen.setdefault(k, []).append(m.item)
    out: dict[str, str] = {}
    for k, items in sorted(seen.items()):
        if len(items) < INERT_AFTER or k in broke or any(h.improvement >= _bar(h) for h in items):
            continue
        effect = statistics.fmean(abs(h.improvement) for h in items)
        bound = INERT_NOISE_FACTOR * statistics.fmean(_noise_diff(h) for h in items)
        if effect < bound:
            out[k] = (f"moved {len(items)} times from its current value, none cleared its bar, "
                      f"mean |effect| {effect:.4f} < {bound:.4f} (noise)")
    return out


# ---------------------------------------------------------------------------
# The proposer


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
        """A knob's moves, nearest first, as the values the file will hold; none that can't be
        written exactly (a whole number for an int constant: 3 sequences x 0.5 is no batch size)."""
        if len(members) == 1:
            raw = [{members[0]: v} for v in candidate_values(consts[members[0]])]
        else:
            raw = [{m: consts[m].value * f for m in members} for f in (0.5, 2.0) if all(consts[m].value * f >= 1 for m in members)]
        out: list[dict[str, float]] = []
        for move in raw:
            if all(_number(v) and (not consts[m].is_int or float(v).is_integer()) for m, v in move.items()):
                new = {m: written(consts[m], v) for m, v in move.items()}
                if any(v != consts[m].value for m, v in new.items()) and new not in out:
                    out.append(new)
        return out

    @staticmethod
    def _knob_scores(moves: list[Move]) -> dict[str, tuple[float, int]]:
        """(mean improvement, count) per knob moved, over the whole lab."""
        stats: dict[str, list[float]] = {}
        for m in moves:
            h = m.item
            gain = h.improvement if h.improvement is not None else (-0.05 if h.decision in FAILED else 0.0)
            for k in m.knobs:
                stats.setdefault(k, []).append(gain)
        return {k: (sum(v) / len(v), len(v)) for k, v in stats.items()}

    def inert(self, ctx: ProposalContext) -> dict[str, str]:
        """Knobs not worth a proposal now, with why: dead in train.py's source (every constant of
        the knob), or inert by the lab's results."""
        source = ctx.files.get(TARGET)
        if source is None:
            return {}
        try:
            consts = parse_constants(source)
        except Exception:  # noqa: BLE001 - not Python: nothing to say
            return {}
        knobs = self._knobs(consts)
        knob_of = {m: k for k, members in knobs.items() for m in members}
        return self._inert(ctx, source, consts, knobs, lab_moves(sessions(ctx), knob_of))

    def _inert(self, ctx: ProposalContext, source: str, consts: dict[str, Constant], knobs: dict[str, list[str]],
               moves: list[Move]) -> dict[str, str]:
        dead = dead_constants(source)
        # another editable module that names a constant may read it (`from train import X`)
        elsewhere = "\n".join(t for p, t in sorted(ctx.files.items()) if p != TARGET and p.endswith(".py"))
        out: dict[str, str] = {}
        for knob, members in knobs.items():
            gone = [m for m in members if m in dead and not re.search(rf"\b{re.escape(m)}\b", elsewhere)]
            if len(gone) == len(members):
                out[knob] = "; ".join(f"{m} {dead[m]}" if m != knob else dead[m] for m in members)
        for knob, why in inert_by_results(moves, knobs, {k: c.value for k, c in consts.items()}).items():
            if knob in knobs and knob not in out:
                out[knob] = why
        return dict(sorted(out.items()))

    def _from_near_misses(self, moves: list[Move], knob_of: dict[str, str], live: set[str],
                          current: dict[str, float]) -> list[tuple[dict[str, float], str]]:
        """Moves the near-misses suggest, best first: two knobs whose single moves came close,
        together (once), then one near-miss again on a new incumbent (once more)."""
        attempts: dict[tuple, int] = {}  # (knob, its values) -> single moves that tried exactly this
        for m in moves:
            if len(m.knobs) == 1:
                (k,) = m.knobs
                key = (k, m.of(k, knob_of))
                attempts[key] = attempts.get(key, 0) + 1
        near: dict[tuple, tuple[float, Move]] = {}  # each (knob, values) once, at its best showing
        for m in moves:
            if len(m.knobs) != 1 or not _near_miss(m.item):
                continue
            (k,) = m.knobs
            key = (k, m.of(k, knob_of))
            score = m.item.improvement / _bar(m.item)
            if k in live and all(c in current for c, _ in key[1]) and (key not in near or score > near[key][0]):
                near[key] = (score, m)

        def on_current(key: tuple) -> dict[str, float]:
            return {c: v for c, v in key[1] if current[c] != v}

        def tag(key: tuple, m: Move) -> str:
            where = f" in session {m.item.session}" if m.item.session else ""
            return f"{key[0]} ({m.item.improvement:+.4f}, bar {_bar(m.item):.4f}, experiment {m.item.experiment}{where})"

        out: list[tuple[int, float, dict[str, float], str]] = []
        for a, b in combinations(sorted(near, key=repr), 2):
            if a[0] == b[0]:
                continue
            together = any({a[0], b[0]} <= m.knobs and m.of(a[0], knob_of) == a[1] and m.of(b[0], knob_of) == b[1]
                           for m in moves)
            if not together and on_current(a) and on_current(b):  # both still move something
                why = f"combines two near-misses: {tag(a, near[a][1])} and {tag(b, near[b][1])}"
                out.append((0, -(near[a][0] + near[b][0]), {**on_current(a), **on_current(b)}, why))
        for key, (score, m) in near.items():
            new = on_current(key)
            if new and attempts.get(key, 0) == 1 and m.item.decision != "keep":
                out.append((1, -score, new, f"re-tries a near-miss on the new incumbent: {tag(key, m)}"))
        out.sort(key=lambda t: (t[0], t[1], repr(sorted(t[2].items()))))  # pairs first, closest first
        return [(new, why) for _, _, new, why in out]

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        source = ctx.files.get(TARGET)
        if source is None:
            return None
        try:
            consts = parse_constants(source)
        except Exception:  # noqa: BLE001 - not Python: nothing to propose
            return None
        if not consts:
            return None
        current = {k: c.value for k, c in consts.items()}
        groups = sessions(ctx)

        def key(params: dict[str, float]) -> tuple:
            """A configuration as the file holds it (older records may hold unrounded values)."""
            return tuple(sorted((k, written(consts[k], v) if k in consts and _number(v) else v) for k, v in params.items()))

        tried = {key(h.params) for items in [*groups, ctx.in_flight] for h in items if h.params}
        tried.add(key(current))
        knobs = self._knobs(consts)
        knob_of = {m: k for k, members in knobs.items() for m in members}
        moves = lab_moves(groups, knob_of)
        inert = self._inert(ctx, source, consts, knobs, moves)
        names = sorted(k for k in knobs if k not in inert)
        skipped = "; skipping inert knobs: " + "; ".join(f"{k} ({why})" for k, why in inert.items()) if inert else ""

        def valid(config: dict[str, float]) -> bool:
            # widths must stay a multiple of the head size, or the model can't be built
            dim, head = config.get("MODEL_DIM"), config.get("HEAD_DIM")
            return not (dim and head and (dim % head or dim < head))

        def proposal(new: dict[str, float], config: dict[str, float], why: str) -> Proposal | None:
            text = apply_values(source, consts, new)
            if {k: c.value for k, c in parse_constants(text).items()} != config:  # the params are what the file says
                return None
            desc = ", ".join(f"{k} {fmt(consts[k], current[k])} -> {fmt(consts[k], v)}" for k, v in new.items())
            return Proposal(description=desc, hypothesis=why + skipped, files={TARGET: text.encode()},
                            source="offline", params=config)

        for near, why in self._from_near_misses(moves, knob_of, set(names), current):
            if not all(_number(v) and (not consts[k].is_int or float(v).is_integer()) for k, v in near.items()):
                continue
            new = {k: written(consts[k], v) for k, v in near.items()}
            config = dict(current, **new)
            if new != {k: current[k] for k in new} and key(config) not in tried and valid(config):
                if p := proposal(new, config, why):
                    return p

        if not names:
            return None
        scores = self._knob_scores(moves)
        rng = random.Random(self.seed * 1_000_003 + ctx.experiment)

        def weight(knob: str) -> float:
            mean, n = scores.get(knob, (0.0, 0))
            prior = next((w for key, w in PRIORS if key in knob), 1.0)
            # moves that paid, scaled by a prior on known high-leverage knobs, plus curiosity
            return prior * math.exp(max(-3.0, min(3.0, mean * 40))) + 1.0 / (1 + n)

        for _ in range(self.max_tries):
            first = rng.choices(names, weights=[weight(n) for n in names])[0]
            picks = [first]
            if len(names) > 1 and rng.random() < 0.3:
                picks.append(rng.choice([n for n in names if n != first]))
            new: dict[str, float] = {}
            for knob in picks:
                moves_of = self._moves(knobs[knob], consts)
                if not moves_of:
                    break
                new.update(rng.choice(moves_of[:2]) if rng.random() < 0.7 else rng.choice(moves_of))
            if not new:
                continue
            config = dict(current, **new)
            if key(config) in tried or not valid(config):
                continue
            if p := proposal(new, config, "offline search: neighbouring hyperparameters may train faster in the fixed budget"):
                return p
        return None


def build(options) -> OfflineProposer:
    return OfflineProposer(seed=options.seed)
