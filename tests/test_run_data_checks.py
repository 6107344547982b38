"""What a run is told before it starts: the steps it will take, the evaluator that fits its data, where resume=
finds a run; and the puzzle checks of the Solver, which accepts the custom builders' datasets by their vocab.json."""
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dataset import build_arithmetic_dataset
from dataset.format import read_metadata, set_array_path
from inference.encoding import decode_custom, encode_custom, encode_maze, encode_sudoku, read_vocabulary
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from tests.helpers import ROOT, build_sudoku4
from training.builders import fit_evaluators
from training.checkpoint import STATE_FORMAT
from training.config import EvaluatorConfig, prepare_resume, sweep_run_name, validate_config
from training.data_checks import check_run_data, planned_steps
from utils.errors import UserError


def composed(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        return OmegaConf.to_container(compose("cfg_pretrain", overrides=overrides), resolve=True)


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    return build_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", n_train=37, n_test=5, num_aug=2)


def test_the_planned_steps_are_the_batches_the_sampler_yields(sudoku4):
    config = validate_config(composed([f"data_paths=[{sudoku4}]", "global_batch_size=8", "epochs=6", "eval_interval=3"]))
    batches_per_pass = check_run_data(config)
    loader = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(sudoku4)], global_batch_size=8,
                                               test_set_mode=False, epochs_per_iter=3, rank=0, num_replicas=1), "train")
    yielded = sum(1 for _ in loader) + sum(1 for _ in loader)  # the run's two passes
    assert batches_per_pass == 37 * 3 // 8 == yielded / 2
    # the schedule's reference formula counts int(6 * 37 / 8) = 27 steps; the run takes 26
    assert planned_steps(batches_per_pass, config, 27) == f"{yielded} steps" == "26 steps"


def test_the_default_arc_evaluator_gives_way_on_other_data(sudoku4, capsys):
    arc = [EvaluatorConfig(name="arc@ARC")]
    metadata = read_metadata(sudoku4 / "test")
    assert [e.name for e in fit_evaluators(arc, metadata, [str(sudoku4)], chosen=False)] == ["sudoku@Sudoku"]
    assert "is not an ARC dataset" in capsys.readouterr().out
    assert fit_evaluators(arc, metadata, [str(sudoku4)], chosen=True) == arc  # the user's choice stands (and fails)
    maze_like = metadata.model_copy(update={"vocab_size": 6, "seq_len": 49})
    assert [e.name for e in fit_evaluators(arc, maze_like, [str(sudoku4)], chosen=False)] == ["maze@Maze"]
    odd = metadata.model_copy(update={"vocab_size": 40, "seq_len": 30})
    assert fit_evaluators(arc, odd, [str(sudoku4)], chosen=False) == []


def test_resume_latest_looks_under_the_runs_own_checkpoint_path_and_offers_an_intact_older_state(tmp_path):
    runs = tmp_path / "mine"
    (runs / "a").mkdir(parents=True)
    saved = validate_config(composed(["data_paths=[d]", "+run_name=a"])).fill_defaults().model_dump()
    state = {"format": STATE_FORMAT, "step": 4, "model": {}, "optimizers": [], "ranks": [], "config": saved}
    torch.save(state, runs / "a" / "state_4.pt")
    (runs / "a" / "state_8.pt").write_bytes(b"cut short")
    with pytest.raises(UserError) as info:
        prepare_resume(composed(["resume=latest", f"+checkpoint_path={runs}"]), ["resume=latest"])
    message = str(info.value)
    assert f"'{runs / 'a' / 'state_8.pt'}' cannot be loaded" in message
    assert message.endswith(f"an older state loads: continue from it with resume={runs / 'a' / 'state_4.pt'}")
    (runs / "a" / "state_8.pt").unlink()
    config, loaded = prepare_resume(composed(["resume=latest", f"+checkpoint_path={runs}"]), ["resume=latest"])
    assert loaded["step"] == 4 and config.checkpoint_path == str(runs / "a")


