"""Build the ARC dataset (docs/dataset_format.md#arc) from the Kaggle JSON layout `<prefix>_<subset>_{challenges,solutions}.json`.

Every puzzle is one group: the original plus up to `--num-aug` distinct augmentations (a dihedral transform and a
permutation of colours 1-9), each its own puzzle named `name|||t<k>|||<colour map digits>`. All examples of a
puzzle go to `train`, except the test examples of the test set's puzzles, which go to `test`. Grids are laid out
on a 30x30 canvas: 0 = pad, 1 = end-of-grid marker (row below and column right of the grid), colours 0-9 -> 2..11.
In `train` every example but one per puzzle is translated to a random offset on the canvas.

The work is vectorised per puzzle: all grids of a puzzle are flattened into one vector with a gather index per
dihedral transform, so a thousand augmentations are a couple of numpy fancy-indexing calls, and the encoded
examples are streamed straight into the .npy files (memory stays at one puzzle's worth).
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

if __package__ in (None, ""):  # run as `python dataset/build_arc_dataset.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.arc_codec import (COLOUR_OFFSET, EOS_ID, GRID_SIZE, NAME_SEPARATOR, PAD_ID, SEQ_LEN, VOCAB_SIZE, augment_names, to_grid)
from dataset.dihedral import dihedral_transform
from dataset.format import AtomicOutputDir, PuzzleDatasetMetadata, SplitWriter, add_output_args, check_output_dir
from utils.errors import UserError, user_errors

AUGMENT_TRIES_FACTOR = 5  # candidates drawn per wanted augmentation before giving up (few-colour puzzles run out)


# ---------------------------------------------------------------- reading the Kaggle JSON files

def load_subset(prefix: str, subset: str) -> Tuple[Dict[str, dict], Dict[str, List[Tuple[np.ndarray, np.ndarray]]], Dict[str, List[Tuple[np.ndarray, np.ndarray]]]]:
    """Return (raw puzzles with test outputs filled in, train pairs, test pairs) for one subset, validating every grid."""
    path = f"{prefix}_{subset}_challenges.json"
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found; check --input-file-prefix and --subsets (expects <prefix>_<subset>_challenges.json)")
    try:
        with open(path) as f:
            puzzles = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(puzzles, dict):
        raise UserError(f"{path}: expected an object mapping puzzle ids to puzzles")

    solutions_path = f"{prefix}_{subset}_solutions.json"
    solutions = None
    if os.path.isfile(solutions_path):
        with open(solutions_path) as f:
            solutions = json.load(f)
    else:
        print(f"note: {solutions_path} not found; test outputs are filled with a dummy [[0]] (no test accuracy possible)")

    train_pairs, test_pairs = {}, {}
    for name, puzzle in puzzles.items():
        if NAME_SEPARATOR in name:
            raise UserError(f"{path}: puzzle {name}: the id contains '{NAME_SEPARATOR}', which is reserved for augmentation names")
        if not isinstance(puzzle, dict) or not isinstance(puzzle.get("train"), list) or not isinstance(puzzle.get("test"), list):
            raise UserError(f"{path}: puzzle {name}: expected {{\"train\": [...], \"test\": [...]}}")
        if solutions is not None:
            sols = solutions.get(name)
            if not isinstance(sols, list) or len(sols) != len(puzzle["test"]):
                raise UserError(f"{solutions_path}: puzzle {name}: expected {len(puzzle['test'])} solution grids, found "
                                f"{'none' if sols is None else len(sols) if isinstance(sols, list) else 'a non-list'}")
            for example, sol in zip(puzzle["test"], sols):
                example["output"] = sol
        else:
            for example in puzzle["test"]:
                example.setdefault("output", [[0]])

        for kind, dest in (("train", train_pairs), ("test", test_pairs)):
            pairs = []
            for i, example in enumerate(puzzle[kind]):
                where = f"{path}: puzzle {name} {kind} example {i}"
                if not isinstance(example, dict) or "input" not in example or "output" not in example:
                    raise UserError(f"{where}: expected {{\"input\": grid, \"output\": grid}}")
                pairs.append((to_grid(example["input"], where + " input"), to_grid(example["output"], where + " output")))
            dest[name] = pairs
        if not train_pairs[name]:
            raise UserError(f"{path}: puzzle {name}: has no train examples")
    return puzzles, train_pairs, test_pairs


# ---------------------------------------------------------------- vectorised augmentation and encoding

class FlatPuzzle:
    """All grids of one puzzle (in0, out0, in1, out1, ...) flattened into one vector, with for every dihedral
    transform the gather index into that vector (so the cells of grid j, transformed, are row-major in
    `cells[j]`) and the transformed grids' shapes."""

    def __init__(self, grids: List[np.ndarray]):
        sizes = np.array([g.size for g in grids])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.num_grids = len(grids)
        self.flat = np.concatenate([g.reshape(-1) for g in grids])
        self.cells = [slice(offsets[j], offsets[j + 1]) for j in range(len(grids))]
        self.shapes = np.empty((8, len(grids), 2), dtype=np.int64)
        self.gather = np.empty((8, self.flat.size), dtype=np.int64)
        for tid in range(8):
            for j, g in enumerate(grids):
                index = dihedral_transform(np.arange(g.size).reshape(g.shape), tid)
                self.shapes[tid, j] = index.shape
                self.gather[tid, self.cells[j]] = index.reshape(-1) + offsets[j]
        self.shape_keys = [self.shapes[tid].tobytes() for tid in range(8)]
        self.key_class, self.key_colours = content_key_layout([self.flat[self.gather[tid]] for tid in range(8)], self.shape_keys)

    def content_keys(self, tids: np.ndarray, colour_maps: np.ndarray) -> List[bytes]:
        """One short bytes key per augmentation, equal exactly when the augmented puzzles are (see content_key_layout)."""
        keys = np.concatenate([self.key_class[tids][:, None], np.take_along_axis(colour_maps, self.key_colours[tids], axis=1)],
                              axis=1).astype(np.uint8)
        raw, width = keys.tobytes(), keys.shape[1]
        return [raw[i * width:(i + 1) * width] for i in range(len(keys))]

    def augmented_colours(self, tids: np.ndarray, colour_maps: np.ndarray) -> np.ndarray:
        """[A, cells] uint8: the colours of every augmented puzzle, cells in the transformed grids' row-major order.
        Grouped by transform, each group is one lookup of a shared 1-D cell index into its rows of colour maps,
        which is several times cheaper than a per-row [A, cells] index (take_along_axis)."""
        out = np.empty((len(tids), self.flat.size), dtype=np.uint8)
        for tid, rows in transform_groups(tids):
            out[rows] = colour_maps[rows][:, self.flat[self.gather[tid]]]
        return out


