import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dataset.arc_codec import (augment_grid, augment_name, crop_grid, encode_grid, grid_hash, inverse_augment_grid,
                               parse_augment_name)
from dataset.build_arc_dataset import build, main
from dataset.format import read_metadata, set_array_path
from tests.helpers import read_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARC_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "arc-agi")  # the team's ../shared beside the checkout
needs_arc = pytest.mark.skipif(not os.path.isfile(f"{ARC_DIR}/arc-agi_training_challenges.json"), reason="ARC data not present")


def write_subset(prefix, subset, puzzles, solutions=None):
    with open(f"{prefix}_{subset}_challenges.json", "w") as f:
        json.dump(puzzles, f)
    if solutions is not None:
        with open(f"{prefix}_{subset}_solutions.json", "w") as f:
            json.dump(solutions, f)


def real_subset(tmp_path, subset, count):
    """The first `count` real puzzles of a subset, written as a small Kaggle-layout file pair."""
    with open(f"{ARC_DIR}/arc-agi_{subset}_challenges.json") as f:
        challenges = json.load(f)
    with open(f"{ARC_DIR}/arc-agi_{subset}_solutions.json") as f:
        solutions = json.load(f)
    names = list(challenges)[:count]
    write_subset(str(tmp_path / "arc"), subset, {n: challenges[n] for n in names}, {n: solutions[n] for n in names})
    for n in names:
        for example, sol in zip(challenges[n]["test"], solutions[n]):
            example["output"] = sol
    return {n: challenges[n] for n in names}


def decode_translated(seq):
    """Independent decoder: the bounding box of the colour tokens, wherever it sits on the canvas."""
    grid = np.asarray(seq).reshape(30, 30)
    rows, cols = np.nonzero(grid >= 2)
    return (grid[rows.min():rows.max() + 1, cols.min():cols.max() + 1] - 2).astype(np.uint8), (int(rows.min()), int(cols.min()))


def test_encode_and_crop_hand_values():
    grid = np.array([[0, 9], [3, 4], [5, 6]], dtype=np.uint8)
    seq = encode_grid(grid).reshape(30, 30)
    assert seq[:3, :2].tolist() == [[2, 11], [5, 6], [7, 8]]
    assert seq[3, :2].tolist() == [1, 1] and seq[:3, 2].tolist() == [1, 1, 1]
    assert seq[3, 2] == 0 and seq[4:].sum() == 0 and seq[:, 3:].sum() == 0  # corner not marked, rest padded
    assert crop_grid(seq.reshape(-1)).tolist() == grid.tolist()
    full = np.full((30, 30), 7, dtype=np.uint8)
    assert crop_grid(encode_grid(full)).tolist() == full.tolist()  # no end markers fit
    # Largest top-left rectangle: a ragged prediction [3 wide, 1 wide, 1 wide] -> 3x1 (area 3) beats 1x3 only on ties,
    # so make the column taller: widths 3, 1, 1, 1 -> best is 4 rows x 1 col.
    pred = np.zeros((30, 30), dtype=np.uint8)
    pred[0, :3] = 5
    pred[1:4, 0] = 6
    assert crop_grid(pred.reshape(-1)).tolist() == [[3], [4], [4], [4]]
    assert crop_grid(np.zeros(900, dtype=np.uint8)).shape == (0, 0)


def test_augmentations_bijective_and_inverse():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 10, size=(4, 7)).astype(np.uint8)
    seen = set()
    for tid in range(8):
        colour_map = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        name = augment_name("abc", tid, colour_map)
        original, tid2, map2 = parse_augment_name(name)
        assert (original, tid2, map2.tolist()) == ("abc", tid, colour_map.tolist())
        augmented = augment_grid(grid, tid, colour_map)
        assert sorted(np.unique(augmented, return_counts=True)[1]) == sorted(np.unique(grid, return_counts=True)[1])
        assert inverse_augment_grid(augmented, tid, colour_map).tolist() == grid.tolist()
        seen.add(grid_hash(augment_grid(grid, tid, np.arange(10, dtype=np.uint8))))
    assert len(seen) == 8  # the 8 transforms are distinct on a generic grid
    assert parse_augment_name("abc")[0] == "abc"


