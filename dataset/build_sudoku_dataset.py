"""Build a Sudoku dataset in the reference on-disk format (docs/dataset_format.md#sudoku).

Sources, first one given wins: --source-dir (local train.csv/test.csv with columns
source,question,answer,rating), --source-repo (the paper's Hugging Face repo, downloaded with urllib;
fails when offline), --generate N_TRAIN --generate-test N_TEST (built-in generator). With no source flag
the default repo is tried and, when the network is unreachable, the generator takes over (with a notice).

Tokens: digit + 1 (blank = 1), pad 0, vocab n + 2, seq_len n * n. Each training puzzle is one group holding
the original plus --num-aug augments (digit permutation, band/row and stack/column permutations, and a
transposition with p = 0.5 when boxes are square), each its own puzzle with one example.

    python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000 --subsample-size 1000 --num-aug 1000
    python dataset/build_sudoku_dataset.py --generate 1000 --generate-test 200 --size 6 --num-aug 100 --output-dir data/sudoku6-quick
"""
import argparse
import multiprocessing
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tqdm import tqdm

from dataset.checkers import valid_sudoku_solutions
from dataset.format import (AtomicOutputDir, add_output_args, check_output_dir, reserved_memmap, set_array_path, single_example_layout, single_set_metadata, write_identifiers, write_metadata)
from dataset.sources import SOURCE_CSV_COLUMNS, choose_csv_source, iter_source_csv, locate_split_csvs, parse_rating
from dataset.generators import sudoku as generator
from utils.errors import UserError, user_errors

DEFAULT_REPO = "sapientinc/sudoku-extreme"
SIZE_OF_CELLS = {n * n: n for n in generator.BOX_SHAPES}
VALIDATION_CHUNK = 1 << 16


class SudokuSplit:
    """Flat digit boards (0 = blank) with their ratings; `singles` is known only for generated ones."""

    def __init__(self, puzzles: np.ndarray, solutions: np.ndarray, ratings: np.ndarray, singles: Optional[np.ndarray] = None):
        self.puzzles, self.solutions, self.ratings, self.singles = puzzles, solutions, ratings, singles

    def take(self, index: np.ndarray) -> "SudokuSplit":
        return SudokuSplit(self.puzzles[index], self.solutions[index], self.ratings[index],
                           None if self.singles is None else self.singles[index])


# ---------------------------------------------------------------- sources

def read_sudoku_csv(path: Path, min_difficulty: Optional[int]) -> Tuple[SudokuSplit, int]:
    """Parse a source CSV; every row is checked (shape, symbols, solution) before any output is written.
    Rows are streamed into byte buffers so the 3.8M-row Sudoku-Extreme file fits in well under 8 GiB."""
    questions, answers = bytearray(), bytearray()
    ratings, lines = array("q"), array("q")
    cells = None
    for line, q, a, r in iter_source_csv(path):
        if cells is None:
            if len(q) not in SIZE_OF_CELLS:
                raise UserError(f"{path} row {line}: question has {len(q)} cells; expected one of {sorted(SIZE_OF_CELLS)} (4x4, 6x6, 9x9)")
            cells = len(q)
        if len(q) != cells or len(a) != cells:
            raise UserError(f"{path} row {line}: question/answer have {len(q)}/{len(a)} cells, expected {cells}")
        rating = parse_rating(path, line, r)
        if min_difficulty is None or rating >= min_difficulty:
            questions += q.encode("ascii", "replace")  # one byte per character, so offsets stay aligned
            answers += a.encode("ascii", "replace")
            ratings.append(rating)
            lines.append(line)
    if cells is None:
        raise UserError(f"{path} holds no puzzles; expected a header {','.join(SOURCE_CSV_COLUMNS)} and one row per puzzle")
    size = SIZE_OF_CELLS[cells]
    q = np.frombuffer(questions, dtype=np.uint8).reshape(-1, cells)
    a = np.frombuffer(answers, dtype=np.uint8).reshape(-1, cells)
    q[q == ord(".")] = ord("0")
    q -= ord("0")  # anything below '0' wraps around to a large value and fails the range check
    a -= ord("0")
    for start in range(0, len(q), VALIDATION_CHUNK):
        qc, ac = q[start:start + VALIDATION_CHUNK], a[start:start + VALIDATION_CHUNK]
        bad = np.flatnonzero((qc > size).any(1) | (ac > size).any(1) | (ac == 0).any(1))
        if len(bad):
            raise UserError(f"{path} row {lines[start + bad[0]]}: cells must be digits 1-{size} ('.' or '0' blank in the question, no blank in the answer)")
        bad = np.flatnonzero(~valid_sudoku_solutions(qc, ac))
        if len(bad):
            raise UserError(f"{path} row {lines[start + bad[0]]}: the answer is not a valid solution of the question")
    return SudokuSplit(q, a, np.frombuffer(ratings, dtype=np.int64)), size


