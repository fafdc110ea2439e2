"""Files an untrusted run leaves behind are read without following links, blocking or overreading."""

import json
import os

import pytest

from controller.execution.run_files import RunFileRefused, read_run_file
from controller.execution.runner import read_stats, time_claim


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_a_small_regular_file_is_read(run_dir):
    (run_dir / "stats.json").write_text('{"steps": 3}')
    assert read_run_file(run_dir, "stats.json", 100) == b'{"steps": 3}'
    assert read_stats(run_dir) == {"steps": 3}


@pytest.mark.parametrize("plant, why", [
    (lambda p: os.symlink("/etc/hostname", p), "symlink"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: os.symlink("/dev/zero", p), "symlink"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: p.write_bytes(b"x" * 101), "larger than 100"),
])
def test_links_fifos_devices_and_big_files_are_refused_at_once(run_dir, plant, why):
    plant(run_dir / "stats.json")
    with pytest.raises(RunFileRefused, match=why):
        read_run_file(run_dir, "stats.json", 100)
    assert read_stats(run_dir) == {}


def test_a_run_dir_that_is_itself_a_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "stats.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere", tmp_path / "run")
    with pytest.raises(RunFileRefused, match="run dir"):
        read_run_file(tmp_path / "run", "stats.json", 100)


@pytest.mark.parametrize("text", ['{"loss": NaN}', '{"t": Infinity}', "[" * 100_000 + "]" * 100_000, '[1, 2]', "not json"])
def test_stats_the_ledger_could_not_record_are_dropped(run_dir, text):
    (run_dir / "stats.json").write_text(text)
    assert read_stats(run_dir) == {}


def test_the_runs_claim_of_its_own_time_is_compared_with_the_controllers():
    assert time_claim({"total_seconds": 55.0}, 60.0) == (55.0, "consistent")  # its clock starts after imports
    claimed, verdict = time_claim({"total_seconds": 10.0}, 140.0)
    assert claimed == 10.0 and verdict.startswith("disagrees")
    assert time_claim({"total_seconds": 90.0}, 60.0)[1].startswith("disagrees")  # more than was measured
    assert time_claim({}, 60.0) == (None, "") and time_claim({"total_seconds": True}, 60.0) == (None, "")
    assert json.dumps(time_claim({"total_seconds": 5}, None)) == '[null, ""]'


def test_over_budget_is_a_kill_at_the_deadline_or_an_unclean_exit_after_the_stop():
    from controller.execution.runner import over_budget
    from controller.execution.sandbox import SandboxResult

    def result(**kw):
        base = dict(returncode=0, timed_out=False, memory_killed=False, wall_seconds=60.0, peak_rss_mb=1.0,
                    level="none", log_tail="", kill_reason="")
        return SandboxResult(**(base | kw))

    assert over_budget(result(), 60, 5) is None  # finished on its own
    assert over_budget(result(stopped=True), 60, 5) is None  # stopped, saved, exited cleanly
    killed = over_budget(result(returncode=None, timed_out=True, stopped=True), 60, 5)
    assert killed.startswith("over budget: still running 5 s after the stop signal at 60 s")
    unclean = over_budget(result(returncode=-15, stopped=True), 60, 5)
    assert unclean.startswith("over budget: stopped at 60 s") and "exit code -15" in unclean
    assert over_budget(result(returncode=1), 60, 5) is None  # a crash before the stop is a crash
