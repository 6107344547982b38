"""Token sequences -> grids for display (the encodings of docs/dataset_format.md): Sudoku value = digit + 1 (blank 1, pad 0),
maze "# SGo" -> 1..5, ARC 30x30 with pad 0, end marker 1 and colours 2..11."""
import numpy as np

from dataset.arc_codec import COLOUR_OFFSET, GRID_SIZE, crop_sizes
from dataset.checkers import MAZE_CHARSET
from dataset.kinds import KINDS


def _square_side(tokens: np.ndarray, kind: str) -> int:
    side = int(round(tokens.size ** 0.5))
    if side * side != tokens.size:
        raise ValueError(f"{kind} tokens: {tokens.size} cells is not a square grid; pass one puzzle's seq_len tokens")
    return side


def decode(tokens, kind: str) -> np.ndarray:
    """One puzzle's tokens (flat or 2-D) -> 2-D grid. Sudoku: digits, 0 blank, -1 where the token is no digit;
    maze: characters, '?' where the token is no maze character; ARC: colours 0-9 of the top-left grid
    (cropped at the first pad or end marker, possibly 0x0)."""
    a = np.asarray(tokens).astype(np.int64).reshape(-1)
    if kind == "sudoku":
        side = _square_side(a, kind)
        return np.where((a >= 1) & (a <= side + 1), a - 1, -1).reshape(side, side)
    if kind == "maze":
        side = _square_side(a, kind)
        chars = np.array(list("?" + MAZE_CHARSET))
        return chars[np.where((a >= 1) & (a <= len(MAZE_CHARSET)), a, 0)].reshape(side, side)
    if kind == "arc":
        if a.size != GRID_SIZE * GRID_SIZE:
            raise ValueError(f"arc tokens: expected {GRID_SIZE}x{GRID_SIZE} = {GRID_SIZE * GRID_SIZE} cells, got {a.size}")
        h, w = crop_sizes(a[None])
        return a.reshape(GRID_SIZE, GRID_SIZE)[:h[0], :w[0]] - COLOUR_OFFSET
    raise ValueError(f"unknown puzzle kind {kind!r}; use one of {', '.join(KINDS)}")


def wrong_cells(answer: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Cells of a decoded answer that differ from the decoded label (all of them when the shapes differ)."""
    if answer.shape != label.shape:
        return np.ones(answer.shape, dtype=bool)
    return answer != label
