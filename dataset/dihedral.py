"""The 8 symmetries of the square, the augmentation of the Maze, custom and ARC datasets, in the reference's order
(ARC augment names store the id as `t<k>`): identity, rot90, rot180, rot270, flip left-right, flip up-down,
transpose, anti-transpose."""
import numpy as np


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id {tid} is out of range; use 0..7")


DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


def dihedral_transform_batch(grids: np.ndarray, tid: int) -> np.ndarray:
    """`dihedral_transform` applied to the last two axes of a stack of grids."""
    if tid in (1, 2, 3):
        return np.rot90(grids, k=tid, axes=(-2, -1))
    if tid == 4:
        return np.flip(grids, axis=-1)
    if tid == 5:
        return np.flip(grids, axis=-2)
    if tid == 6:
        return np.swapaxes(grids, -2, -1)
    if tid == 7:
        return np.flip(np.rot90(grids, k=1, axes=(-2, -1)), axis=-1)
    return dihedral_transform(grids, tid)  # identity, or the out-of-range error


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])
