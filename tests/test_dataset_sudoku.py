import csv
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from dataset import build_sudoku_dataset as builder
from dataset import sources
from dataset.checkers import is_valid_sudoku_solution, valid_sudoku_solutions
from dataset.format import SPLITS, set_array_path
from dataset.generators import sudoku as gen
from dataset.sources import SOURCE_CSV_COLUMNS
from dataset.validate import validate
from tests.helpers import apply_sudoku_augmentations, invert_sudoku_augmentation, read_set
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A well-known 17-clue puzzle (singles solve it), Inkala's "hardest" puzzle (they do not) and an easy one.
SEVENTEEN = [int(c) for c in "000000010400000000020000000000050407008000300001090000300400200050100000000806000"]
HARD = [int(c) for c in "800000000003600000070090200050007000000045700000100030001000068008500010090000400"]
EASY = [int(c) for c in "003020600900305001001806400008102900700000008006708200002609500800203009005010300"]


def board(flat, size=9):
    return np.asarray(flat).reshape(size, size)


@pytest.mark.parametrize("puzzle", [SEVENTEEN, HARD])
def test_solver_finds_the_unique_solution_of_known_puzzles(puzzle):
    solutions, _ = gen.solve(puzzle, limit=2)
    assert len(solutions) == 1
    assert is_valid_sudoku_solution(puzzle, solutions[0])


def test_solution_counter_stops_at_two_and_sees_contradictions():
    assert gen.count_solutions([0] * 81) == 2
    assert gen.count_solutions([0] * 16, size=4) == 2
    clash = [0] * 81
    clash[0] = clash[1] = 5
    assert gen.count_solutions(clash) == 0


def test_singles_and_rating_on_an_easy_puzzle():
    assert gen.solvable_by_singles(EASY)
    assert gen.rating(EASY) == 0
    assert gen.solvable_by_singles(SEVENTEEN)
    assert not gen.solvable_by_singles(HARD) and gen.rating(HARD) > 100


@pytest.mark.parametrize("size,count", [(9, 4), (6, 10), (4, 10)])
def test_generated_puzzles_are_unique_minimal_and_solved(size, count):
    for i in range(count):
        p = gen.generate_indexed((size, 7, 0, i, 0))
        assert gen.count_solutions(p.puzzle, size) == 1
        assert gen.is_minimal(p.puzzle, size)
        assert is_valid_sudoku_solution(p.puzzle, p.solution)
        assert p.rating == gen.rating(p.puzzle, size) and p.singles == gen.solvable_by_singles(p.puzzle, size)


def test_9x9_generator_statistics_on_a_sample():
    sample = [gen.generate_indexed((9, 3, 0, i, 0)) for i in range(60)]
    assert np.mean([p.clues for p in sample]) <= 25
    assert np.mean([not p.singles for p in sample]) >= 0.5
    assert max(p.rating for p in sample) > 10  # the rating spreads, so --min-difficulty can bite


def test_min_rating_is_honoured_and_generation_is_deterministic():
    a = gen.generate(9, random.Random("x"), min_rating=20)
    b = gen.generate(9, random.Random("x"), min_rating=20)
    assert a.rating >= 20 and a.puzzle == b.puzzle


