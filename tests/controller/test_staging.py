"""Staging turns a proposal into exact file changes in a scratch copy, never touching the lab."""

import subprocess

import pytest

from controller.workspace.git import GitWorkspace
from controller.proposers import Proposal
from controller.workspace.staging import StagingError, apply_to_lab, stage, unified_diff


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    (root / "train.py").write_text("LR = 1\nprint(LR)\n")
    (root / "prepare.py").write_text("# immutable\n")
    g = GitWorkspace(root)
    g.init()
    g.commit_all("base")
    return root


def test_replacement_files_become_modifications(repo):
    changes = stage(repo, Proposal("lr", files={"train.py": b"LR = 2\nprint(LR)\n"}))
    assert [(c.path, c.status) for c in changes] == [("train.py", "M")]
    assert changes[0].old_text == "LR = 1\nprint(LR)\n" and changes[0].new_text == "LR = 2\nprint(LR)\n"
    assert (repo / "train.py").read_text() == "LR = 1\nprint(LR)\n"  # lab untouched
    assert "-LR = 1\n+LR = 2\n" in unified_diff(changes)


def test_patch_with_add_delete_and_symlink(repo):
    patch = subprocess.run(["git", "diff"], cwd=repo, capture_output=True, text=True).stdout  # empty
    assert patch == ""
    # build a real patch from a scratch edit
    (repo / "train.py").write_text("LR = 3\nprint(LR)\n")
    (repo / "prepare.py").unlink()
    (repo / "evil.py").write_text("x = 1\n")
    (repo / "link").symlink_to("/etc/passwd")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    patch = subprocess.run(["git", "diff", "--cached"], cwd=repo, capture_output=True, text=True).stdout
    subprocess.run(["git", "reset", "-q", "--hard"], cwd=repo, check=True)
    changes = {c.path: c for c in stage(repo, Proposal("many", patch=patch))}
    assert changes["train.py"].status == "M"
    assert changes["prepare.py"].status == "D" and changes["prepare.py"].new_text is None
    assert changes["evil.py"].status == "A"
    assert changes["link"].is_symlink and changes["link"].new_text == "/etc/passwd"
    assert not (repo / "evil.py").exists() and (repo / "prepare.py").exists()


def test_bad_patch_and_escaping_paths_are_staging_errors(repo):
    with pytest.raises(StagingError, match="patch does not apply"):
        stage(repo, Proposal("bad", patch="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+x\n"))
    with pytest.raises(StagingError, match="outside the lab"):
        stage(repo, Proposal("bad", files={"../x.py": b"1"}))


def test_apply_to_lab_writes_only_the_changes(repo):
    changes = stage(repo, Proposal("lr", files={"train.py": b"LR = 5\n"}))
    apply_to_lab(repo, changes)
    assert (repo / "train.py").read_text() == "LR = 5\n"
    assert GitWorkspace(repo).dirty_paths() == ["train.py"]
