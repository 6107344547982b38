"""Independent solution checkers for Sudoku and Maze (no code shared with the generators).

Sudoku grids are digits with 0 = blank (pass `tokens=True` for the on-disk encoding digit+1, blank 1).
Mazes are strings/char arrays over "# SGo", or token ids 1..5 of the on-disk encoding.
"""
from collections import deque
from typing import Tuple

import numpy as np

MAZE_CHARSET = "# SGo"


def sudoku_box_shape(size: int) -> Tuple[int, int]:
    """Boxes are as square as possible with more columns than rows (6 -> 2 x 3)."""
    rows = max(r for r in range(1, int(size ** 0.5) + 1) if size % r == 0)
    return rows, size // rows


def _as_boards(grids, tokens: bool) -> np.ndarray:
    """[B, n*n] or [B, n, n] -> [B, n, n]."""
    a = np.asarray(grids, dtype=np.int16)
    if tokens:
        a = a - 1
    if a.ndim == 2:
        side = int(round(a.shape[1] ** 0.5))
        if side * side != a.shape[1]:
            raise ValueError(f"a flat Sudoku has n*n cells, got {a.shape[1]}")
        a = a.reshape(-1, side, side)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected Sudoku boards [B, n*n] or [B, n, n], got shape {a.shape}")
    return a


def valid_sudoku_solutions(puzzles, solutions, tokens: bool = False) -> np.ndarray:
    """Boolean per row of a batch ([B, n*n] or [B, n, n]): the solution is a complete valid grid
    agreeing with every clue of the puzzle."""
    p, s = _as_boards(puzzles, tokens), _as_boards(solutions, tokens)
    if p.shape != s.shape:
        return np.zeros(max(len(p), len(s)), dtype=bool)
    b, n, _ = s.shape
    br, bc = sudoku_box_shape(n)
    boxes = s.reshape(b, n // br, br, n // bc, bc).transpose(0, 1, 3, 2, 4).reshape(b, n, n)
    target = np.arange(1, n + 1)
    ok = np.ones(b, dtype=bool)
    for units in (s, s.transpose(0, 2, 1), boxes):
        ok &= (np.sort(units, axis=-1) == target).all(axis=(1, 2))
    ok &= ((p == 0) | (p == s)).all(axis=(1, 2))
    return ok


def is_valid_sudoku_solution(puzzle, solution, tokens: bool = False) -> bool:
    """One puzzle and solution, flat [n*n] or [n, n]."""
    return bool(valid_sudoku_solutions(np.asarray(puzzle)[None], np.asarray(solution)[None], tokens)[0])


def _as_char_grid(maze) -> np.ndarray:
    if isinstance(maze, str):
        side = int(round(len(maze) ** 0.5))
        if side * side != len(maze):
            raise ValueError(f"maze string of length {len(maze)} is not square")
        return np.array(list(maze)).reshape(side, side)
    a = np.asarray(maze)
    if a.dtype.kind in "iu":
        # Tokens 1..5 are "# SGo"; anything else (pad 0, out of range) becomes "?", which no check accepts.
        chars = np.array(["?"] + list(MAZE_CHARSET))
        a = chars[np.where((a >= 1) & (a <= len(MAZE_CHARSET)), a, 0)]
    if a.ndim == 1:
        side = int(round(len(a) ** 0.5))
        a = a.reshape(side, side)
    return a


def _bfs(open_cells: np.ndarray, start: Tuple[int, int]) -> np.ndarray:
    dist = np.full(open_cells.shape, -1, dtype=np.int64)
    dist[start] = 0
    queue = deque([start])
    h, w = open_cells.shape
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and open_cells[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def is_valid_maze_path(maze, solution) -> bool:
    """The solution is the maze with exactly one shortest S->G path marked 'o' (S and G kept)."""
    m, s = _as_char_grid(maze), _as_char_grid(solution)
    if m.shape != s.shape or (m == "o").any():
        return False
    starts, goals = np.argwhere(m == "S"), np.argwhere(m == "G")
    if len(starts) != 1 or len(goals) != 1:
        return False
    marked = s == "o"
    if not (s[~marked] == m[~marked]).all() or not (m[marked] == " ").all():
        return False
    start, goal = tuple(starts[0]), tuple(goals[0])
    shortest = _bfs(m != "#", start)[goal]
    if shortest < 0:
        return False
    # A connected S..G walk through the marked cells, with exactly shortest-1 of them, is a shortest path.
    along_path = _bfs(marked | (s == "S") | (s == "G"), start)[goal]
    return along_path == shortest and int(marked.sum()) == shortest - 1
