import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dataset import build_arithmetic_dataset as arithmetic
from dataset import build_custom_dataset as custom
from dataset.dihedral import inverse_dihedral_transform
from dataset.format import SPLITS
from dataset.validate import validate
from tests.helpers import read_set
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = [{"input": [[1, 2, 0], [3, 4, 0]], "output": [[4, 3], [2, 1]]},
         {"input": [[5]], "output": [[6, 7], [8, 9]]}]
TEST = [{"input": [[9, 9]], "output": [[0, 0]]}]


def write_json(path, pairs):
    path.write_text(json.dumps(pairs))
    return path


def run(tmp_path, *args):
    out = tmp_path / "out"
    custom.main(["--output-dir", str(out), *map(str, args)])
    return out


def test_json_grids_with_dihedral_round_trip(tmp_path):
    out = run(tmp_path, "--train", write_json(tmp_path / "train.json", TRAIN), "--test", write_json(tmp_path / "test.json", TEST),
              "--num-values", 10, "--dihedral")
    metas = validate(out)
    assert metas["train"].seq_len == 9 and metas["train"].vocab_size == 11  # 3x3 canvas (square for the transposes)
    assert metas["train"].total_groups == 2 and metas["train"].total_puzzles == 16 and metas["test"].total_puzzles == 1
    train = read_set(out / "train", "all")
    labels = np.asarray(train["labels"]).reshape(2, 8, 3, 3)
    original = np.array([[4, 3], [2, 1]]) + 1
    for t in range(8):
        moved = labels[0, t]
        content = moved[:2, :2]  # a 2x2 grid stays in the corner under every transform
        assert (inverse_dihedral_transform(content, t) == original).all()
        assert (moved[2] == 0).all() and (moved[:, 2] == 0).all()
    assert json.loads((out / "vocab.json").read_text())["symbols"][:3] == ["<pad>", "0", "1"]


def test_csv_strings_with_row_separator_and_predicted_padding(tmp_path):
    (tmp_path / "train.csv").write_text("input,output\nab/ba,ba/ab\nabc,cba\n")
    (tmp_path / "test.csv").write_text('input,output\n"[""b"", ""a""]",a/b\n')
    out = run(tmp_path, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv", "--predict-padding")
    metas = validate(out)
    assert metas["train"].ignore_label_id is None and metas["train"].vocab_size == 4 and metas["train"].seq_len == 6
    test = read_set(out / "test", "all")
    assert test["inputs"][0].tolist() == [2, 0, 0, 1, 0, 0]  # 'b' / 'a' in a 2x3 canvas, tokens a=1 b=2 c=3


@pytest.mark.parametrize("train,args,message", [
    ([{"input": [[1] * 31] * 2, "output": [[1]]}], [], "train.json pair 0 input: grid is 2x31; grids larger than 30x30"),
    ([{"input": [[1, 2]], "output": [[12]]}], ["--num-values", 10], "train.json pair 0 output: symbol 12 is outside .*0..9"),
    ([{"input": [[1, 2], [3]], "output": [[1]]}], [], "pair 0 input: grid rows have different lengths"),
    ([{"input": [1, 2]}], [], "train.json pair 0: expected an object with keys"),
    ([{"input": "ab", "output": [1]}], [], "mix characters and integers"),
    ([{"input": [1, 2], "output": [2, 1]}], ["--dihedral"], "--dihedral needs 2-D grids, but .*train.json pair 0 is a sequence"),
])
def test_bad_json_inputs(tmp_path, train, args, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path, "--train", write_json(tmp_path / "train.json", train), "--test", write_json(tmp_path / "test.json", TEST), *args)


def test_bad_csv_row_and_missing_split(tmp_path):
    (tmp_path / "train.csv").write_text("input,output\nab,ba\nabc\n")
    test = write_json(tmp_path / "test.json", [{"input": "a", "output": "b"}])
    with pytest.raises(UserError, match="train.csv row 3: expected 2 columns, got 1"):
        run(tmp_path, "--train", tmp_path / "train.csv", "--test", test)
    with pytest.raises(UserError, match="missing split: .*nope.json"):
        run(tmp_path, "--train", tmp_path / "nope.json", "--test", test)


def decode_rows(tokens, width):
    text = "".join(arithmetic.CHARSET[t - 1] for t in tokens)
    return [text[i:i + width] for i in range(0, len(text), width)]


def test_arithmetic_labels_are_correct_sums(tmp_path):
    out = tmp_path / "add"
    arithmetic.main(["--digits", "5", "--num-train", "200", "--num-test", "50", "--output-dir", str(out)])
    metas = validate(out)
    assert metas["train"].seq_len == 18 and metas["train"].vocab_size == 12
    seen = set()
    for split in SPLITS:
        data = read_set(out / split, "all")
        for x, y in zip(np.asarray(data["inputs"]), np.asarray(data["labels"])):
            a, b, blank = decode_rows(x, 6)
            a2, b2, total = decode_rows(y, 6)
            assert (a, b) == (a2, b2) and blank == " " * 6
            assert int(total) == int(a) + int(b) and total == str(int(a) + int(b)).rjust(6)
            assert (a, b) not in seen
            seen.add((a, b))


@pytest.mark.parametrize("invocation", [["dataset/build_arithmetic_dataset.py"], ["-m", "dataset.build_arithmetic_dataset"]])
def test_arithmetic_both_invocation_styles(tmp_path, invocation):
    out = tmp_path / "a"
    ok = subprocess.run([sys.executable, *invocation, "--digits", "3", "--num-train", "20", "--num-test", "5", "--output-dir", str(out)],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    validate(out)
    bad = subprocess.run([sys.executable, *invocation, "--digits", "1", "--num-train", "500", "--output-dir", str(tmp_path / "b")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "distinct 1-digit additions" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("invocation", [["dataset/build_custom_dataset.py"], ["-m", "dataset.build_custom_dataset"]])
def test_custom_both_invocation_styles(tmp_path, invocation):
    train, test = write_json(tmp_path / "train.json", TRAIN), write_json(tmp_path / "test.json", TEST)
    ok = subprocess.run([sys.executable, *invocation, "--train", str(train), "--test", str(test), "--output-dir", str(tmp_path / "c")],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    validate(tmp_path / "c")
