"""Plain puzzles <-> token sequences of the on-disk encodings (docs/dataset_format.md), with one-line errors for bad input.

Sudoku: an n x n list of digits, 0 for blanks. Maze: text lines (or one string with newlines) over "# SG".
ARC: a task dict {"train": [...], "test": [{"input": grid}, ...]}; each test input is one puzzle."""
import json
import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from dataset.arc_codec import GRID_SIZE, encode_grid, to_grid
from dataset.checkers import MAZE_CHARSET
from visualize.decode import decode
from utils.errors import UserError


def _side(seq_len: int) -> int:
    return int(round(seq_len ** 0.5))


def encode_sudoku(grid: Any, seq_len: int) -> np.ndarray:
    n = _side(seq_len)
    try:
        raw = np.array(grid)
    except ValueError:  # ragged rows
        raw = np.array(None)
    if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.isfinite(raw).all()):
        raise UserError(f"Sudoku must be an {n}x{n} list of rows of digits (0 for blanks)")
    board = raw.astype(np.int64)
    if raw.dtype.kind == "f" and (board != raw).any():
        raise UserError(f"Sudoku cell {raw[board != raw][0]:g} is not a whole number: give digits 0-{n} (0 for a blank)")
    if board.shape != (n, n):
        raise UserError(f"Sudoku is {'x'.join(map(str, board.shape)) or 'a scalar'} but this checkpoint solves {n}x{n} "
                        f"boards (seq_len {seq_len}): give {n} rows of {n} digits")
    bad = board[(board < 0) | (board > n)]
    if bad.size:
        raise UserError(f"Sudoku digit {int(bad[0])} outside 0-{n} (0 for a blank) for a {n}x{n} board")
    return (board + 1).reshape(-1)


def maze_lines(maze: Union[str, Sequence[str]]) -> List[str]:
    return maze.strip("\n").split("\n") if isinstance(maze, str) else list(maze)


def encode_maze(maze: Union[str, Sequence[str]], seq_len: int) -> np.ndarray:
    n = _side(seq_len)
    lines = maze_lines(maze)
    if len(lines) != n or any(len(line) != n for line in lines):
        widths = sorted({len(line) for line in lines})
        raise UserError(f"maze has {len(lines)} lines of width {widths} but this checkpoint solves {n}x{n} mazes "
                        f"(seq_len {seq_len}): give {n} lines of {n} characters")
    text = "".join(lines)
    bad = sorted(set(text) - set(MAZE_CHARSET))
    if bad:
        raise UserError(f"maze character {bad[0]!r} is not one of {MAZE_CHARSET!r} (wall '#', open ' ', start 'S', goal 'G')")
    for mark, name in (("S", "start"), ("G", "goal")):
        if text.count(mark) != 1:
            raise UserError(f"maze has {text.count(mark)} {name} cells '{mark}': mark exactly one")
    return np.array([MAZE_CHARSET.index(ch) + 1 for ch in text], dtype=np.int64)


def arc_test_inputs(task: Any) -> List[np.ndarray]:
    """The test input grids of an ARC task dict (a bare grid is taken as one input)."""
    if isinstance(task, dict):
        tests = task.get("test")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, dict) and "input" in t for t in tests):
            raise UserError("ARC task must have a non-empty 'test' list of {'input': grid} entries")
        return [to_grid(t["input"], f"ARC test input {i}") for i, t in enumerate(tests)]
    return [to_grid(task, "ARC grid")]


def encode_arc(grid: np.ndarray, seq_len: int) -> np.ndarray:
    if seq_len != GRID_SIZE * GRID_SIZE:
        raise UserError(f"this checkpoint has seq_len {seq_len}, not an ARC model ({GRID_SIZE * GRID_SIZE})")
    return encode_grid(grid).astype(np.int64)


def read_vocabulary(data_path: str) -> Optional[dict]:
    """vocab.json of a dataset from the custom and arithmetic builders ({"symbols": by token, "grid": [h, w]})."""
    path = os.path.join(data_path, "vocab.json")
    return json.loads(open(path).read()) if os.path.isfile(path) else None


def encode_custom(puzzle: Any, vocab: dict, seq_len: int) -> np.ndarray:
    """A grid (a string, rows of strings, or rows of integers) of the dataset's symbols, on its canvas."""
    from dataset.build_custom_dataset import Vocabulary, to_grid
    symbols, (height, width) = vocab["symbols"], vocab["grid"]
    token = {s: i for i, s in enumerate(symbols) if i}
    token.update({int(s): i for s, i in list(token.items()) if s.isdigit()})  # integer symbols are stored as text
    grid = to_grid(puzzle, "puzzle", Vocabulary(token, symbols, f"the dataset's symbols {''.join(symbols[1:])!r}"))
    if grid.shape[0] > height or grid.shape[1] > width:
        raise UserError(f"puzzle is {grid.shape[0]}x{grid.shape[1]} but this checkpoint's canvas is {height}x{width}")
    canvas = np.zeros((height, width), dtype=np.int64)
    canvas[:grid.shape[0], :grid.shape[1]] = grid
    return canvas.reshape(-1)


def decode_custom(tokens: np.ndarray, vocab: dict) -> List[str]:
    """Token row -> the rows of symbols on the canvas, padding dropped."""
    symbols, (height, width) = vocab["symbols"], vocab["grid"]
    grid = np.asarray(tokens).reshape(height, width)
    return ["".join(symbols[t] for t in row if 0 < t < len(symbols)) for row in grid if (row > 0).any()]


def encode(puzzle: Any, kind: str, seq_len: int, vocab: Optional[dict] = None) -> List[np.ndarray]:
    """One plain puzzle -> token rows (ARC tasks give one row per test input)."""
    if kind == "custom":
        return [encode_custom(puzzle, vocab, seq_len)]
    if kind == "sudoku":
        return [encode_sudoku(puzzle, seq_len)]
    if kind == "maze":
        return [encode_maze(puzzle, seq_len)]
    if kind == "arc":
        return [encode_arc(g, seq_len) for g in arc_test_inputs(puzzle)]
    raise UserError(f"unknown puzzle kind {kind!r}; use one of sudoku, maze, arc, custom")


def decode_answer(tokens: np.ndarray, kind: str, vocab: Optional[dict] = None):
    """Token row -> plain answer: Sudoku digits (list of lists, -1 where no digit), maze lines, ARC colour grid,
    rows of symbols for custom datasets."""
    if kind == "custom":
        return decode_custom(tokens, vocab)
    grid = decode(tokens, kind)
    if kind == "maze":
        return ["".join(row) for row in grid]
    return grid.tolist()
