"""The gpu profile on a CPU machine: `charter init --profile gpu` writes a constitution and a
train.py a user can start from, a bad profile is one line, and a gpu lab is refused with one
line when no GPU is usable (the real probe, over real directories)."""

import importlib.util
from pathlib import Path

import pytest

import constitution
from constitution.diff import semantic_diff
from controller import cli
from controller.execution import gpu
from controller.policy.device import GpuProbe, gpu_refusal
from controller.proposers.offline import parse_constants
from controller.workspace.lab import LAB_PROFILES, LabError, init_lab, set_hyperparameters


def test_init_gpu_writes_a_valid_constitution_with_the_upstream_figures(tmp_path, capsys):
    lab = init_lab(tmp_path / "g", profile="gpu")
    assert cli.main(["constitution", "validate", str(lab.constitution_path)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    rules = lab.load_constitution()
    b = rules.budgets.experiment
    assert (rules.evaluation.profile, b.training_seconds, b.clock) == ("gpu", 300, "wall")
    assert rules.evaluation.eval_tokens == 2**17
    assert b.vram_soft_mb < b.vram_hard_mb <= 80_000  # fits an 80 GB H100
    # every pin was set for this lab's files, as for a cpu lab
    assert all(len(pin) == 64 for pin in rules.evaluation.immutable.values())
    consts = {k: c.value for k, c in parse_constants((lab.root / "train.py").read_text()).items()}
    assert (consts["DEPTH"], consts["MODEL_DIM"], consts["HEAD_DIM"]) == (8, 512, 128)
    assert (consts["DEVICE_BATCH_SIZE"], consts["TOTAL_BATCH_SIZE"]) == (128, 2**19)
    assert lab.git.dirty_paths() == []  # the sized train.py is the lab's committed baseline


def test_the_gpu_constitution_differs_from_the_default_only_where_a_gpu_needs_it():
    cpu = constitution.load_default().model_dump(mode="json")
    text = LAB_PROFILES["gpu"].constitution_text()
    gpu_rules = constitution.parse_text(text, "gpu.toml").model_dump(mode="json")
    changed = {".".join(str(p) for p in c.path) for c in semantic_diff(cpu, gpu_rules)}
    assert changed == {
        "meta.name", "evaluation.profile", "evaluation.eval_tokens",  # the cpu count is measured on the cpu corpus
        "budgets.experiment.training_seconds", "budgets.experiment.clock", "budgets.experiment.grace_seconds",
        "budgets.experiment.evaluate_timeout_seconds", "budgets.experiment.memory_soft_mb",
        "budgets.experiment.memory_hard_mb", "budgets.experiment.vram_soft_mb", "budgets.experiment.vram_hard_mb",
        "budgets.session.experiments", "budgets.session.device_seconds", "budgets.session.wall_hours",
        "decision.min_improvement", "decision.noise_sd",
    }
    # every line that sets a value says why (the file is something a user starts from)
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")) and line.split("=")[0].strip() in (
                "training_seconds", "clock", "vram_soft_mb", "vram_hard_mb", "noise_sd", "eval_tokens", "profile"):
            assert "#" in line, line


def test_a_cpu_lab_is_unchanged_by_the_profiles(tmp_path):
    lab = init_lab(tmp_path / "c")
    assert (lab.root / "train.py").read_bytes() == (Path(cli.__file__).parents[1] / "trainer" / "train.py").read_bytes()
    rules = lab.load_constitution()
    assert rules.evaluation.profile == "cpu" and rules.budgets.experiment.vram_hard_mb is None


def test_a_bad_profile_is_one_line_and_makes_nothing(tmp_path, capsys):
    target = tmp_path / "lab"
    assert cli.main(["init", str(target), "--profile", "tpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "charter: --profile 'tpu' is not a profile; choose one of cpu, gpu"
    assert not target.exists()


def test_set_hyperparameters_keeps_comments_and_refuses_an_unknown_name():
    src = "DEPTH = 2                  # transformer blocks\nLR = 3e-3\n"
    assert set_hyperparameters(src, (("DEPTH", "12"), ("LR", "1e-3"))) == \
        "DEPTH = 12                 # transformer blocks\nLR = 1e-3\n"
    with pytest.raises(LabError, match="WIDTH"):
        set_hyperparameters(src, (("WIDTH", "4"),))


def test_a_gpu_lab_is_refused_in_one_line_where_no_gpu_is_usable(tmp_path):
    rules = init_lab(tmp_path / "g", profile="gpu").load_constitution()
    empty_dev = tmp_path / "dev"
    empty_dev.mkdir()
    probe = gpu.probe(empty_dev)  # the real probe over a /dev with no NVIDIA nodes, as on this machine
    assert not probe.usable
    line = gpu_refusal(rules, probe)
    assert line is not None and "\n" not in line
    assert 'evaluation.profile = "gpu"' in line and "no NVIDIA device nodes" in line
    assert "charter init DIR --profile cpu" in line  # the way out
    # the same probe never refuses a cpu lab
    assert gpu_refusal(init_lab(tmp_path / "c").load_constitution(), probe) is None


def test_charter_run_refuses_a_gpu_lab_on_this_cpu_machine_before_preparing_anything(tmp_path, capsys):
    if gpu.probe().usable:
        pytest.skip("this host has a GPU: the refusal is for machines without one")
    lab = init_lab(tmp_path / "g", profile="gpu")
    assert cli.main(["run", "--lab", str(lab.root), "--max-experiments", "1"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert 'asks for a GPU (evaluation.profile = "gpu")' in err and "--profile cpu" in err
    assert not lab.load_constitution().evaluation.data_hash  # no data was prepared for it
    assert not (lab.state_dir / "runs").exists() or not any((lab.state_dir / "runs").iterdir())


def test_the_real_probe_of_this_host_agrees_with_its_device_nodes():
    probe = gpu.probe()
    assert probe.usable == bool(gpu.device_nodes()) or probe.problem.startswith("NVML")
    assert probe.usable or probe.problem


def test_device_nodes_without_nvml_count_as_usable(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidiactl", "null"):
        (dev / name).write_text("")  # plain files stand in for the nodes: only their names are read
    probe = gpu.probe(dev)
    if importlib.util.find_spec("pynvml") is None:
        assert probe.names == ("NVIDIA GPU (nvidia0)",)
    else:  # NVML installed: on this host with no driver the nodes alone are not enough
        assert probe.usable or probe.problem.startswith("NVML")
    rules = constitution.parse_text(LAB_PROFILES["gpu"].constitution_text(), "gpu.toml")
    assert gpu_refusal(rules, GpuProbe(("NVIDIA H100 80GB HBM3",))) is None