def test_sweep_points_and_evaluation_options_get_folders_of_their_own():
    from evaluate import EvaluateConfig, results_dir_name
    name = sweep_run_name("recursive_reasoning.trm@TRM", ["arch.L_cycles=4", "data_paths=[/data/x]", "+experiment=quick",
                                                          "hydra.launcher.nodes=2", "+run_note=a b"])
    assert name.startswith("TRM_arch.L_cycles=4_experiment=quick-") and " " not in name and "/" not in name
    assert results_dir_name(EvaluateConfig(checkpoint="run"), 80) == "eval_step_80"
    assert results_dir_name(EvaluateConfig(checkpoint="run", halt="both", halt_threshold=0.9,
                                           data_paths=["/data/sudoku6"]), 80) == \
        "eval_step_80_data_paths=sudoku6_halt=both_halt_threshold=0.9"


def test_the_solver_checks_plain_puzzles():
    assert encode_sudoku([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 4]], 16)[0] == 2
    with pytest.raises(UserError, match="cell 1.5 is not a whole number"):
        encode_sudoku([[1.5, 0, 0, 0]] + [[0] * 4] * 3, 16)
    with pytest.raises(UserError, match="list of rows of digits"):
        encode_sudoku([["a"] * 4] * 4, 16)
    with pytest.raises(UserError, match="maze has 0 start cells 'S'"):
        encode_maze(["#  ", " G ", "   "], 9)
    with pytest.raises(UserError, match="maze has 2 start cells 'S'"):
        encode_maze(["#SS", " G ", "   "], 9)
    assert len(encode_maze(["#S ", " G ", "   "], 9)) == 9


def test_custom_datasets_encode_and_decode_by_their_vocabulary(tmp_path):
    out = tmp_path / "add"
    build_arithmetic_dataset.main(["--digits", "2", "--num-train", "10", "--num-test", "3", "--output-dir", str(out)])
    vocab = read_vocabulary(str(out))
    inputs, labels = (np.load(set_array_path(out / "test", "all", f)) for f in ("inputs", "labels"))
    rows = decode_custom(inputs[0], vocab)
    assert len(rows) == 3 and len(rows[0]) == 3  # the 3 x (digits + 1) grid, its blank answer row included
    assert (encode_custom(rows, vocab, inputs.shape[1]) == inputs[0]).all()
    answer = decode_custom(labels[0], vocab)
    assert int(answer[0]) + int(answer[1]) == int(answer[2])
    with pytest.raises(UserError, match="symbol 'x' is outside the vocabulary"):
        encode_custom(["x"], vocab, inputs.shape[1])
    shutil.rmtree(out)
    assert read_vocabulary(str(out)) is None


def test_a_changed_arch_on_resume_names_only_what_changed():
    from training.config import describe_change
    assert describe_change("arch", {"hidden_size": 32, "L_layers": 2}, {"hidden_size": 64, "L_layers": 2}) == \
        "arch.hidden_size was 32, now 64"
    assert describe_change("epochs", 10, 20) == "epochs was 10, now 20"


@pytest.mark.slow
def test_the_solver_reads_a_custom_dataset_by_its_vocabulary(tmp_path):
    import subprocess
    import sys
    from inference.api import Solver
    from tests.helpers import QUIET_ENV, TINY_ARCH
    data, run = tmp_path / "add", tmp_path / "run"
    build_arithmetic_dataset.main(["--digits", "2", "--num-train", "64", "--num-test", "8", "--output-dir", str(data)])
    trained = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), f"data_paths=[{data}]", "evaluators=[]",
                              "global_batch_size=16", "epochs=2", "eval_interval=2", "device=cpu", *TINY_ARCH,
                              f"+checkpoint_path={run}"], cwd=tmp_path, env=QUIET_ENV,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    solver = Solver.from_checkpoint(run, device="cpu")
    assert solver.kind == "custom"  # by its sizes (9 cells, 12 tokens) it is no Sudoku, maze or ARC: no guessing
    answer = solver.solve([" 12", " 34", "   "], halt="fixed").answer
    assert len(answer) <= 3 and all(set(row) <= set(" 0123456789") for row in answer)