@needs_arc
def test_build_round_trip_real_tasks(tmp_path):
    train = real_subset(tmp_path, "training", 3)
    evaluation = real_subset(tmp_path, "evaluation", 2)
    out = tmp_path / "out"
    num_aug = 6
    build(str(tmp_path / "arc"), str(out), ["training", "evaluation"], "evaluation", num_aug=num_aug, seed=1, progress=False)

    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(names) == 1 + 5 * (num_aug + 1)
    assert json.loads((out / "test_puzzles.json").read_text()) == evaluation
    originals = {**train, **evaluation}

    for split in ("train", "test"):
        meta = read_metadata(out / split)
        assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id, meta.blank_identifier_id) == (900, 12, 0, 0, 0)
        assert meta.num_puzzle_identifiers == len(names)
        data = read_set(out / split, "all")
        assert data["inputs"].dtype == np.uint8 and data["inputs"].shape[1] == 900
        assert data["puzzle_indices"][-1] == len(data["inputs"]) and data["group_indices"][-1] == len(data["puzzle_identifiers"])
        assert meta.total_groups == len(data["group_indices"]) - 1 == (5 if split == "train" else 2)

        for g in range(meta.total_groups):
            group_names = set()
            puzzles = range(data["group_indices"][g], data["group_indices"][g + 1])
            for p in puzzles:
                name = names[data["puzzle_identifiers"][p]]
                original, tid, colour_map = parse_augment_name(name)
                group_names.add(original)
                puzzle = originals[original]
                expected = puzzle["train"] + puzzle["test"] if (split == "train" and original in train) else \
                    puzzle["train"] if split == "train" else puzzle["test"]
                rows = range(data["puzzle_indices"][p], data["puzzle_indices"][p + 1])
                assert len(rows) == len(expected)
                unmoved = 0
                for row, example in zip(rows, expected):
                    decoded = []
                    for seq in (data["inputs"][row], data["labels"][row]):
                        grid, offset = decode_translated(seq)
                        # the full encoding (end markers, padding) equals the reference layout at that offset
                        assert np.array_equal(seq, encode_grid(grid, *offset))
                        decoded.append((grid, offset))
                    (grid_in, off_in), (grid_out, off_out) = decoded
                    assert off_in == off_out  # input and output move together
                    unmoved += off_in == (0, 0)
                    if split == "test":
                        assert off_in == (0, 0)
                    assert inverse_augment_grid(grid_in, tid, colour_map).tolist() == example["input"]
                    assert inverse_augment_grid(grid_out, tid, colour_map).tolist() == example["output"]
                    assert crop_grid(encode_grid(grid_in)).tolist() == grid_in.tolist()
                assert unmoved >= 1
            assert len(group_names) == 1  # a group is one original puzzle
            assert len(puzzles) == num_aug + 1
    # every augment of the same puzzle is distinct content (de-duplicated)
    test = read_set(out / "test", "all")
    first_group = range(test["group_indices"][0], test["group_indices"][1])
    hashes = {grid_hash(crop_grid(test["labels"][test["puzzle_indices"][p]])) + str(crop_grid(test["inputs"][test["puzzle_indices"][p]]).tobytes()) for p in first_group}
    assert len(hashes) == num_aug + 1


def test_build_is_reproducible_and_dedups(tmp_path):
    # One colour on fully symmetric grids: only 9 colourings exist and all dihedral transforms coincide.
    puzzles = {"sym": {"train": [{"input": [[1, 0, 1], [0, 1, 0], [1, 0, 1]], "output": [[1, 1], [1, 1]]}], "test": [{"input": [[1]]}]}}
    write_subset(str(tmp_path / "x"), "ev", puzzles, {"sym": [[[1]]]})
    for out in ("a", "b"):
        build(str(tmp_path / "x"), str(tmp_path / out), ["ev"], "ev", num_aug=50, seed=3, progress=False)
    names = json.loads((tmp_path / "a" / "identifiers.json").read_text())
    assert len(names) == 1 + 1 + 8  # 8 other colours for 1; the transposes/rotations add nothing new
    for split, field in (("train", "inputs"), ("test", "labels")):
        assert np.array_equal(*(np.load(set_array_path(tmp_path / out / split, "all", field)) for out in ("a", "b")))


@pytest.mark.parametrize("case,expected", [
    ("missing", "x_nope_challenges.json: file not found"),
    ("too_big", "puzzle big train example 0 input: grid is 31x2, larger than 30x30"),
    ("colour", "puzzle col test example 0 output: colour 10 outside 0-9"),
    ("ragged", "puzzle rag train example 0 input: grid rows have different lengths"),
    ("solutions", "x_s_solutions.json: puzzle ok: expected 1 solution grids, found none"),
])
def test_bad_input_one_line_and_output_untouched(tmp_path, capsys, case, expected):
    prefix = str(tmp_path / "x")
    ok = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}
    subsets = {"too_big": {"big": {**ok, "train": [{"input": [[1, 2]] * 31, "output": [[1]]}]}},
               "colour": {"col": ok},
               "ragged": {"rag": {**ok, "train": [{"input": [[1, 2], [3]], "output": [[1]]}]}}}
    if case in subsets:
        write_subset(prefix, "s", subsets[case], {k: [[[10]]] if case == "colour" else [[[1]]] for k in subsets[case]})
    elif case == "solutions":
        write_subset(prefix, "s", {"ok": ok}, {"other": [[[1]]]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old dataset")
    with pytest.raises(SystemExit) as stopped:
        main(["--input-file-prefix", prefix, "--output-dir", str(out), "--subsets", "nope" if case == "missing" else "s",
              "--test-set-name", "nope" if case == "missing" else "s", "--num-aug", "2"])
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert os.listdir(out) == ["keep.txt"] and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_runs_as_script_and_module(tmp_path):
    write_subset(str(tmp_path / "x"), "ev", {"p": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]], "output": [[4]]}]}})
    for i, cmd in enumerate(([sys.executable, "dataset/build_arc_dataset.py"], [sys.executable, "-m", "dataset.build_arc_dataset"])):
        out = tmp_path / f"o{i}"
        r = subprocess.run(cmd + ["--input-file-prefix", str(tmp_path / "x"), "--output-dir", str(out), "--subsets", "ev",
                                  "--test-set-name", "ev", "--num-aug", "3"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert read_metadata(out / "test").total_puzzles == 4