def generate_split(size: int, count: int, seed: int, stream: int, min_difficulty: int, workers: int,
                   seen: set, desc: str) -> SudokuSplit:
    """`count` distinct puzzles (also distinct from `seen`); puzzle k of a stream depends only on (seed, k)."""
    results: List[generator.GeneratedSudoku] = []
    next_index, max_index = 0, 20 * count + 100
    pool = multiprocessing.Pool(workers) if workers > 1 and count >= 64 else None
    try:
        with tqdm(total=count, desc=desc) as bar:
            while len(results) < count:
                if next_index >= max_index:
                    raise UserError(f"only {len(results)} distinct {size}x{size} puzzles found in {max_index} tries; ask for fewer")
                batch = [(size, seed, stream, i, min_difficulty) for i in range(next_index, next_index + max(64, count - len(results)))]
                next_index += len(batch)
                mapped = pool.imap(generator.generate_indexed, batch, chunksize=8) if pool else map(generator.generate_indexed, batch)
                for item in mapped:
                    key = bytes(item.puzzle)
                    if key in seen or len(results) >= count:
                        continue
                    seen.add(key)
                    results.append(item)
                    bar.update()
    finally:
        if pool:
            pool.terminate()
    return SudokuSplit(np.array([r.puzzle for r in results], dtype=np.uint8).reshape(-1, size * size),
                       np.array([r.solution for r in results], dtype=np.uint8).reshape(-1, size * size),
                       np.array([r.rating for r in results], dtype=np.int64),
                       np.array([r.singles for r in results], dtype=bool))


# ---------------------------------------------------------------- augmentation

def _random_permutations(rng: np.random.Generator, count: int, k: int) -> np.ndarray:
    return np.argsort(rng.random((count, k)), axis=-1)


def _block_permutation(rng: np.random.Generator, count: int, blocks: int, width: int) -> np.ndarray:
    """Permute `blocks` blocks of `width` lines, and the lines within each block."""
    order = _random_permutations(rng, count, blocks)
    within = _random_permutations(rng, count * blocks, width).reshape(count, blocks, width)
    return (order[:, :, None] * width + within).reshape(count, blocks * width)


