"""Adaptation to new ARC tasks (adapt.py) and explicit ensembles (evaluate.py checkpoint=[a,b]) on a tiny checkpoint."""
import json
import subprocess
import sys

import pytest
import torch

from evaluators.arc import submission_problems
from tests.helpers import ARC_NEW_TASKS, QUIET_ENV, ROOT, run_evaluate, write_arc_tasks

TABLE = "_orig_mod.model.inner.puzzle_emb.weights"


def adapt(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "adapt.py"), *args], cwd=cwd, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=timeout)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def adapt_args(tiny_arc, challenges, out, *extra):
    return [f"checkpoint={tiny_arc['run']}", f"challenges={challenges}", f"output_dir={out}", "num_aug=3", "epochs=4",
            "global_batch_size=4", "lr_warmup_steps=1", "device=cpu", *extra]


@pytest.mark.slow
def test_adapting_puzzle_embeddings_grows_the_table_by_the_new_tasks_only(tiny_arc, tmp_path):
    challenges = write_arc_tasks(tmp_path / "kaggle" / "arc_test", ARC_NEW_TASKS, solutions=False)
    out = tmp_path / "adapted"
    result = adapt(adapt_args(tiny_arc, challenges, out, "report_images=1"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = weights(tiny_arc["run"] / "step_4")
    after = weights(max((out / "train").glob("step_*"), key=lambda p: int(p.name.split("_")[1])))
    old_rows = before[TABLE].shape[0]
    names = json.loads((out / "data" / "identifiers.json").read_text())
    new_names = names[old_rows:]
    # exactly the new tasks' augmented identifiers: each task and its 3 augmentations, appended after the old table
    assert names[1:old_rows] == ["<blank>"] * (old_rows - 1)
    assert sorted({n.split("|||")[0] for n in new_names}) == sorted(ARC_NEW_TASKS)
    assert len(new_names) == len(ARC_NEW_TASKS) * (1 + 3)
    assert after[TABLE].shape == (old_rows + len(new_names), before[TABLE].shape[1])
    assert torch.equal(after[TABLE][:old_rows], before[TABLE])  # bit-identical
    initial = weights(out / "init" / "step_0")[TABLE]
    assert torch.equal(initial[old_rows:], before[TABLE].mean(0, keepdim=True).expand(len(new_names), -1))
    assert not torch.equal(after[TABLE][old_rows:], initial[old_rows:])  # the new rows trained
    for key in before:  # train=puzzle_emb: every other weight as it was
        if key != TABLE:
            assert torch.equal(after[key], before[key]), key
    submission = json.loads((out / "submission.json").read_text())
    assert submission_problems(submission, json.loads(challenges.read_text())) == []
    assert [len(submission[t]) for t in ARC_NEW_TASKS] == [1, 2]
    assert all(sorted(entry) == ["attempt_1", "attempt_2"] for t in ARC_NEW_TASKS for entry in submission[t])
    report = json.loads((out / "arc_report.json").read_text())
    assert report["labelled"] is False and report["scores"] == {"ARC/task_count": 2.0, "ARC/test_output_count": 3.0}
    assert all(o["votes"] == 4 and o["solved"] is None for t in report["tasks"].values() for o in t["test_outputs"])
    assert sorted(p.name for p in (out / "predict" / "fixed").glob("evaluator_ARC_step_*/report_images/*.png")) == \
        [f"{ARC_NEW_TASKS[0]}_0.png"]
    # the same command again resumes the finished run (nothing more to train) and predicts the same
    again = adapt(adapt_args(tiny_arc, challenges, out, "report_images=1"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed" in again.stdout
    assert json.loads((out / "submission.json").read_text()) == submission
    # other tasks in the same output_dir are refused in one line
    other = write_arc_tasks(tmp_path / "kaggle" / "other", ARC_NEW_TASKS[:1], solutions=False)
    refused = adapt(adapt_args(tiny_arc, other, out), tmp_path)
    assert refused.returncode != 0 and "holds an adaptation to other tasks" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_adapting_all_weights_with_solutions_scores_and_keeps_old_rows(tiny_arc, tmp_path):
    challenges = write_arc_tasks(tmp_path / "kaggle" / "arc_ev", ARC_NEW_TASKS, solutions=True)
    solutions = tmp_path / "kaggle" / "arc_ev_solutions.json"
    out = tmp_path / "adapted"
    result = adapt(adapt_args(tiny_arc, challenges, out, "train=all", f"solutions={solutions}", "max_train_seconds=600"),
                   tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = weights(tiny_arc["run"] / "step_4")
    after = weights(max((out / "train").glob("step_*"), key=lambda p: int(p.name.split("_")[1])))
    assert torch.equal(after[TABLE][:before[TABLE].shape[0]], before[TABLE])
    assert any(not torch.equal(after[k], before[k]) for k in before if k != TABLE)  # dense weights trained
    scores = json.loads((out / "arc_report.json").read_text())["scores"]
    assert {"ARC/task_mean_pass@2", "ARC/test_output_pass@2", "ARC/pass@2"} <= scores.keys()
    assert scores["ARC/test_output_count"] == 3.0
    assert submission_problems(json.loads((out / "submission.json").read_text()), json.loads(challenges.read_text())) == []


@pytest.mark.slow
def test_an_explicit_ensemble_pools_two_checkpoints(tiny_arc, tmp_path):
    members = [tiny_arc["run"] / "step_2", tiny_arc["run"] / "step_4"]
    out = tmp_path / "ens"
    result = run_evaluate([f"checkpoint=[{members[0]},{members[1]}]", f"output_dir={out}", "device=cpu"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(l.startswith("member 0") for l in lines) and any(l.startswith("member 1") for l in lines)
    assert any(l.startswith("ensemble") for l in lines)
    report = json.loads((out / "eval_results.json").read_text())
    assert [m["step"] for m in report["members"]] == [2, 4]
    reports = [json.loads((out / f"member_{i}" / "fixed" / f"evaluator_ARC_step_{s}" / "arc_report.json").read_text())
               for i, s in ((0, 2), (1, 4))]
    pooled = json.loads((out / "fixed" / "evaluator_ARC_ensemble" / "arc_report.json").read_text())
    for task, entry in pooled["tasks"].items():
        for j, output in enumerate(entry["test_outputs"]):
            per_member = [r["tasks"][task]["test_outputs"][j] for r in reports]
            assert output["votes"] == sum(m["votes"] for m in per_member) == 2 * 8  # 8 augments per member
            tops = [m["candidates"][0] for m in per_member]
            if tops[0]["grid"] == tops[1]["grid"]:  # both members' winner: its votes add up
                assert output["candidates"][0]["grid"] == tops[0]["grid"]
                assert output["candidates"][0]["votes"] == tops[0]["votes"] + tops[1]["votes"]
    assert report["results"]["fixed"]["ARC/test_output_count"] == 3.0


def test_ensemble_needs_the_arc_evaluator(tiny, tmp_path):
    step = sorted(tiny["run"].glob("step_*"))[-1]
    result = run_evaluate([f"checkpoint=[{step},{step}]", "device=cpu"], cwd=tmp_path)
    assert result.returncode != 0
    assert "an ensemble (checkpoint=[a,b,...]) pools ARC votes" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_adapt_bad_inputs_give_one_line(tiny_arc, tmp_path):
    challenges = write_arc_tasks(tmp_path / "kaggle" / "arc_test", ARC_NEW_TASKS, solutions=False)
    broken = tmp_path / "broken_challenges.json"
    broken.write_text(json.dumps({"t1": {"train": [], "test": [{"input": [[1]]}]}}))
    base = [f"checkpoint={tiny_arc['run']}", "device=cpu"]
    cases = [
        (["device=cpu"], "checkpoint is missing"),
        (base + [f"output_dir={tmp_path / 'a'}"], "challenges is missing"),
        (base + [f"challenges={tmp_path / 'nowhere.json'}", f"output_dir={tmp_path / 'b'}"], "not found"),
        (base + [f"challenges={challenges}", f"output_dir={tmp_path / 'c'}", "train=everything"], "'train'"),
        (base + [f"challenges={broken}", f"output_dir={tmp_path / 'd'}"], "has no train examples"),
        ([f"checkpoint={tmp_path / 'no_run'}", f"challenges={challenges}", f"output_dir={tmp_path / 'e'}"], "not found"),
    ]
    for args, expected in cases:
        result = adapt(args, tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, result.stderr[-2000:])


def test_growing_the_table_keeps_old_rows_and_starts_new_ones_at_the_mean():
    from models.checkpoint_io import grow_puzzle_embedding, puzzle_table_rows
    from utils.errors import UserError
    table = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    state = {TABLE: table, "_orig_mod.model.inner.lm_head.weight": torch.ones(2, 2)}
    grown = grow_puzzle_embedding(state, 5)
    assert puzzle_table_rows(grown) == 5 and torch.equal(grown[TABLE][:3], table)
    assert grown[TABLE][3:].tolist() == [[2.0, 4.0], [2.0, 4.0]]  # (0+2+4)/3, (1+3+8)/3
    assert grown["_orig_mod.model.inner.lm_head.weight"] is state["_orig_mod.model.inner.lm_head.weight"]
    with pytest.raises(UserError, match="only grows"):
        grow_puzzle_embedding(state, 2)
    with pytest.raises(UserError, match="no puzzle-embedding table"):
        grow_puzzle_embedding({"w": torch.ones(1)}, 4)


@pytest.mark.slow
def test_adapt_under_torchrun_with_two_processes(tiny_arc, tmp_path):
    challenges = write_arc_tasks(tmp_path / "kaggle" / "arc_test", ARC_NEW_TASKS, solutions=False)
    out = tmp_path / "adapted"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv_backend=c10d",
               "--rdzv_endpoint=localhost:0", "--nnodes=1", str(ROOT / "adapt.py"), *adapt_args(tiny_arc, challenges, out)]
    result = subprocess.run(command, cwd=tmp_path, env=QUIET_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Submission written to") == 1  # rank 0 only
    before = weights(tiny_arc["run"] / "step_4")
    after = weights(max((out / "train").glob("step_*"), key=lambda p: int(p.name.split("_")[1])))
    assert torch.equal(after[TABLE][:before[TABLE].shape[0]], before[TABLE])
    assert submission_problems(json.loads((out / "submission.json").read_text()), json.loads(challenges.read_text())) == []


@pytest.mark.slow
def test_an_interrupted_adaptation_resumes_to_the_same_weights(tiny_arc, tmp_path):
    challenges = write_arc_tasks(tmp_path / "kaggle" / "arc_test", ARC_NEW_TASKS, solutions=False)
    out = tmp_path / "adapted"
    args = adapt_args(tiny_arc, challenges, out, "train=all", "checkpoint_interval=2")
    assert adapt(args, tmp_path).returncode == 0
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "train").glob("step_*"))
    final, earlier = steps[-1], steps[-2]
    assert final > earlier >= 2 and (out / "train" / f"state_{earlier}.pt").is_file()
    finished = weights(out / "train" / f"step_{final}")
    # a crash after the checkpoint at `earlier`: the last checkpoint never reached the disk
    (out / "train" / f"step_{final}").unlink()
    (out / "train" / f"state_{final}.pt").unlink()
    again = adapt(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed {out / 'train'} at step {earlier}" in again.stdout
    resumed = weights(out / "train" / f"step_{final}")
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)
