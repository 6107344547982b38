import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataset.checkers import MAZE_CHARSET
from dataset.format import single_set_metadata
from evaluators.maze import Maze
from evaluators.stats import add_wilson_intervals, wilson_interval
from evaluators.sudoku import Sudoku
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig

# ---- Wilson interval, hand-computed to 5 decimals: centre = (p + z²/2n) / (1 + z²/n), half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)


@pytest.mark.parametrize("successes, n, low, high", [
    (5, 10, 0.23659, 0.76341),   # centre 0.5, half 1.41602 * sqrt(0.025 + 0.009604)
    (8, 10, 0.49016, 0.94332),   # centre 0.99208 / 1.38416
    (0, 10, 0.0, 0.27754),        # high = (z²/n) / (1 + z²/n) = 0.38416 / 1.38416
    (10, 10, 0.72246, 1.0),
    (1, 1, 0.20654, 1.0),         # centre 2.9208 / 4.8416, half 1.96 / 4.8416 * 0.98
    (0, 0, 0.0, 1.0),              # no trials: no information
])
def test_wilson_interval_hand_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_narrows_with_z_and_rejects_impossible_counts():
    wide, narrow = wilson_interval(5, 10, z=2.576), wilson_interval(5, 10, z=1.0)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(11, 10)


def test_add_wilson_intervals_to_pass_at_k():
    out = add_wilson_intervals({"ARC/pass@1": 0.5, "ARC/pass@2": 1.0}, n=10)
    assert out["ARC/pass@1"] == 0.5 and out["ARC/pass@2"] == 1.0
    assert (out["ARC/pass@1_ci_low"], out["ARC/pass@1_ci_high"]) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert (out["ARC/pass@2_ci_low"], out["ARC/pass@2_ci_high"]) == pytest.approx((0.72246, 1.0), abs=1e-5)


# ---- Sudoku

LABEL_4 = [[1, 2, 3, 4],
           [3, 4, 1, 2],
           [2, 1, 4, 3],
           [4, 3, 2, 1]]
OTHER_4 = [[1, 2, 3, 4],   # a second valid grid with the same first two rows
           [3, 4, 1, 2],
           [2, 3, 4, 1],
           [4, 1, 2, 3]]
PUZZLE_4 = [[1, 2, 3, 4]] + [[0] * 4] * 3   # first row given: both grids solve it


def tokens(grid):
    return torch.tensor(np.asarray(grid).reshape(-1) + 1, dtype=torch.int32)


def sudoku_batch(puzzles, preds, label):
    """Rows of (puzzle, pred) sharing one label, plus one padding row as the last test batch has."""
    inputs = torch.stack([tokens(p) for p in puzzles] + [torch.zeros(16, dtype=torch.int32)])
    labels = torch.stack([tokens(label)] * len(puzzles) + [torch.full((16,), -100, dtype=torch.int32)])
    out = torch.stack([tokens(p) for p in preds] + [torch.zeros(16, dtype=torch.int32)])
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32)}, {"preds": out}


def sudoku_4_cases():
    wrong_in_row = np.array(LABEL_4)
    wrong_in_row[3] = [3, 4, 2, 1]                   # row still a permutation, columns 0 and 1 repeat
    relabelled = np.array([[2, 1, 4, 3][d - 1] for d in np.ravel(LABEL_4)]).reshape(4, 4)  # valid, breaks the clues
    with_blank = np.array(LABEL_4)
    with_blank[2, 2] = 0
    preds = [LABEL_4, OTHER_4, wrong_in_row, relabelled, with_blank]
    return sudoku_batch([PUZZLE_4] * len(preds), preds, LABEL_4)


def run(evaluator, batches):
    evaluator.begin_eval()
    for batch, preds in batches:
        evaluator.update_batch(batch, preds)
    return evaluator.result(None, rank=0, world_size=1, group=None)