def test_band_permutations_keep_blocks_together():
    rng = np.random.default_rng(0)
    perms = builder._block_permutation(rng, 50, 3, 2)  # 6x6 rows: 3 bands of 2
    assert (np.sort(perms, axis=1) == np.arange(6)).all()
    assert (perms.reshape(50, 3, 2) // 2 == perms.reshape(50, 3, 2)[:, :, :1] // 2).all()


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augmentations_keep_solutions_valid_and_invert(size):
    p = gen.generate_indexed((size, 1, 0, 0, 0))
    q, a = board(p.puzzle, size), board(p.solution, size)
    aug = builder.random_augmentations(np.random.default_rng(1), 64, size)
    q_aug = apply_sudoku_augmentations(np.repeat(q[None], 64, 0), aug)
    a_aug = apply_sudoku_augmentations(np.repeat(a[None], 64, 0), aug)
    assert valid_sudoku_solutions(q_aug, a_aug).all()
    assert ((q_aug > 0).sum(axis=(1, 2)) == (q > 0).sum()).all()
    for k in range(64):
        assert (invert_sudoku_augmentation(a_aug[k], aug, k) == a).all()
        assert (invert_sudoku_augmentation(q_aug[k], aug, k) == q).all()
    assert aug["transpose"].any() == (size != 6)  # 2x3 boxes are never transposed


def test_augmentation_matches_the_reference_cell_mapping():
    rng = np.random.default_rng(5)
    aug = builder.random_augmentations(rng, 1, 9)
    grid = np.arange(81).reshape(9, 9) % 10
    x = grid.T if aug["transpose"][0] else grid
    rows, cols = aug["rows"][0], aug["cols"][0]
    mapping = np.array([rows[i // 9] * 9 + cols[i % 9] for i in range(81)])
    expected = aug["digit_map"][0][x.flatten()[mapping]].reshape(9, 9)
    assert (apply_sudoku_augmentations(grid[None], aug)[0] == expected).all()


def build(tmp_path, *args):
    out = tmp_path / "out"
    builder.main(["--output-dir", str(out), *map(str, args)])
    return out


def labels_are_solutions(split_dir):
    data = read_set(split_dir, "all")
    return valid_sudoku_solutions(np.asarray(data["inputs"]), np.asarray(data["labels"]), tokens=True).all()


def test_generated_build_round_trip(tmp_path):
    out = build(tmp_path, "--generate", 12, "--generate-test", 5, "--size", 9, "--num-aug", 3, "--workers", 1)
    metas = validate(out)
    assert metas["train"].vocab_size == 11 and metas["train"].seq_len == 81
    assert metas["train"].total_groups == 12 and metas["train"].total_puzzles == 48
    assert metas["test"].total_puzzles == 5
    train = read_set(out / "train", "all")
    assert train["inputs"].dtype == np.uint8 and (train["group_indices"] == np.arange(0, 49, 4)).all()
    assert labels_are_solutions(out / "train") and labels_are_solutions(out / "test")
    inputs = np.asarray(train["inputs"]).reshape(12, 4, 81)
    assert ((inputs == 1).sum(-1) == (inputs[:, :1] == 1).sum(-1)).all()  # augments keep the blank count


def test_csv_source_with_difficulty_filter_and_subsample(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = {split: [gen.generate_indexed((4, 0, s, i, 0)) for i in range(30)] for s, split in enumerate(SPLITS)}
    for split, items in rows.items():
        with open(src / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SOURCE_CSV_COLUMNS)
            for i, p in enumerate(items):
                w.writerow(["gen", "".join(str(v) if v else "." for v in p.puzzle), "".join(map(str, p.solution)), i % 3])
    out = build(tmp_path, "--source-dir", src, "--min-difficulty", 1, "--subsample-size", 5, "--num-aug", 2)
    metas = validate(out)
    assert metas["train"].total_groups == 5 and metas["test"].total_groups == 20  # test rows rated 1 or 2
    assert metas["train"].vocab_size == 6 and metas["train"].seq_len == 16
    assert labels_are_solutions(out / "train")


def write_csv(path, lines):
    path.write_text("source,question,answer,rating\n" + "".join(line + "\n" for line in lines))


GOOD_ROW = "x,1..4.4.2..2.2..3,1234341243212143,0"


@pytest.mark.parametrize("bad_row,message", [
    ("x,1..4.4.2..2.2..3,1234341243212143", "test.csv row 3: expected 4 columns"),
    ("x,1..4.4.2..2.2..3,1234341243212143,hard", "test.csv row 3: rating 'hard'"),
    ("x,1..4.4.2..2.2..3,123434124321214,0", "test.csv row 3: question/answer have 16/15"),
    ("x,1..4.4.2..2.2..3,1234341243212149,0", "test.csv row 3: cells must be digits"),
    ("x,1..4.4.2..2.2..3,1234341243212134,0", "test.csv row 3: the answer is not a valid solution"),
])
def test_bad_csv_rows_are_named(tmp_path, bad_row, message):
    src = tmp_path / "src"
    src.mkdir()
    write_csv(src / "train.csv", [GOOD_ROW])
    write_csv(src / "test.csv", [GOOD_ROW, bad_row])
    with pytest.raises(UserError, match=message):
        build(tmp_path, "--source-dir", src)


def test_missing_split_and_unreachable_repo(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    write_csv(src / "train.csv", [GOOD_ROW])
    with pytest.raises(UserError, match="missing split: .*test.csv"):
        build(tmp_path, "--source-dir", src)
    monkeypatch.setattr(sources, "HF_DATASET_URL", "http://127.0.0.1:9/{repo}/{filename}")
    with pytest.raises(UserError, match="cannot download .*--source-dir"):
        build(tmp_path, "--source-repo", "someone/sudoku")


def test_failed_build_leaves_existing_output_untouched(tmp_path):
    out = build(tmp_path, "--generate", 3, "--generate-test", 2, "--size", 4)
    inputs = set_array_path(out / "train", "all", "inputs")
    before = inputs.read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    write_csv(src / "train.csv", [GOOD_ROW])
    write_csv(src / "test.csv", ["x,bad,row,0"])
    with pytest.raises(UserError):
        build(tmp_path, "--source-dir", src)
    assert inputs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


@pytest.mark.parametrize("invocation", [["dataset/build_sudoku_dataset.py"], ["-m", "dataset.build_sudoku_dataset"]])
def test_both_invocation_styles_and_one_line_errors(tmp_path, invocation):
    out = tmp_path / "s"
    ok = subprocess.run([sys.executable, *invocation, "--generate", "20", "--generate-test", "4", "--size", "6",
                         "--num-aug", "2", "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "not solvable by singles" in ok.stdout
    validate(out)
    bad = subprocess.run([sys.executable, *invocation, "--source-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "s2")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr and "nowhere" in bad.stderr


def test_built_dataset_loads_in_the_training_sampler(tmp_path):
    from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
    out = build(tmp_path, "--generate", 10, "--generate-test", 3, "--size", 4, "--num-aug", 4)
    cfg = PuzzleDatasetConfig(seed=0, dataset_paths=[str(out)], global_batch_size=8, test_set_mode=False,
                              epochs_per_iter=1, rank=0, num_replicas=1)
    _, batch, size = next(iter(PuzzleDataset(cfg, split="train")))
    assert size == 8 and batch["inputs"].shape == (8, 16) and str(batch["inputs"].dtype) == "torch.int32"
    assert valid_sudoku_solutions(batch["inputs"].numpy(), batch["labels"].numpy(), tokens=True).all()
