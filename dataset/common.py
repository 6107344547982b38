"""The on-disk puzzle dataset format (SPEC §7): metadata, dihedral transforms, writer and reader."""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pydantic

SET_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


class PuzzleDatasetMetadata(pydantic.BaseModel):
    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: List[str]


# The 8 symmetries of the square in the reference's order (augment names store the id as `t<k>`):
# identity, rot90, rot180, rot270, flip left-right, flip up-down, transpose, anti-transpose.
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


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


def write_split(split_dir: Path, metadata: PuzzleDatasetMetadata, sets: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Write `dataset.json` and `<set>__<field>.npy` for every set into `split_dir`."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for set_name, fields in sets.items():
        for field in SET_FIELDS:
            np.save(split_dir / f"{set_name}__{field}.npy", fields[field])
    (split_dir / "dataset.json").write_text(metadata.model_dump_json(indent=2))


def read_metadata(split_dir) -> PuzzleDatasetMetadata:
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the dataset first (see `python -m dataset.build_sudoku_dataset --help`)")
    try:
        return PuzzleDatasetMetadata.model_validate_json(path.read_text())
    except pydantic.ValidationError as e:
        raise ValueError(f"{path} is not valid dataset metadata: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None


def read_set(split_dir, set_name: str, mmap: bool = True) -> Dict[str, np.ndarray]:
    """Load one set; inputs and labels memory-mapped (they are the large arrays)."""
    split_dir = Path(split_dir)
    return {field: np.load(split_dir / f"{set_name}__{field}.npy",
                           mmap_mode="r" if (mmap and field in ("inputs", "labels")) else None)
            for field in SET_FIELDS}


class AtomicOutputDir:
    """Build into a temporary sibling directory and move it into place only on success,
    so an existing dataset is never left half-written."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)

    def __enter__(self) -> Path:
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.tmp-", dir=self.output_dir.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.output_dir.exists():
            old = self.output_dir.with_name(f".{self.output_dir.name}.old-{os.getpid()}")
            os.replace(self.output_dir, old)
            os.replace(self.tmp, self.output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.output_dir)
        return False
