"""The ARC grid codec (docs/dataset_format.md#arc): a grid of colours 0-9 (at most 30x30) on a flat 30x30 canvas with 0 = pad,
1 = end-of-grid marker (row below and column right of the grid) and colours -> 2..11; back from a predicted
canvas to a grid; and the augmentation names `name|||t<k>|||<colour map digits>` with the grids they describe.
Used by the ARC builder, the ARC evaluator, inference and the pictures."""
import hashlib
from typing import List, Sequence, Tuple

import numpy as np

from dataset.dihedral import dihedral_transform, inverse_dihedral_transform
from utils.errors import UserError

GRID_SIZE = 30
PAD_ID, EOS_ID, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 10 + COLOUR_OFFSET
SEQ_LEN = GRID_SIZE * GRID_SIZE
NAME_SEPARATOR = "|||"


def to_grid(value, where: str) -> np.ndarray:
    """Validate one ARC grid (list of equal-length rows of ints 0-9, at most 30x30) and return it as uint8."""
    try:
        arr = np.array(value)
    except ValueError:
        raise UserError(f"{where}: grid rows have different lengths; each grid must be a rectangular list of rows") from None
    if arr.ndim != 2 or arr.size == 0:
        raise UserError(f"{where}: not a non-empty 2-D grid (expected a list of equal-length rows of colours 0-9)")
    if arr.dtype.kind not in "iu":
        raise UserError(f"{where}: grid cells must be integers 0-9, found dtype {arr.dtype}")
    if arr.shape[0] > GRID_SIZE or arr.shape[1] > GRID_SIZE:
        raise UserError(f"{where}: grid is {arr.shape[0]}x{arr.shape[1]}, larger than {GRID_SIZE}x{GRID_SIZE}; ARC grids must fit 30x30")
    bad = arr[(arr < 0) | (arr > 9)]
    if bad.size:
        raise UserError(f"{where}: colour {int(bad[0])} outside 0-9")
    return arr.astype(np.uint8)


def encode_grid(grid: np.ndarray, row_offset: int = 0, col_offset: int = 0) -> np.ndarray:
    """One grid -> flat 30x30 canvas with colours + 2 at the offset and end markers below and right of it."""
    h, w = grid.shape
    canvas = np.full((GRID_SIZE, GRID_SIZE), PAD_ID, dtype=np.uint8)
    canvas[row_offset:row_offset + h, col_offset:col_offset + w] = grid + COLOUR_OFFSET
    if row_offset + h < GRID_SIZE:
        canvas[row_offset + h, col_offset:col_offset + w] = EOS_ID
    if col_offset + w < GRID_SIZE:
        canvas[row_offset:row_offset + h, col_offset + w] = EOS_ID
    return canvas.reshape(-1)


def crop_sizes(seqs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Height and width of the largest top-left rectangle holding only colour tokens, for [B, 900] sequences."""
    grids = np.asarray(seqs).reshape(-1, GRID_SIZE, GRID_SIZE)
    is_colour = (grids >= COLOUR_OFFSET) & (grids < VOCAB_SIZE)
    # Colour run from the left edge of each row, then the running minimum down the rows: the widest rectangle
    # of height r+1 has width min(run[0..r]); pick the height with the largest area (first one on ties).
    run = np.where(is_colour.all(-1), GRID_SIZE, np.argmin(is_colour, axis=-1))
    width = np.minimum.accumulate(run, axis=-1)
    area = width * np.arange(1, GRID_SIZE + 1)
    best = np.argmax(area, axis=-1)
    height = np.where(area.max(-1) > 0, best + 1, 0)
    return height, width[np.arange(len(grids)), best] * (height > 0)


def crop_grid(seq: np.ndarray) -> np.ndarray:
    """Decode one predicted/encoded 900-token sequence back to a grid of colours 0-9 (top-left, no translation)."""
    h, w = crop_sizes(seq[None])
    return (np.asarray(seq).reshape(GRID_SIZE, GRID_SIZE)[:h[0], :w[0]] - COLOUR_OFFSET).astype(np.uint8)


def grid_hash(grid: np.ndarray) -> str:
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()


def augment_name(name: str, tid: int, colour_map: Sequence[int]) -> str:
    return f"{name}{NAME_SEPARATOR}t{tid}{NAME_SEPARATOR}{''.join(str(int(c)) for c in colour_map)}"


def augment_names(name: str, tids: np.ndarray, colour_maps: np.ndarray) -> List[str]:
    """`augment_name` for many augmentations at once: all colour maps become digit strings in one decode
    (a million names one digit at a time took seconds)."""
    digits = (np.asarray(colour_maps, dtype=np.uint8) + ord("0")).tobytes().decode("ascii")
    width = np.shape(colour_maps)[1]
    return [f"{name}{NAME_SEPARATOR}t{tid}{NAME_SEPARATOR}{digits[i * width:(i + 1) * width]}"
            for i, tid in enumerate(np.asarray(tids).tolist())]


def parse_augment_name(name: str) -> Tuple[str, int, np.ndarray]:
    """`name|||t<k>|||<map>` -> (original name, dihedral id, colour map); an unaugmented name maps to identity."""
    if NAME_SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.uint8)
    original, tid, colour_map = name.split(NAME_SEPARATOR)
    return original, int(tid[1:]), np.array([int(c) for c in colour_map], dtype=np.uint8)


def augment_grid(grid: np.ndarray, tid: int, colour_map: np.ndarray) -> np.ndarray:
    return dihedral_transform(colour_map[grid], tid)


def inverse_augment_grid(grid: np.ndarray, tid: int, colour_map: np.ndarray) -> np.ndarray:
    return np.argsort(colour_map).astype(np.uint8)[inverse_dihedral_transform(grid, tid)]
