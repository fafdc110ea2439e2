"""What the evaluator's model worker sees of the run it scores: nothing (a real Runner job).

The evaluator sends the model's files over a pipe, so the worker's sandbox shows no run dir. A
run that could reach its own dir from both workers (a FIFO it left there opens even on a
read-only bind) would have a channel from the scoring worker to the checking one, around the
causality check."""

import textwrap

from controller.execution.runner import Job, Runner, verify_data


def test_the_model_worker_cannot_see_the_run_dir(make_lab):
    lab = make_lab()
    rules = lab.load_constitution()
    run_dir = lab.runs_dir / "view" / "0001-1"
    probe = textwrap.dedent(f"""
        import os as _os
        if "RUN_DIR" not in _os.environ and _os.path.exists({str(run_dir)!r}):  # in a model worker, not training
            raise SystemExit("the run dir is visible to the model worker")
        """)
    (lab.root / "train.py").write_text((lab.root / "train.py").read_text() + probe)
    commit = lab.git.commit_all("a model that looks for its run dir when it is scored")
    out = Runner(lab.state_dir, rules, "bubblewrap").run(Job(1, 1, commit, lab.root, run_dir),
                                                         verify_data(lab.root, rules))
    assert out.status == "ok" and out.val_bpb is not None, (out.reason, out.evaluation and out.evaluation.log_tail)
