import csv
import os
import subprocess
import sys
from collections import deque

import numpy as np
import pytest

from dataset import build_maze_dataset as builder
from dataset.checkers import MAZE_CHARSET, is_valid_maze_path
from dataset.dihedral import dihedral_transform, dihedral_transform_batch, inverse_dihedral_transform
from dataset.format import SPLITS
from dataset.generators import maze as gen
from dataset.sources import SOURCE_CSV_COLUMNS
from dataset.validate import validate
from tests.helpers import read_set
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = ["#####",
         "#S  #",
         "# # #",
         "#  G#",
         "#####"]


def distance(grid, blocked=None):
    """Plain BFS S->G on a list of strings, optionally with one cell walled up."""
    h, w = len(grid), len(grid[0])
    cells = {(r, c): grid[r][c] for r in range(h) for c in range(w)}
    start = next(p for p, ch in cells.items() if ch == "S")
    seen, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        if cells[(r, c)] == "G":
            return seen[(r, c)]
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if n in cells and cells[n] != "#" and n != blocked and n not in seen:
                seen[n] = seen[(r, c)] + 1
                queue.append(n)
    return None


def rows(flat, size):
    return [flat[i * size:(i + 1) * size] for i in range(size)]


def test_checker_accepts_shortest_paths_and_rejects_the_rest():
    maze = "".join(SMALL)
    right_then_down = "".join(["#####", "#Soo#", "# #o#", "#  G#", "#####"])
    down_then_right = "".join(["#####", "#S  #", "#o# #", "#ooG#", "#####"])
    assert is_valid_maze_path(maze, right_then_down) and is_valid_maze_path(maze, down_then_right)
    assert not is_valid_maze_path(maze, "".join(["#####", "#Soo#", "# # #", "#  G#", "#####"]))  # broken
    assert not is_valid_maze_path(maze, "".join(["#####", "#Soo#", "#o#o#", "#ooG#", "#####"]))  # both ways
    assert not is_valid_maze_path(maze, "".join(["#####", "#Soo#", "# #o#", "#  G#", "#o###"]))  # over a wall
    assert not is_valid_maze_path(maze, "".join(["#####", "#S  #", "# # #", "#  G#", "#####"]))  # nothing marked
    tokens = np.frombuffer(right_then_down.encode(), np.uint8)
    assert is_valid_maze_path(builder.CHAR_TO_TOKEN[np.frombuffer(maze.encode(), np.uint8)], builder.CHAR_TO_TOKEN[tokens])


@pytest.mark.parametrize("size,count", [(30, 6), (11, 20)])
def test_generated_mazes_have_a_unique_long_shortest_path(size, count):
    for i in range(count):
        m = gen.generate_indexed(size, 4, 0, i)
        grid = rows(m.maze, size)
        assert len(m.maze) == size * size and set(m.maze) <= set("# SG")
        assert m.maze.count("S") == 1 and m.maze.count("G") == 1
        assert is_valid_maze_path(m.maze, m.solution)
        d = distance(grid)
        assert d == m.path_len >= gen.default_min_path_len(size)
        # Unique: walling up any cell of the path makes the trip longer (or impossible).
        path_cells = [divmod(k, size) for k, ch in enumerate(m.solution) if ch == "o"]
        for cell in path_cells:
            detour = distance(grid, blocked=cell)
            assert detour is None or detour > d


def test_dihedral_batch_matches_single_grid_transform_and_inverts():
    grids = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    for t in range(8):
        moved = dihedral_transform_batch(grids, t)
        for k in range(2):
            assert (moved[k] == dihedral_transform(grids[k], t)).all()
            assert (inverse_dihedral_transform(moved[k], t) == grids[k]).all()


def build(tmp_path, *args):
    out = tmp_path / "out"
    builder.main(["--output-dir", str(out), *map(str, args)])
    return out


def all_labels_valid(split_dir):
    data = read_set(split_dir, "all")
    return all(is_valid_maze_path(q, a) for q, a in zip(np.asarray(data["inputs"]), np.asarray(data["labels"])))


def test_generated_build_with_aug_round_trip(tmp_path):
    out = build(tmp_path, "--generate", 6, "--generate-test", 3, "--size", 12, "--aug")
    metas = validate(out)
    assert metas["train"].vocab_size == 6 and metas["train"].seq_len == 144
    assert metas["train"].total_groups == 6 and metas["train"].total_puzzles == 48 and metas["test"].total_puzzles == 3
    assert all_labels_valid(out / "train") and all_labels_valid(out / "test")
    inputs = np.asarray(read_set(out / "train", "all")["inputs"]).reshape(6, 8, 12, 12)
    for t in range(8):
        assert (inverse_dihedral_transform(inputs[0, t], t) == inputs[0, 0]).all()


def write_source(src, mazes):
    src.mkdir(exist_ok=True)
    for split in SPLITS:
        with open(src / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SOURCE_CSV_COLUMNS)
            for q, a in mazes:
                w.writerow(["gen", q, a, 0])


def test_csv_source_round_trip_and_subsample(tmp_path):
    mazes = [(m.maze, m.solution) for m in (gen.generate_indexed(10, 0, 0, i) for i in range(8))]
    write_source(tmp_path / "src", mazes)
    out = build(tmp_path, "--source-dir", tmp_path / "src", "--subsample-size", 3)
    metas = validate(out)
    assert metas["train"].total_groups == 3 and metas["test"].total_groups == 8
    test_inputs = np.asarray(read_set(out / "test", "all")["inputs"])
    assert "".join(MAZE_CHARSET[t - 1] for t in test_inputs[0]) == mazes[0][0]


@pytest.mark.parametrize("question,answer,message", [
    ("".join(SMALL), "".join(SMALL)[:-1], "question/answer have 25/24"),
    ("".join(SMALL), "".join(SMALL).replace("S", "X"), "characters 'X' outside"),
    ("".join(SMALL), "".join(SMALL), "not the maze with one shortest"),
    ("#" * 31 * 31, "#" * 31 * 31, "31x31; grids larger than 30x30"),
])
def test_bad_csv_rows_are_named(tmp_path, question, answer, message):
    write_source(tmp_path / "src", [(question, answer)])
    with pytest.raises(UserError, match=f"train.csv row 2: .*{message}"):
        build(tmp_path, "--source-dir", tmp_path / "src")


@pytest.mark.parametrize("invocation", [["dataset/build_maze_dataset.py"], ["-m", "dataset.build_maze_dataset"]])
def test_both_invocation_styles(tmp_path, invocation):
    out = tmp_path / "m"
    ok = subprocess.run([sys.executable, *invocation, "--generate", "3", "--generate-test", "2", "--size", "9", "--output-dir", str(out)],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "shortest path length" in ok.stdout
    validate(out)
    bad = subprocess.run([sys.executable, *invocation, "--size", "31", "--generate", "1", "--output-dir", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--size 31" in bad.stderr


def test_pad_tokens_on_a_path_are_not_a_valid_path():
    from dataset.checkers import MAZE_CHARSET, is_valid_maze_path
    tokens = lambda s: np.array([MAZE_CHARSET.index(c) + 1 for c in s])
    maze, path = tokens("S  " "## " "G  "), tokens("Soo" "##o" "Goo")
    assert is_valid_maze_path(maze, path)
    padded = path.copy()
    padded[1] = 0
    assert not is_valid_maze_path(maze, padded)
