"""Check a dataset directory against the on-disk format (docs/dataset_format.md); exit 2 with the first problem found.

    python -m dataset.validate data/sudoku-extreme-1k-aug-1000

Checks identifiers.json, both splits' dataset.json, every set's five arrays (shapes, integer dtypes,
indices starting at 0, strictly increasing and ending at the next level's length, identifiers in range),
token values within the vocabulary (labels may also hold ignore_label_id), the metadata totals, and that
train and test agree on seq_len, vocab_size and num_puzzle_identifiers. Large arrays are read in chunks.
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dataset.format import SET_FIELDS, SPLITS, PuzzleDatasetMetadata, read_metadata, set_array_path
from dataset.text import check_text_dataset, is_text_dataset
from utils.errors import UserError, user_errors

CHUNK_ROWS = 1 << 16


def _check_indices(where: str, idx: np.ndarray, end: int, what: str) -> None:
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise UserError(f"{where}: expected a 1-D integer array, got {idx.dtype} {idx.shape}")
    if len(idx) == 0 or idx[0] != 0:
        raise UserError(f"{where}: must start at 0")
    steps = np.diff(idx.astype(np.int64))
    if (steps <= 0).any():
        at = int(np.flatnonzero(steps <= 0)[0])
        raise UserError(f"{where}: not strictly increasing at position {at + 1} ({idx[at]} -> {idx[at + 1]})")
    if idx[-1] != end:
        raise UserError(f"{where}: ends at {idx[-1]} but there are {end} {what}")


def _check_values(where: str, array: np.ndarray, vocab_size: int, allowed_extra=None) -> None:
    for start in range(0, len(array), CHUNK_ROWS):
        chunk = np.asarray(array[start:start + CHUNK_ROWS]).astype(np.int64)
        bad = (chunk < 0) | (chunk >= vocab_size)
        if allowed_extra is not None:
            bad &= chunk != allowed_extra
        if bad.any():
            row, col = np.argwhere(bad)[0]
            extra = "" if allowed_extra is None else f" or ignore_label_id {allowed_extra}"
            raise UserError(f"{where}: value {chunk[row, col]} at row {start + row}, position {col} is outside [0, {vocab_size}){extra}")


def check_set(split_dir: Path, name: str, meta: PuzzleDatasetMetadata) -> Dict[str, int]:
    arrays, paths = {}, {field: set_array_path(split_dir, name, field) for field in SET_FIELDS}
    for field, path in paths.items():
        if not path.is_file():
            raise UserError(f"{path}: missing (set '{name}' is listed in dataset.json)")
        try:
            arrays[field] = np.load(path, mmap_mode="r" if field in ("inputs", "labels") else None)
        except (ValueError, OSError) as e:
            raise UserError(f"{path}: not a readable .npy array ({e})") from None
    inputs, labels = arrays["inputs"], arrays["labels"]
    if inputs.ndim != 2 or inputs.shape[1] != meta.seq_len:
        raise UserError(f"{paths['inputs']}: shape {inputs.shape}, expected [examples, seq_len={meta.seq_len}]")
    if labels.shape != inputs.shape:
        raise UserError(f"{paths['labels']}: shape {labels.shape} differs from inputs {inputs.shape}")
    for field in ("inputs", "labels"):
        if arrays[field].dtype.kind not in "iu":
            raise UserError(f"{paths[field]}: dtype {arrays[field].dtype} is not an integer type")
    _check_indices(str(paths["puzzle_indices"]), arrays["puzzle_indices"], len(inputs), "examples")
    num_puzzles = len(arrays["puzzle_indices"]) - 1
    ids = arrays["puzzle_identifiers"]
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) != num_puzzles:
        raise UserError(f"{paths['puzzle_identifiers']}: expected {num_puzzles} integer ids (one per puzzle), got {ids.dtype} {ids.shape}")
    if len(ids) and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        raise UserError(f"{paths['puzzle_identifiers']}: ids span [{ids.min()}, {ids.max()}] outside [0, num_puzzle_identifiers={meta.num_puzzle_identifiers})")
    _check_indices(str(paths["group_indices"]), arrays["group_indices"], num_puzzles, "puzzles")
    _check_values(str(paths["inputs"]), inputs, meta.vocab_size)
    ignore = meta.ignore_label_id if meta.ignore_label_id is not None and not 0 <= meta.ignore_label_id < meta.vocab_size else None
    _check_values(str(paths["labels"]), labels, meta.vocab_size, ignore)
    return {"examples": len(inputs), "puzzles": num_puzzles, "groups": len(arrays["group_indices"]) - 1}


def check_split(split_dir: Path, num_identifiers: Optional[int],
                set_sizes: Optional[Dict[str, Dict[str, int]]] = None) -> PuzzleDatasetMetadata:
    """`num_identifiers`: the length of identifiers.json (None: not checked). `set_sizes` receives each set's
    examples, puzzles and groups."""
    if not split_dir.is_dir():
        raise UserError(f"missing split: {split_dir} does not exist")
    try:
        meta = read_metadata(split_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    where = f"{split_dir}/dataset.json"
    if meta.seq_len <= 0 or meta.vocab_size <= 0:
        raise UserError(f"{where}: seq_len and vocab_size must be positive")
    if not 0 <= meta.pad_id < meta.vocab_size:
        raise UserError(f"{where}: pad_id {meta.pad_id} outside [0, vocab_size={meta.vocab_size})")
    if num_identifiers is not None and meta.num_puzzle_identifiers != num_identifiers:
        raise UserError(f"{where}: num_puzzle_identifiers {meta.num_puzzle_identifiers} but identifiers.json lists {num_identifiers}")
    if not 0 <= meta.blank_identifier_id < meta.num_puzzle_identifiers:
        raise UserError(f"{where}: blank_identifier_id {meta.blank_identifier_id} outside [0, {meta.num_puzzle_identifiers})")
    if not meta.sets or len(set(meta.sets)) != len(meta.sets):
        raise UserError(f"{where}: sets {meta.sets} must be a non-empty list of distinct names")
    totals = {"examples": 0, "puzzles": 0, "groups": 0}
    for name in meta.sets:
        sizes = check_set(split_dir, name, meta)
        if set_sizes is not None:
            set_sizes[name] = sizes
        for key, value in sizes.items():
            totals[key] += value
    if meta.total_groups != totals["groups"]:
        raise UserError(f"{where}: total_groups {meta.total_groups} but the sets hold {totals['groups']} groups")
    # The reference Sudoku and Maze builders store the group count as total_puzzles (each puzzle has one example).
    reference_quirk = meta.total_puzzles == totals["groups"] and totals["examples"] == totals["puzzles"]
    if meta.total_puzzles != totals["puzzles"] and not reference_quirk:
        raise UserError(f"{where}: total_puzzles {meta.total_puzzles} but the sets hold {totals['puzzles']} puzzles")
    mean = totals["examples"] / max(totals["puzzles"], 1)
    if not math.isclose(meta.mean_puzzle_examples, mean, rel_tol=1e-6):
        raise UserError(f"{where}: mean_puzzle_examples {meta.mean_puzzle_examples} but the sets hold {mean:.6g} examples per puzzle")
    return meta


def identifier_count(root: Path, required: bool = True) -> Optional[int]:
    """The number of names in identifiers.json (None when it is absent and not `required`)."""
    ids_path = root / "identifiers.json"
    if not ids_path.is_file():
        if not required:
            return None
        raise UserError(f"{ids_path} is missing; every dataset lists its puzzle identifiers (at least [\"<blank>\"])")
    try:
        identifiers = json.loads(ids_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{ids_path}: not valid JSON ({e})") from None
    if not isinstance(identifiers, list) or not identifiers or not all(isinstance(n, str) for n in identifiers):
        raise UserError(f"{ids_path}: expected a non-empty list of names, index 0 = \"<blank>\"")
    return len(identifiers)


def check_dataset(directory, splits=SPLITS, identifiers_required: bool = True,
                  set_sizes: Optional[Dict[str, Dict[str, Dict[str, int]]]] = None) -> Dict[str, PuzzleDatasetMetadata]:
    """Check `splits` of one dataset, reading every array once (time proportional to the data). `set_sizes`
    receives {split: {set: sizes}}."""
    root = Path(directory)
    if root.is_file():
        raise UserError(f"{root} is a file, not a dataset directory: give the directory holding train/ and test/")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the dataset's output dir (holding train/ and test/)")
    text = is_text_dataset(root)  # text datasets from before identifiers.json was written lack it
    count = identifier_count(root, identifiers_required and not text)
    metas = {}
    for split in splits:
        sizes = {} if set_sizes is None else set_sizes.setdefault(split, {})
        metas[split] = check_split(root / split, count, sizes)
    for key in ("seq_len", "vocab_size", "num_puzzle_identifiers"):
        if len(metas) == 2 and getattr(metas["train"], key) != getattr(metas["test"], key):
            raise UserError(f"{root}: train and test disagree on {key} ({getattr(metas['train'], key)} vs {getattr(metas['test'], key)})")
    if text:
        check_text_dataset(root, metas)
    test_puzzles = root / "test_puzzles.json"
    if "test" in metas and test_puzzles.exists():
        try:
            json.loads(test_puzzles.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{test_puzzles}: not valid JSON ({e})") from None
    return metas


def validate(directory) -> Dict[str, PuzzleDatasetMetadata]:
    return check_dataset(directory)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    args = p.parse_args(argv)
    metas = validate(args.directory)
    print(f"ok: {args.directory}: " + "; ".join(
        f"{split} {m.total_groups} groups / {m.total_puzzles} puzzles, seq_len {m.seq_len}, vocab {m.vocab_size}"
        for split, m in metas.items()))


if __name__ == "__main__":
    user_errors(main)()
