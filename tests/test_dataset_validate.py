import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dataset import build_maze_dataset
from dataset.validate import validate
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "d"
    build_maze_dataset.main(["--generate", "4", "--generate-test", "2", "--size", "7", "--aug", "--output-dir", str(out)])
    return out


def edit_meta(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def edit_array(path, change):
    a = np.load(path)
    np.save(path, change(a))


def test_a_built_dataset_passes(dataset):
    assert validate(dataset)["train"].total_puzzles == 32


def test_reference_sudoku_maze_quirk_total_puzzles_equals_groups_is_accepted(dataset):
    edit_meta(dataset / "train" / "dataset.json", total_puzzles=4)
    validate(dataset)


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: edit_meta(d / "train" / "dataset.json", total_groups=5), "total_groups 5 but the sets hold 4"),
    (lambda d: edit_meta(d / "train" / "dataset.json", total_puzzles=31), "total_puzzles 31 but the sets hold 32"),
    (lambda d: edit_meta(d / "train" / "dataset.json", mean_puzzle_examples=2.0), "mean_puzzle_examples 2.0"),
    (lambda d: edit_meta(d / "test" / "dataset.json", seq_len=50), r"test/all__inputs.npy: shape \(2, 49\)"),
    (lambda d: edit_meta(d / "train" / "dataset.json", num_puzzle_identifiers=3), "identifiers.json lists 1"),
    (lambda d: edit_meta(d / "train" / "dataset.json", sets=["all", "extra"]), "extra__inputs.npy: missing"),
    (lambda d: edit_meta(d / "train" / "dataset.json", vocab_size=5), "value 5 at row .* outside \\[0, 5\\)"),
    (lambda d: edit_meta(d / "train" / "dataset.json", vocab_size=7), "train and test disagree on vocab_size"),
    (lambda d: (d / "train" / "dataset.json").write_text("{}"), "not valid dataset metadata"),
    (lambda d: edit_array(d / "train" / "all__puzzle_indices.npy", lambda a: a[[0, 2, 1, *range(3, len(a))]]),
     r"puzzle_indices.npy: not strictly increasing at position 2 \(2 -> 1\)"),
    (lambda d: edit_array(d / "train" / "all__group_indices.npy", lambda a: a[:-1]), "group_indices.npy: ends at 24 but there are 32 puzzles"),
    (lambda d: edit_array(d / "train" / "all__puzzle_identifiers.npy", lambda a: a + 1), "ids span \\[1, 1\\]"),
    (lambda d: edit_array(d / "train" / "all__labels.npy", lambda a: a[:, :-1]), "labels.npy: shape"),
    (lambda d: edit_array(d / "train" / "all__labels.npy", lambda a: np.where(a == 5, 9, a)), "labels.npy: value 9"),
    (lambda d: edit_array(d / "train" / "all__inputs.npy", lambda a: a.astype(np.float32)), "dtype float32"),
    (lambda d: [p.unlink() for p in (d / "test").iterdir()] and (d / "test").rmdir(), "missing split: .*test"),
    (lambda d: (d / "identifiers.json").unlink(), "identifiers.json is missing"),
])
def test_each_corruption_is_reported(dataset, corrupt, message):
    corrupt(dataset)
    with pytest.raises(UserError, match=message):
        validate(dataset)


def test_labels_may_hold_an_out_of_vocab_ignore_label(dataset):
    edit_meta(dataset / "train" / "dataset.json", ignore_label_id=-100)
    edit_array(dataset / "train" / "all__labels.npy", lambda a: np.where(a == 1, -100, a.astype(np.int32)))
    validate(dataset)


def test_cli_exit_codes(dataset):
    ok = subprocess.run([sys.executable, "-m", "dataset.validate", str(dataset)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    edit_meta(dataset / "test" / "dataset.json", total_groups=9)
    bad = subprocess.run([sys.executable, "dataset/validate.py", str(dataset)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "total_groups 9" in bad.stderr