def test_sudoku_exact_and_valid_4x4():
    result = run(Sudoku("unused", single_set_metadata(16, 6, 1, 1)), [sudoku_4_cases()])
    # 5 labelled rows: the label itself (exact, valid), another solution (valid only), three invalid grids.
    assert result["Sudoku/count"] == 5
    assert result["Sudoku/exact_accuracy"] == pytest.approx(1 / 5)
    assert result["Sudoku/valid_accuracy"] == pytest.approx(2 / 5)
    assert (result["Sudoku/valid_accuracy_ci_low"], result["Sudoku/valid_accuracy_ci_high"]) == pytest.approx(wilson_interval(2, 5))
    assert (result["Sudoku/exact_accuracy_ci_low"], result["Sudoku/exact_accuracy_ci_high"]) == pytest.approx(wilson_interval(1, 5))


def patterned_solution(n, box_rows, box_cols):
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return (r * box_cols + r // box_rows + c) % n + 1


@pytest.mark.parametrize("n, box", [(4, (2, 2)), (6, (2, 3)), (9, (3, 3))])
def test_sudoku_any_board_size_credits_other_solutions(n, box):
    label = patterned_solution(n, *box)
    other = label[[1, 0] + list(range(2, n))]          # swapping two rows of one band keeps a valid grid
    puzzle = np.where(label == other, label, 0)         # clues on which both agree
    broken = label.copy()
    broken[0, 0], broken[0, 1] = broken[0, 1], broken[0, 0]  # rows fine, columns and a box repeat
    batch = ({"inputs": torch.stack([tokens(puzzle)] * 3), "labels": torch.stack([tokens(label)] * 3)},
             {"preds": torch.stack([tokens(label), tokens(other), tokens(broken)])})
    result = run(Sudoku("unused", single_set_metadata(n * n, n + 2, 1, 1)), [batch])
    assert (result["Sudoku/count"], result["Sudoku/exact_accuracy"], result["Sudoku/valid_accuracy"]) == \
        (3, pytest.approx(1 / 3), pytest.approx(2 / 3))


def test_sudoku_accumulates_over_batches_and_resets_on_begin_eval():
    evaluator = Sudoku("unused", single_set_metadata(16, 6, 1, 1))
    assert run(evaluator, [sudoku_4_cases(), sudoku_4_cases()])["Sudoku/count"] == 10
    evaluator.begin_eval()
    assert evaluator.result(None, rank=0, world_size=1) == {
        "Sudoku/exact_accuracy": 0.0, "Sudoku/exact_accuracy_ci_low": 0.0, "Sudoku/exact_accuracy_ci_high": 1.0,
        "Sudoku/valid_accuracy": 0.0, "Sudoku/valid_accuracy_ci_low": 0.0, "Sudoku/valid_accuracy_ci_high": 1.0,
        "Sudoku/count": 0.0}


def test_sudoku_bad_inputs():
    with pytest.raises(ValueError, match="seq_len 900 / vocab_size 12|vocab_size 12 does not fit"):
        Sudoku("unused", single_set_metadata(900, 12, 1, 1))
    with pytest.raises(ValueError, match="seq_len 20 is not an n\\*n board"):
        Sudoku("unused", single_set_metadata(20, 6, 1, 1))
    batch, preds = sudoku_4_cases()
    with pytest.raises(KeyError, match="needs outputs \\['preds'\\]"):
        Sudoku("unused", single_set_metadata(16, 6, 1, 1)).update_batch(batch, {})


def _distributed_worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        batch, preds = sudoku_4_cases()
        rows = slice(0, 2) if rank == 0 else slice(2, None)  # rank 0: both valid rows; rank 1: the rest and the padding
        evaluator = Sudoku("unused", single_set_metadata(16, 6, 1, 1))
        evaluator.begin_eval()
        evaluator.update_batch({k: v[rows] for k, v in batch.items()}, {"preds": preds["preds"][rows]})
        results[rank] = evaluator.result(None, rank=rank, world_size=world_size, group=None)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_counts_gathered_to_rank_zero(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), results), nprocs=2)
    assert results[1] is None
    assert (results[0]["Sudoku/count"], results[0]["Sudoku/exact_accuracy"], results[0]["Sudoku/valid_accuracy"]) == \
        (5, pytest.approx(1 / 5), pytest.approx(2 / 5))


# ---- Maze

MAZE = ["#####",
        "#S  #",
        "# # #",
        "#  G#",
        "#####"]
LABEL_PATH = ["#####",    # the two shortest paths have length 4: over the top right, or the bottom left
              "#Soo#",
              "# #o#",
              "#  G#",
              "#####"]