def random_augmentations(rng: np.random.Generator, count: int, size: int) -> Dict[str, np.ndarray]:
    """Per augment: digit map (index 0 = blank stays 0), transpose flag, row and column permutations."""
    br, bc = generator.BOX_SHAPES[size]
    digit_map = np.concatenate([np.zeros((count, 1), np.int64), 1 + _random_permutations(rng, count, size)], axis=1)
    transpose = rng.random(count) < 0.5 if br == bc else np.zeros(count, dtype=bool)  # 2x3 boxes do not survive transposition
    return {"digit_map": digit_map, "transpose": transpose,
            "rows": _block_permutation(rng, count, size // br, br), "cols": _block_permutation(rng, count, size // bc, bc)}


def augmentation_cells(aug: Dict[str, np.ndarray], size: int) -> np.ndarray:
    """[M, n*n] source cells: augment m moves board.flat[cells[m, k]] to cell k (transpose, then rows and columns,
    the reference order), before its digits are mapped."""
    rows, cols = aug["rows"][:, :, None], aug["cols"][:, None, :]
    cells = np.where(aug["transpose"][:, None, None], cols * size + rows, rows * size + cols)
    return cells.reshape(len(cells), size * size)


def augment_flat(boards: np.ndarray, aug: Dict[str, np.ndarray]) -> np.ndarray:
    """boards [M, k, n*n] digits, k boards per augment (e.g. puzzle and solution) -> augment m applied to row m.
    The cell index is computed once for all k boards, and both steps are plain 1-D gathers over the whole batch
    (take_along_axis builds a broadcast index per axis and cost twice as much)."""
    count, k, cells = boards.shape
    source = augmentation_cells(aug, int(round(cells ** 0.5)))
    board_start = (np.arange(count) * (k * cells))[:, None, None] + (np.arange(k) * cells)[None, :, None]
    moved = boards.reshape(-1)[board_start + source[:, None, :]]
    digit_maps = aug["digit_map"].astype(boards.dtype).reshape(-1)  # row m at m * (n + 1)
    return digit_maps[moved + (np.arange(count) * aug["digit_map"].shape[1])[:, None, None]]


# ---------------------------------------------------------------- writing

def write_sudoku_split(split_dir: Path, split: SudokuSplit, size: int, num_aug: int, rng: np.random.Generator, desc: str) -> None:
    """Group g holds the original puzzle then its augments; inputs/labels are written straight to disk."""
    cells, per_group, groups = size * size, 1 + num_aug, len(split.puzzles)
    split_dir.mkdir(parents=True, exist_ok=True)
    shape = (groups * per_group, cells)
    inputs = reserved_memmap(set_array_path(split_dir, "all", "inputs"), shape)
    labels = reserved_memmap(set_array_path(split_dir, "all", "labels"), shape)
    chunk = max(1, (1 << 20) // (per_group * cells))  # ~1M cells per step keeps the index arrays small
    bar = tqdm(total=groups, desc=desc, unit="group")
    for start in range(0, groups, chunk):
        stop = min(groups, start + chunk)
        # [groups, per_group, 2 (puzzle, solution), cells]: the original, then its augments
        pair = np.stack([split.puzzles[start:stop], split.solutions[start:stop]], axis=1)
        out = np.repeat(pair[:, None], per_group, axis=1)
        if num_aug:
            aug = random_augmentations(rng, (stop - start) * num_aug, size)
            out[:, 1:] = augment_flat(out[:, 1:].reshape(-1, 2, cells), aug).reshape(stop - start, num_aug, 2, cells)
        q_out, a_out = out[:, :, 0], out[:, :, 1]
        inputs[start * per_group:stop * per_group] = q_out.reshape(-1, cells) + 1
        labels[start * per_group:stop * per_group] = a_out.reshape(-1, cells) + 1
        bar.update(stop - start)
    bar.close()
    inputs.flush()
    labels.flush()
    del inputs, labels
    for field, values in single_example_layout(groups, per_group).items():
        np.save(set_array_path(split_dir, "all", field), values)
    write_metadata(split_dir, single_set_metadata(cells, size + 2, groups, per_group))


def describe(name: str, split: SudokuSplit) -> str:
    if not len(split.puzzles):
        return f"{name}: 0 puzzles"
    clues = (split.puzzles > 0).sum(1)
    q = np.percentile(split.ratings, [0, 25, 50, 75, 90, 100]).astype(int)
    text = (f"{name}: {len(clues)} puzzles, clues mean {clues.mean():.2f} (min {clues.min()}, max {clues.max()}), "
            f"rating mean {split.ratings.mean():.1f} quantiles 0/25/50/75/90/100% = {'/'.join(map(str, q))}")
    if split.singles is not None:
        text += f", not solvable by singles {100 * (1 - split.singles.mean()):.1f}%"
    return text


# ---------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_args(p, default="data/sudoku-extreme-full")
    p.add_argument("--subsample-size", type=int, default=None, help="random subset of the training puzzles")
    p.add_argument("--num-aug", type=int, default=0, help="augments per training puzzle")
    p.add_argument("--min-difficulty", type=int, default=None, help="keep puzzles rated at least this (backtracks)")
    p.add_argument("--source-dir", default=None, help="folder with train.csv and test.csv (source,question,answer,rating)")
    p.add_argument("--source-repo", default=None, help=f"Hugging Face dataset repo (default {DEFAULT_REPO}); needs network")
    p.add_argument("--generate", type=int, default=None, metavar="N_TRAIN", help="generate N_TRAIN training puzzles")
    p.add_argument("--generate-test", type=int, default=None, metavar="N_TEST", help="generated test puzzles (default 1000)")
    p.add_argument("--size", type=int, default=9, choices=sorted(generator.BOX_SHAPES), help="board size for --generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="generator processes")
    args = p.parse_args(argv)
    for flag in ("subsample_size", "num_aug", "generate", "generate_test", "min_difficulty"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    if args.generate_test is not None and args.generate is None:
        raise UserError("--generate-test needs --generate N_TRAIN too")
    check_output_dir(args.output_dir, args.force)
    return args


def load_sources(args) -> Tuple[Dict[str, SudokuSplit], int]:
    choose_csv_source(args, DEFAULT_REPO, "Sudoku-Extreme", fallback_count=args.subsample_size or 1000)
    if args.source_dir is not None:
        paths = locate_split_csvs(args.source_dir)
        loaded = {split: read_sudoku_csv(path, args.min_difficulty) for split, path in paths.items()}
        sizes = {size for _, size in loaded.values()}
        if len(sizes) != 1:
            raise UserError(f"train.csv and test.csv in {args.source_dir} hold boards of different sizes {sorted(sizes)}")
        return {split: data for split, (data, _) in loaded.items()}, sizes.pop()
    seen: set = set()
    counts = {"train": args.generate, "test": 1000 if args.generate_test is None else args.generate_test}
    return {split: generate_split(args.size, count, args.seed, stream, args.min_difficulty or 0, args.workers, seen, f"generate {split}")
            for stream, (split, count) in enumerate(counts.items())}, args.size


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.time()
    splits, size = load_sources(args)
    generated = time.time()
    rng = np.random.default_rng(args.seed)
    train = splits["train"]
    if args.subsample_size is not None and args.subsample_size < len(train.puzzles):
        splits["train"] = train.take(rng.choice(len(train.puzzles), size=args.subsample_size, replace=False))
    for name, split in splits.items():
        print(describe(name, split))
    with AtomicOutputDir(args.output_dir, args.force) as tmp:
        for name, split in splits.items():
            write_sudoku_split(tmp / name, split, size, args.num_aug if name == "train" else 0, rng, f"write {name}")
        write_identifiers(tmp)
    done = time.time()
    print(f"wrote {args.output_dir}: {size}x{size}, train {len(splits['train'].puzzles)} x {1 + args.num_aug}, "
          f"test {len(splits['test'].puzzles)}; sources {generated - started:.1f}s, writing {done - generated:.1f}s")


if __name__ == "__main__":
    user_errors(main)()
