"""Terminal rendering: ARC grids as ANSI-256 colour blocks, Sudoku digits with box lines and wrong cells
marked '*' (and red), mazes as their character map with the path highlighted."""
import os
import re
import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from dataset.checkers import sudoku_box_shape
from visualize.decode import decode, wrong_cells
from visualize.palette import ARC_ANSI, MAZE_RGB, ansi256

RESET = "\x1b[0m"
_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
_RED, _CLUE, _FILLED, _DIM = "\x1b[1;38;5;196m", "\x1b[1m", "\x1b[38;5;39m", "\x1b[2m"


def use_colour() -> bool:
    """Colour when writing to a terminal, unless NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def visible_width(line: str) -> int:
    return len(_ANSI_CODE.sub("", line))


def _sudoku_lines(answer: np.ndarray, wrong: np.ndarray, clues: np.ndarray, colour: bool) -> list:
    n = len(answer)
    box_rows, box_cols = sudoku_box_shape(n)
    lines = []
    for r in range(n):
        if r and r % box_rows == 0:
            lines.append("+".join(["-" * (2 * box_cols)] + ["-" * (2 * box_cols + 1)] * (n // box_cols - 1)))
        cells = []
        for c in range(n):
            d = answer[r, c]
            text = "." if d == 0 else "?" if d < 0 else str(d)
            if colour:
                style = _RED if wrong[r, c] else _DIM if d == 0 else _CLUE if clues[r, c] else _FILLED
                text = f"{style}{text}{RESET}"
            cells.append(text + ("*" if wrong[r, c] else " "))
            if c % box_cols == box_cols - 1 and c != n - 1:
                cells.append("| ")
        lines.append("".join(cells).rstrip(" "))
    return lines


def _maze_lines(maze: np.ndarray, colour: bool) -> list:
    if not colour:
        return ["".join(row) for row in maze]
    return ["".join(f"\x1b[48;5;{ansi256(MAZE_RGB[ch])}m{' ' if ch in '# ' else ch}{RESET}" for ch in row) for row in maze]


def _arc_lines(grid: np.ndarray, colour: bool) -> list:
    if grid.size == 0:
        return ["(empty)"]
    if not colour:
        return [" ".join(str(v) for v in row) for row in grid]
    return ["".join(f"\x1b[48;5;{ARC_ANSI[v]}m  {RESET}" for v in row) for row in grid]


def render_grid(tokens, kind: str, label=None, puzzle=None, colour: Optional[bool] = None) -> str:
    """One grid as text. Sudoku: `label` marks wrong cells with '*', `puzzle` tells clues (bold) from filled-in
    digits; colour=None picks colour when stdout is a terminal."""
    colour = use_colour() if colour is None else colour
    grid = decode(tokens, kind)
    if kind == "sudoku":
        wrong = wrong_cells(grid, decode(label, kind)) if label is not None else np.zeros(grid.shape, dtype=bool)
        clues = decode(puzzle, kind) > 0 if puzzle is not None else grid > 0
        return "\n".join(_sudoku_lines(grid, wrong, clues, colour))
    if kind == "maze":
        return "\n".join(_maze_lines(grid, colour))
    return "\n".join(_arc_lines(grid, colour))


def side_by_side(blocks: Sequence[Tuple[str, str]], gap: int = 3) -> str:
    """(title, text) blocks next to each other, titles on the first line; ANSI codes take no width."""
    columns = [[title] + text.split("\n") for title, text in blocks]
    widths = [max(visible_width(line) for line in column) for column in columns]
    height = max(len(column) for column in columns)
    lines = []
    for i in range(height):
        parts = [(column[i] if i < len(column) else "") for column in columns]
        padded = [part + " " * (width - visible_width(part)) for part, width in zip(parts, widths)]
        lines.append((" " * gap).join(padded).rstrip())
    return "\n".join(lines)


def render_puzzle_answer(puzzle, answer, kind: str, label=None, step: Optional[int] = None,
                         colour: Optional[bool] = None) -> str:
    """The puzzle, the answer (titled with its supervision step when given) and, when given, the label."""
    blocks = [("puzzle", render_grid(puzzle, kind, colour=colour)),
              ("answer" if step is None else f"step {step}", render_grid(answer, kind, label=label, puzzle=puzzle, colour=colour))]
    if label is not None:
        blocks.append(("label", render_grid(label, kind, puzzle=puzzle, colour=colour)))
    return side_by_side(blocks)