OTHER_PATH = ["#####",
              "#S  #",
              "#o# #",
              "#ooG#",
              "#####"]
THROUGH_WALL = ["#####",
                "#S  #",
                "#ooo#",   # crosses the wall at (2, 2)
                "#  G#",
                "#####"]
BROKEN = ["#####",
          "#So #",
          "# # #",
          "#  G#",
          "#####"]
OPEN = ["#####",
        "#S  #",
        "#   #",
        "#  G#",
        "#####"]
DETOUR = ["#####",    # S, G connected through the marks, but 5 cells where 3 suffice
          "#Soo#",
          "#ooo#",
          "#  G#",
          "#####"]


def maze_tokens(rows):
    return torch.tensor([MAZE_CHARSET.index(ch) + 1 for ch in "".join(rows)], dtype=torch.int32)


def test_maze_exact_and_valid_shortest_path():
    pad_on_path = maze_tokens(LABEL_PATH)
    pad_on_path[pad_on_path == MAZE_CHARSET.index("o") + 1] = 0  # pad tokens where the path should be
    cases = [(MAZE, LABEL_PATH, maze_tokens(LABEL_PATH)), (MAZE, LABEL_PATH, maze_tokens(OTHER_PATH)),
             (MAZE, LABEL_PATH, maze_tokens(THROUGH_WALL)), (MAZE, LABEL_PATH, maze_tokens(BROKEN)),
             (MAZE, LABEL_PATH, maze_tokens(MAZE)), (MAZE, LABEL_PATH, pad_on_path),
             (OPEN, LABEL_PATH, maze_tokens(DETOUR))]
    batch = {"inputs": torch.stack([maze_tokens(m) for m, _, _ in cases] + [torch.zeros(25, dtype=torch.int32)]),
             "labels": torch.stack([maze_tokens(l) for _, l, _ in cases] + [torch.full((25,), -100, dtype=torch.int32)])}
    preds = {"preds": torch.stack([p for _, _, p in cases] + [torch.zeros(25, dtype=torch.int32)])}
    result = run(Maze("unused", single_set_metadata(25, 6, 1, 1)), [(batch, preds)])
    assert result["Maze/count"] == 7
    assert result["Maze/exact_accuracy"] == pytest.approx(1 / 7)
    assert result["Maze/valid_accuracy"] == pytest.approx(2 / 7)
    assert (result["Maze/valid_accuracy_ci_low"], result["Maze/valid_accuracy_ci_high"]) == pytest.approx(wilson_interval(2, 7))


def test_maze_bad_dataset():
    with pytest.raises(ValueError, match="use maze@Maze only with Maze datasets"):
        Maze("unused", single_set_metadata(81, 11, 1, 1))


# ---- On real built datasets through the test loader (padding rows included)

@pytest.mark.parametrize("kind, evaluator_class, args", [
    ("sudoku", Sudoku, ["--generate", "12", "--generate-test", "10", "--size", "4", "--num-aug", "0"]),
    ("maze", Maze, ["--generate", "4", "--generate-test", "10", "--size", "9"]),
])
def test_on_built_dataset_with_loader_batches(tmp_path, kind, evaluator_class, args):
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "dataset" / f"build_{kind}_dataset.py"), *args, "--output-dir", str(tmp_path)],
                   check=True, capture_output=True)
    ds = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(tmp_path)], global_batch_size=4, test_set_mode=True,
                                           epochs_per_iter=1, rank=0, num_replicas=1), split="test")
    evaluator = evaluator_class(str(tmp_path), ds.metadata)
    batches = []
    for _, batch, _ in ds:  # 10 puzzles in batches of 4: the last one holds 2 padding rows
        preds = torch.where(batch["labels"] == -100, 0, batch["labels"])
        preds[0] = batch["inputs"][0]  # the first row of each batch left unsolved
        batches.append((batch, {"preds": preds}))
    result = run(evaluator, batches)
    name = evaluator_class.name
    assert (result[f"{name}/count"], result[f"{name}/exact_accuracy"], result[f"{name}/valid_accuracy"]) == \
        (10, pytest.approx(0.7), pytest.approx(0.7))
