"""A lab: a git repository governed by one constitution, with Charter's own state beside it.

`init_lab` creates one from the `trainer/` template and a profile's constitution (`cpu`, the
default, or `gpu`; immutable files pinned by sha256), commits the baseline and records the creation as the ledger's first
event. `find_lab` resolves which lab a command means: `--lab`, then `$CHARTER_LAB`, then `./lab`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

import constitution
from controller.workspace.git import GitWorkspace
from ledger import Ledger, payloads

# trainer/ is installed beside controller/ (both from source and from a wheel)
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "trainer"

GITIGNORE = """\
# Charter's own state (ledger, runs, control socket) never enters the lab's history
.charter/
run/
__pycache__/
"""


class LabError(Exception):
    """A lab that can't be created or found; the message says what to do."""


@dataclass(frozen=True)
class Lab:
    root: Path

    @property
    def constitution_path(self) -> Path:
        return self.root / "constitution.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / ".charter"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.duckdb"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def git(self) -> GitWorkspace:
        return GitWorkspace(self.root)

    def load_constitution(self) -> constitution.Constitution:
        return constitution.load(self.constitution_path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def template_files() -> dict[str, bytes]:
    """Every file of the trainer template, by lab-relative name."""
    files = {}
    for entry in sorted(TEMPLATE_DIR.iterdir()):
        name = entry.name
        if entry.is_file() and not name.startswith((".", "__")) and not name.endswith(".pyc"):
            files[name] = entry.read_bytes()
    return files


@dataclass(frozen=True)
class LabProfile:
    """What `charter init --profile NAME` starts a lab from: a shipped constitution (in
    constitution/) and the values written into train.py's hyperparameter block (the lab's
    train.py stays plain research code: no profile switch inside it, so an agent's edit of a
    constant always takes effect)."""

    name: str
    constitution_file: str
    hyperparameters: tuple[tuple[str, str], ...] = ()

    def constitution_text(self) -> str:
        return resources.files("constitution").joinpath(self.constitution_file).read_text(encoding="utf-8")


# The gpu model is upstream autoresearch's H100 baseline shape (depth 8, width 512, head 128,
# 128 x 2048-token micro-batches, 2^19 tokens a step, half the budget warming down); AdamW only,
# so its learning rate is ours (unmeasured on a GPU: docs/gpu.md).
LAB_PROFILES = {
    "cpu": LabProfile("cpu", "default.toml"),
    "gpu": LabProfile("gpu", "gpu.toml", (
        ("DEPTH", "8"), ("MODEL_DIM", "512"), ("HEAD_DIM", "128"), ("DEVICE_BATCH_SIZE", "128"),
        ("TOTAL_BATCH_SIZE", "524288"), ("LEARNING_RATE", "2e-3"), ("WARMDOWN_RATIO", "0.5"),
    )),
}


def lab_profile(name: str) -> LabProfile:
    """The profile called `name`; LabError naming the choices."""
    if name not in LAB_PROFILES:
        raise LabError(f"--profile {name!r} is not a profile; choose one of {', '.join(sorted(LAB_PROFILES))}")
    return LAB_PROFILES[name]


def set_hyperparameters(source: str, values: tuple[tuple[str, str], ...]) -> str:
    """train.py's source with each `NAME = value` of the hyperparameter block set, its comment
    kept in its column; LabError for a name the block lacks (the template and the profile disagree)."""
    for name, value in values:
        pattern = re.compile(rf"^{re.escape(name)} = (?P<old>[^#\n]*?)(?P<gap>[ \t]*)(?P<comment>#[^\n]*)?$", re.M)
        found = len(pattern.findall(source))
        if found != 1:
            raise LabError(f"train.py has {found} `{name} = ...` lines; the profile expects exactly one")

        def line(m: re.Match, name: str = name, value: str = value) -> str:
            if not m["comment"]:
                return f"{name} = {value}"
            pad = max(1, len(m["old"]) + len(m["gap"]) - len(value))  # the comment stays where it was
            return f"{name} = {value}{' ' * pad}{m['comment']}"

        source = pattern.sub(line, source)
    return source


def _toml_key(path: tuple[str, ...]) -> str:
    """A key path as TOML writes it: bare parts plain, others quoted (evaluation.immutable."prepare.py")."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in path)


def set_pins(text: str, pins: dict[tuple[str, ...], str]) -> str:
    """Set existing string pins in constitution text, keeping every comment and the layout.

    `pins` maps a key path to its new value, e.g. `{("evaluation", "immutable", "prepare.py"): digest,
    ("evaluation", "data_hash"): digest}`. A key path is a tuple, not a dotted string, because file
    names such as "prepare.py" contain dots. tomlkit edits the parsed document in place, so only the
    pinned values change; a key the constitution lacks is an error, never added silently (a missing
    pin means the text is not the constitution the caller thinks it is).
    """
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise LabError(f"constitution is not valid TOML ({e})") from None
    for path, value in pins.items():
        table = doc
        for part in path[:-1]:
            table = table.get(part) if isinstance(table, Mapping) else None
        current = table.get(path[-1]) if isinstance(table, Mapping) else None
        if not isinstance(current, str):
            what = "no" if current is None else "a non-string"
            raise LabError(f"constitution has {what} {_toml_key(path)} entry to pin")
        table[path[-1]] = value
    return tomlkit.dumps(doc)


# Default prices (dollars per million tokens: input, output) by model family, written commented into a
# new lab's constitution; the lab's own numbers are what the ledger counts, so check them. Each is the
# family's highest list price (opus 4.1 and earlier: 15/75; later opus models cost less), so a
# default can only make the dollar budget stop early, never late.
MODEL_PRICES = {"opus": (15.0, 75.0), "sonnet": (3.0, 15.0), "haiku": (1.0, 5.0)}


@dataclass(frozen=True)
class ProposerChoice:
    """What `charter init --proposer ...` puts in version 1 of the constitution."""

    kind: str
    model: str = ""
    command: tuple[str, ...] = ()


def set_proposer(text: str, choice: ProposerChoice) -> str:
    """Constitution text with the [proposer] section set to `choice`, comments and layout kept.
    For a model of a known family the prices are set to that family's, with a comment saying so."""
    doc = tomlkit.parse(text)
    section = doc["proposer"]
    section["kind"] = choice.kind
    if choice.model:
        section["model"] = choice.model
    if choice.command:
        section["command"] = list(choice.command)
    family = next((f for f in MODEL_PRICES if f in choice.model.lower()), None)
    if family:
        prices = section["prices"]
        prices["input_per_mtok"], prices["output_per_mtok"] = MODEL_PRICES[family]
        prices["input_per_mtok"].comment(f"the {family} family's highest list price; check your model's and plan's")
    return tomlkit.dumps(doc)


@dataclass(frozen=True)
class RatifierChoice:
    """A person `charter init --ratifier NAME=PUBKEY_FILE` lists in version 1, with their SSH public key."""

    name: str
    key: str  # one OpenSSH public key line


def read_ratifier(spec: str) -> RatifierChoice:
    """`NAME=PUBKEY_FILE` -> a RatifierChoice with the key file's one line; LabError naming the mistake."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise LabError(f"--ratifier {spec!r}: write NAME=PUBKEY_FILE, e.g. alice=~/.ssh/id_ed25519.pub")
    file = Path(path.strip()).expanduser()
    try:
        data = file.read_bytes()[:20_000]
    except OSError as e:
        raise LabError(f"--ratifier {name.strip()}: can't read {file} ({e.strerror})") from None
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise LabError(f"--ratifier {name.strip()}: {file} must hold one OpenSSH public key line (TYPE BASE64 comment), "
                       f"found {len(lines)} lines; give the .pub file, never the private key")
    if "PRIVATE KEY" in lines[0]:
        raise LabError(f"--ratifier {name.strip()}: {file} is a private key; give its .pub file")
    return RatifierChoice(name.strip(), lines[0].strip())


def set_ratifiers(text: str, ratifiers: list[RatifierChoice]) -> str:
    """Constitution text with amendment.ratifiers set to `ratifiers` (one inline table each),
    comments and layout kept."""
    doc = tomlkit.parse(text)
    items = tomlkit.array()
    for r in ratifiers:
        t = tomlkit.inline_table()
        t.update({"name": r.name, "key": r.key})
        items.append(t)
    items.multiline(True)
    doc["amendment"]["ratifiers"] = items
    return tomlkit.dumps(doc)


def init_lab(root: str | Path, actor: str = "operator", proposer: ProposerChoice | None = None,
             ratifiers: list[RatifierChoice] | None = None, profile: str = "cpu") -> Lab:
    chosen = lab_profile(profile)  # a bad name is refused before anything is made
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise LabError(f"{root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        raise LabError(f"{root} is not empty; choose a new or empty directory for the lab")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _populate(Lab(root), actor, proposer, ratifiers or [], chosen)
    except BaseException:
        # leave nothing half-made behind: the directory was empty (or absent) before
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for p in root.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        raise


def _populate(lab: Lab, actor: str, proposer: ProposerChoice | None = None,
              ratifiers: list[RatifierChoice] | None = None, profile: LabProfile = LAB_PROFILES["cpu"]) -> Lab:
    root = lab.root

    for name, data in template_files().items():
        (root / name).write_bytes(data)
    if profile.hyperparameters:
        train = root / "train.py"
        train.write_text(set_hyperparameters(train.read_text(), profile.hyperparameters))
    (root / ".gitignore").write_text(GITIGNORE)
    text = profile.constitution_text()
    immutable = constitution.parse_text(text, profile.constitution_file).evaluation.immutable
    missing = [p for p in immutable if not (root / p).is_file()]
    if missing:
        raise LabError(f"the trainer template lacks immutable file(s): {', '.join(missing)}")
    text = set_pins(text, {("evaluation", "immutable", p): file_sha256(root / p) for p in immutable})
    if proposer is not None:
        text = set_proposer(text, proposer)
        constitution.parse_text(text, "constitution.toml")  # a bad choice is refused before anything is made
    if ratifiers:
        text = set_ratifiers(text, ratifiers)
        constitution.parse_text(text, "constitution.toml")  # a bad key or too few ratifiers: refused here
    lab.constitution_path.write_text(text)
    rules = lab.load_constitution()

    git = lab.git
    git.init()
    commit = git.commit_all("charter: lab created from the trainer template")

    lab.state_dir.mkdir()
    with Ledger.open(lab.ledger_path) as led:
        led.record(payloads.LabCreated(
            root=str(root), constitution_hash=constitution.constitution_hash(rules), constitution_version=rules.meta.version,
            files=sorted(template_files()) + ["constitution.toml", ".gitignore"],
        ), actor=actor, commit_sha=commit)
    return lab


def find_lab(arg: str | None) -> Lab:
    """The lab a command means: --lab, then $CHARTER_LAB, then ./lab."""
    chosen = arg or os.environ.get("CHARTER_LAB") or "lab"
    root = Path(chosen).absolute()
    if not (root / "constitution.toml").is_file() or not (root / ".charter").is_dir():
        how = "--lab" if arg else ("$CHARTER_LAB" if os.environ.get("CHARTER_LAB") else "./lab")
        raise LabError(f"no lab at {root} (from {how}); create one with `charter init {chosen}`")
    return Lab(root)