def colour_bijection(a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
    """The one-to-one colour map f (length 10, -1 at colours absent from `a`) with f[a] == b, or None."""
    f = np.full(10, -1)
    f[a] = b
    if not (f[a] == b).all():
        return None  # a colour of `a` meets two colours of `b`
    images = f[f >= 0]
    return f if len(np.unique(images)) == len(images) else None


def content_key_layout(transformed: List[np.ndarray], shape_keys: List[bytes]) -> Tuple[np.ndarray, np.ndarray]:
    """De-duplication keys that need no augmented grids. Transforms whose transformed grids have the same shapes
    and are one colour relabelling f_t of each other form a class, represented by its first transform r. The
    augmentation (t, map m) then shows m(f_t(grids of r)), so two augmentations are equal exactly when they are
    in one class and m(f_t(c)) agrees for every colour c that r's grids use. Returns per transform its class and
    the 10 colours f_t(c) to read from m (padded with colour 0, which every map fixes)."""
    key_class = np.empty(8, dtype=np.int64)
    key_colours = np.zeros((8, 10), dtype=np.int64)
    representatives: List[int] = []
    for tid in range(8):
        for k, rep in enumerate(representatives):
            f = colour_bijection(transformed[rep], transformed[tid]) if shape_keys[rep] == shape_keys[tid] else None
            if f is not None:
                break
        else:
            k, rep, f = len(representatives), tid, np.arange(10)
            representatives.append(tid)
        used = np.unique(transformed[rep])
        key_class[tid] = k
        key_colours[tid, :len(used)] = f[used]
    return key_class, key_colours


def transform_groups(tids: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """(tid, indices of the rows with that dihedral transform) for each transform present, in tid order."""
    return [(int(tid), np.flatnonzero(tids == tid)) for tid in np.unique(tids)]


def random_colour_maps(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, 10] maps fixing colour 0 (background) and permuting 1-9."""
    perms = np.argsort(rng.random((count, 9)), axis=1) + 1
    return np.concatenate([np.zeros((count, 1), dtype=np.int64), perms], axis=1).astype(np.uint8)


def first_new_rows(keys: List[bytes], seen: set, limit: int) -> List[int]:
    """Indices of the first `limit` keys not in `seen` and distinct from each other; adds them to `seen`."""
    picked = []
    for i, key in enumerate(keys):
        if len(picked) >= limit:
            break
        if key not in seen:
            seen.add(key)
            picked.append(i)
    return picked


def select_augmentations(puzzle: FlatPuzzle, num_aug: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw candidate augmentations and keep the first `num_aug` whose content differs from the original and from
    each other (puzzle symmetries and unused colours make many draws duplicates). Row 0 is the original.
    Returns the transform ids, colour maps and the augmented colours (`FlatPuzzle.augmented_colours`) kept."""
    tids, maps = [np.zeros(1, dtype=np.int64)], [np.arange(10, dtype=np.uint8)[None]]
    seen = set(puzzle.content_keys(tids[0], maps[0]))
    kept = 1
    budget = AUGMENT_TRIES_FACTOR * num_aug
    while budget > 0 and kept <= num_aug:
        count = min(budget, max(64, 2 * (num_aug + 1 - kept)))
        budget -= count
        cand_tids = rng.integers(0, 8, size=count)
        cand_maps = random_colour_maps(rng, count)
        rows = first_new_rows(puzzle.content_keys(cand_tids, cand_maps), seen, num_aug + 1 - kept)
        kept += len(rows)
        tids.append(cand_tids[rows])
        maps.append(cand_maps[rows])
    tids, maps = np.concatenate(tids), np.concatenate(maps)
    return tids, maps, puzzle.augmented_colours(tids, maps)


def encode_examples(puzzle: FlatPuzzle, colours: np.ndarray, tids: np.ndarray, example_ids: np.ndarray,
                    translate: bool, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Encode the chosen examples of every augmented puzzle onto 30x30 canvases.
    Returns inputs and labels [A * len(example_ids), 900], puzzle-major, each contiguous. With `translate`, each
    (input, output) pair moves by one random offset that keeps both on the canvas, except one unmoved example
    per puzzle."""
    num_variants, num_examples = len(tids), len(example_ids)
    local_example = np.full(puzzle.num_grids, -1)
    local_example[2 * example_ids] = local_example[2 * example_ids + 1] = np.arange(num_examples)

    row_offset = np.zeros((num_variants, num_examples), dtype=np.int64)
    col_offset = np.zeros((num_variants, num_examples), dtype=np.int64)
    if translate:
        shapes = puzzle.shapes[tids]  # [A, grids, 2]
        max_h = np.maximum(shapes[:, 2 * example_ids, 0], shapes[:, 2 * example_ids + 1, 0])
        max_w = np.maximum(shapes[:, 2 * example_ids, 1], shapes[:, 2 * example_ids + 1, 1])
        row_offset = rng.integers(0, GRID_SIZE - max_h + 1)
        col_offset = rng.integers(0, GRID_SIZE - max_w + 1)
        unmoved = rng.integers(0, num_examples, size=num_variants)
        row_offset[np.arange(num_variants), unmoved] = 0
        col_offset[np.arange(num_variants), unmoved] = 0

    # Inputs then labels ([slot, variant, example, 900]), so that each comes out contiguous.
    slot_size = num_variants * num_examples * SEQ_LEN
    canvas = np.full(2 * slot_size, PAD_ID, dtype=np.uint8)
    # Where each (variant, example) canvas starts, translation included: flat index = start + row * 30 + col.
    start = ((np.arange(num_variants)[:, None] * num_examples + np.arange(num_examples)) * SEQ_LEN
             + row_offset * GRID_SIZE + col_offset)
    for tid, variants in transform_groups(tids):
        values = colours[variants] + COLOUR_OFFSET
        for e, example in enumerate(example_ids):
            for slot, j in enumerate((2 * example, 2 * example + 1)):
                h, w = puzzle.shapes[tid, j]
                at = start[variants, e] + slot * slot_size
                paste_blocks(canvas, at, values[:, puzzle.cells[j]].reshape(-1, h, w))
                # end markers below and right of the grid, unless the translation put them off the canvas
                paste_blocks(canvas, at[row_offset[variants, e] + h < GRID_SIZE] + h * GRID_SIZE, EOS_ID, (1, w))
                paste_blocks(canvas, at[col_offset[variants, e] + w < GRID_SIZE] + w, EOS_ID, (h, 1))
    canvas = canvas.reshape(2, num_variants * num_examples, SEQ_LEN)
    return canvas[0], canvas[1]


def paste_blocks(canvas: np.ndarray, starts: np.ndarray, blocks, shape: Optional[Tuple[int, int]] = None) -> None:
    """canvas[starts[i] + r * 30 + c] = blocks[i, r, c] (or the scalar `blocks` over an h x w `shape`) on a flat
    uint8 canvas. One fancy assignment into a view of the canvas as overlapping h x w windows, one starting at
    every offset: each block is copied row by row, with no per-cell index arrays (which cost ~3x as much)."""
    h, w = np.shape(blocks)[1:] if shape is None else shape
    windows = np.lib.stride_tricks.as_strided(canvas, shape=(canvas.size - (h - 1) * GRID_SIZE - (w - 1), h, w),
                                              strides=(1, GRID_SIZE, 1), writeable=True)
    windows[starts] = blocks


# ---------------------------------------------------------------- the build

def build(input_file_prefix: str, output_dir: str, subsets: List[str], test_set_name: str,
          test_set_name2: str = "your_test_set", seed: int = 42, num_aug: int = 1000,
          puzzle_identifiers_start: int = 1, progress: bool = True, force: bool = False) -> Dict[str, PuzzleDatasetMetadata]:
    from tqdm import tqdm

    if num_aug < 0:
        raise UserError(f"--num-aug {num_aug}: must be >= 0")
    if puzzle_identifiers_start < 1:
        raise UserError(f"--puzzle-identifiers-start {puzzle_identifiers_start}: must be >= 1 (id 0 is the blank puzzle)")
    if not subsets:
        raise UserError("--subsets is empty: name at least one subset, e.g. --subsets training evaluation concept")
    test_sets = {test_set_name, test_set_name2}
    if not test_sets & set(subsets):
        raise UserError(f"--test-set-name {test_set_name} is not among --subsets {' '.join(subsets)}; the test split would be empty")

    # Read and validate everything before any heavy work or any write.
    loaded = [(subset, *load_subset(input_file_prefix, subset)) for subset in subsets]
    check_output_dir(output_dir, force)

    rng = np.random.default_rng(seed)
    identifiers: Dict[str, int] = {}
    test_puzzles: Dict[str, dict] = {}
    short = []  # (name, augmentations found) for puzzles with fewer distinct augmentations than asked
    total = sum(len(raw) for _, raw, _, _ in loaded)
    with AtomicOutputDir(output_dir, force) as tmp:
        writers = {split: SplitWriter(tmp / split, SEQ_LEN) for split in ("train", "test")}
        with tqdm(total=total, desc="ARC puzzles", unit="puzzle", disable=not progress) as bar:
            for subset, raw, train_pairs, test_pairs in loaded:
                is_test_set = subset in test_sets
                for name in raw:
                    pairs = train_pairs[name] + test_pairs[name]
                    dest = np.array(["train"] * len(train_pairs[name]) + ["test" if is_test_set else "train"] * len(test_pairs[name]))
                    puzzle = FlatPuzzle([g for pair in pairs for g in pair])
                    tids, maps, colours = select_augmentations(puzzle, num_aug, rng)
                    if len(tids) < num_aug + 1:
                        short.append((name, len(tids) - 1))
                    names = [name] + augment_names(name, tids[1:], maps[1:])
                    ids = np.array([identifiers.setdefault(n, puzzle_identifiers_start + len(identifiers)) for n in names])
                    if is_test_set:
                        test_puzzles[name] = raw[name]
                    for split, writer in writers.items():
                        example_ids = np.flatnonzero(dest == split)
                        if example_ids.size:
                            inputs, labels = encode_examples(puzzle, colours, tids, example_ids, split == "train", rng)
                            writer.add_group(inputs, labels, ids, example_ids.size)
                    bar.update(1)

        num_identifiers = puzzle_identifiers_start + len(identifiers)
        metadata = {}
        for split, writer in writers.items():
            metadata[split], examples = writer.close(num_identifiers, PAD_ID, PAD_ID, VOCAB_SIZE)
            print(f"{split}: {metadata[split].total_groups} groups, {metadata[split].total_puzzles} puzzles, {examples} examples")
        names = ["<blank>"] * num_identifiers
        for n, i in identifiers.items():
            names[i] = n
        (tmp / "identifiers.json").write_text(json.dumps(names))
        (tmp / "test_puzzles.json").write_text(json.dumps(test_puzzles))

    print(f"puzzle identifiers (including <blank>): {num_identifiers}")
    if short:
        fewest = min(short, key=lambda s: s[1])
        print(f"{len(short)} puzzles have fewer than {num_aug} distinct augmentations (fewest: {fewest[0]} with {fewest[1]})")
    return metadata


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-file-prefix", required=True, help="e.g. ../shared/data/arc-agi/arc-agi (reads <prefix>_<subset>_challenges.json)")
    add_output_args(parser, required=True)
    parser.add_argument("--subsets", nargs="+", default=["training", "evaluation", "concept"])
    parser.add_argument("--test-set-name", default="evaluation", help="subset whose test examples form the test split")
    parser.add_argument("--test-set-name2", default="your_test_set", help="a second such subset")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--puzzle-identifiers-start", type=int, default=1, help="first puzzle id (> 1 to train with other datasets)")
    args = parser.parse_args(argv)
    build(args.input_file_prefix, args.output_dir, args.subsets, args.test_set_name, args.test_set_name2,
          args.seed, args.num_aug, args.puzzle_identifiers_start, force=args.force)


if __name__ == "__main__":
    main()
