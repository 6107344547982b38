"""evaluate.py end to end on a tiny trained checkpoint: same figures as the training loop's own evaluation, fixed and
adaptive side by side, pictures, bare weights files, and one-line errors for bad input."""
import json
import shutil

import numpy as np
import pytest

from dataset.format import set_array_path
from tests.helpers import evaluate_report, run_evaluate, TINY_ARCH


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_evaluate_matches_training_evaluation_and_reports_both_modes(tiny, tmp_path):
    out = tmp_path / "eval"
    result, report = evaluate_report([f"checkpoint={tiny['run']}", "halt=both", "visualize=2"], tmp_path, out)
    assert report["step"] == tiny["final_eval"]["step"]
    fixed, adaptive = report["results"]["fixed"], report["results"]["adaptive"]
    train = tiny["final_eval"]
    for key in ("accuracy", "exact_accuracy", "steps", "count", "q_halt_accuracy"):
        assert fixed["all"][key] == pytest.approx(train[f"all/{key}"], abs=1e-6), key
    assert fixed["Sudoku/exact_accuracy"] == train["Sudoku/exact_accuracy"]
    low, high = fixed["all"]["exact_accuracy_ci_low"], fixed["all"]["exact_accuracy_ci_high"]
    assert 0 <= low <= fixed["all"]["exact_accuracy"] <= high <= 1 and high > 0
    assert adaptive["all"]["count"] == fixed["all"]["count"]
    assert 1 <= adaptive["all"]["steps"] <= fixed["all"]["steps"] == report["halt_max_steps"]
    # the table prints both modes; the terminal view and the pictures of 2 puzzles
    assert "fixed" in result.stdout and "adaptive" in result.stdout and "puzzle 1:" in result.stdout
    for name in ("puzzle_000.png", "puzzle_000.gif", "puzzle_001.png", "puzzle_001.gif"):
        assert (out / "reasoning" / name).stat().st_size > 0


@pytest.mark.slow
def test_bare_weights_file_needs_the_arch_on_the_command_line(tiny, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    step = next(tiny["run"].glob("step_*"))
    shutil.copy(step, bare / step.name)
    assert "give the architecture" in one_line_error(run_evaluate([f"checkpoint={bare / step.name}"], cwd=tmp_path))
    result, report = evaluate_report([f"checkpoint={bare / step.name}", "arch=trm", *TINY_ARCH, f"data_paths=[{tiny['data']}]",
                                      "global_batch_size=16", "evaluators=[]"], tmp_path, tmp_path / "out")
    assert report["results"]["fixed"]["all"]["accuracy"] == pytest.approx(tiny["final_eval"]["all/accuracy"], abs=1e-6)


def test_dataset_of_another_shape_is_refused_in_one_line(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny["data"], other)
    meta_path = other / "test" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "vocab_size": meta["vocab_size"] + 1}))
    line = one_line_error(run_evaluate([f"checkpoint={tiny['run']}", f"data_paths=[{other}]"], cwd=tmp_path))
    assert "vocab_size 7" in line and "trained with 6" in line
    meta_path.write_text(json.dumps({**meta, "seq_len": 25}))
    for field in ("inputs", "labels"):  # a consistent dataset of 25 cells (a mismatched one fails the data check)
        path = set_array_path(other / "test", "all", field)
        np.save(path, np.pad(np.load(path), ((0, 0), (0, 25 - meta["seq_len"]))))
    line = one_line_error(run_evaluate([f"checkpoint={tiny['run']}", f"data_paths=[{other}]"], cwd=tmp_path))
    assert "seq_len 25" in line and "trained with 16" in line


def test_missing_checkpoint_and_bad_options_give_one_line(tmp_path):
    assert "checkpoint is missing" in one_line_error(run_evaluate([], cwd=tmp_path))
    assert "not found" in one_line_error(run_evaluate([f"checkpoint={tmp_path / 'nowhere'}"], cwd=tmp_path))
    assert "halt" in one_line_error(run_evaluate(["checkpoint=x", "halt=sometimes"], cwd=tmp_path))
