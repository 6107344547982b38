"""Build a Maze dataset in the reference on-disk format (docs/dataset_format.md#maze).

Sources, first one given wins: --source-dir (local train.csv/test.csv with columns
source,question,answer,rating; question = the maze, answer = the maze with the shortest path marked 'o'),
--source-repo (the paper's Hugging Face repo, downloaded with urllib; fails when offline), or
--generate N_TRAIN --generate-test N_TEST (built-in generator, --size N). With no source flag the default
repo is tried and, when the network is unreachable, the generator takes over (1000 + 1000 mazes, with a notice).

Tokens: "# SGo" -> 1..5, pad 0, vocab 6, seq_len size*size. Each training maze is one group; with --aug
it holds the 8 dihedral transforms (reference order), each its own puzzle with one example.

    python dataset/build_maze_dataset.py --aug
    python dataset/build_maze_dataset.py --generate 1000 --generate-test 1000 --size 30 --output-dir data/maze-30x30-gen
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tqdm import tqdm

from dataset.checkers import MAZE_CHARSET, is_valid_maze_path
from dataset.dihedral import dihedral_transform_batch
from dataset.format import (MAX_GRID_SIDE, AtomicOutputDir, add_output_args, check_output_dir, set_array_path, single_example_layout, single_set_metadata, write_identifiers, write_metadata)
from dataset.sources import SOURCE_CSV_COLUMNS, choose_csv_source, iter_source_csv, locate_split_csvs, parse_rating
from dataset.generators import maze as generator
from utils.errors import UserError, user_errors

DEFAULT_REPO = "sapientinc/maze-30x30-hard-1k"
CHAR_TO_TOKEN = np.zeros(256, dtype=np.uint8)
CHAR_TO_TOKEN[np.frombuffer(MAZE_CHARSET.encode(), dtype=np.uint8)] = np.arange(1, len(MAZE_CHARSET) + 1)


def encode(mazes: List[str], size: int) -> np.ndarray:
    """Strings of size*size characters -> [N, size, size] tokens."""
    if not mazes:
        return np.zeros((0, size, size), dtype=np.uint8)
    return CHAR_TO_TOKEN[np.frombuffer("".join(mazes).encode("latin-1"), dtype=np.uint8)].reshape(-1, size, size)


def read_maze_csv(path: Path) -> Dict[str, object]:
    """Parse and check a source CSV: square mazes over "# SG", labels a valid shortest path."""
    questions, answers, ratings, cells = [], [], [], None
    allowed = set(MAZE_CHARSET)
    for line, q, a, r in iter_source_csv(path):
        side = int(round(len(q) ** 0.5))
        if side * side != len(q) or len(a) != len(q):
            raise UserError(f"{path} row {line}: question/answer have {len(q)}/{len(a)} characters; expected one square maze each")
        if side > MAX_GRID_SIDE:
            raise UserError(f"{path} row {line}: maze is {side}x{side}; grids larger than {MAX_GRID_SIDE}x{MAX_GRID_SIDE} are not supported")
        if cells is not None and len(q) != cells:
            raise UserError(f"{path} row {line}: maze has {len(q)} cells but earlier rows have {cells}; all mazes must share one size")
        cells = len(q)
        odd = (set(q) | set(a)) - allowed
        if odd:
            raise UserError(f"{path} row {line}: characters {''.join(sorted(odd))!r} outside the maze alphabet {MAZE_CHARSET!r}")
        if not is_valid_maze_path(q, a):
            raise UserError(f"{path} row {line}: the answer is not the maze with one shortest S->G path marked 'o'")
        questions.append(q)
        answers.append(a)
        ratings.append(parse_rating(path, line, r))
    if cells is None:
        raise UserError(f"{path} holds no mazes; expected a header {','.join(SOURCE_CSV_COLUMNS)} and one row per maze")
    return {"questions": questions, "answers": answers, "size": int(round(cells ** 0.5)), "path_lens": [a.count("o") + 1 for a in answers]}


def generate_split(size: int, count: int, seed: int, stream: int, min_path_len: Optional[int], seen: set, desc: str) -> Dict[str, object]:
    """`count` distinct mazes (also distinct from `seen`); maze k of a stream depends only on (seed, k)."""
    questions, answers, path_lens, index = [], [], [], 0
    with tqdm(total=count, desc=desc) as bar:
        while len(questions) < count:
            if index >= 20 * count + 100:
                raise UserError(f"only {len(questions)} distinct {size}x{size} mazes found; ask for fewer or a larger --size")
            m = generator.generate_indexed(size, seed, stream, index, min_path_len)
            index += 1
            if m.maze in seen:
                continue
            seen.add(m.maze)
            questions.append(m.maze)
            answers.append(m.solution)
            path_lens.append(m.path_len)
            bar.update()
    return {"questions": questions, "answers": answers, "size": size, "path_lens": path_lens}


def write_maze_split(split_dir: Path, inputs: np.ndarray, labels: np.ndarray, augment: bool) -> None:
    """Group g holds maze g under each dihedral transform (identity only without `augment`)."""
    tids = range(8) if augment else range(1)
    groups, size = len(inputs), inputs.shape[-1]
    split_dir.mkdir(parents=True, exist_ok=True)
    for field, grids in (("inputs", inputs), ("labels", labels)):
        stacked = np.stack([dihedral_transform_batch(grids, t) for t in tids], axis=1)
        np.save(set_array_path(split_dir, "all", field), np.ascontiguousarray(stacked.reshape(groups * len(tids), size * size)))
    for field, array in single_example_layout(groups, len(tids)).items():
        np.save(set_array_path(split_dir, "all", field), array)
    write_metadata(split_dir, single_set_metadata(size * size, len(MAZE_CHARSET) + 1, groups, len(tids)))


def describe(name: str, split: Dict[str, object]) -> str:
    lens = np.asarray(split["path_lens"])
    if not len(lens):
        return f"{name}: 0 mazes"
    q = np.percentile(lens, [0, 10, 25, 50, 75, 90, 100]).astype(int)
    walls = np.mean([m.count("#") / len(m) for m in split["questions"]])
    return (f"{name}: {len(lens)} mazes {split['size']}x{split['size']}, walls {100 * walls:.1f}%, shortest path length "
            f"mean {lens.mean():.1f}, quantiles 0/10/25/50/75/90/100% = {'/'.join(map(str, q))}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_args(p, default="data/maze-30x30-hard-1k")
    p.add_argument("--subsample-size", type=int, default=None, help="random subset of the training mazes")
    p.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms of every training maze")
    p.add_argument("--source-dir", default=None, help="folder with train.csv and test.csv (source,question,answer,rating)")
    p.add_argument("--source-repo", default=None, help=f"Hugging Face dataset repo (default {DEFAULT_REPO}); needs network")
    p.add_argument("--generate", type=int, default=None, metavar="N_TRAIN", help="generate N_TRAIN training mazes")
    p.add_argument("--generate-test", type=int, default=None, metavar="N_TEST", help="generated test mazes (default 1000)")
    p.add_argument("--size", type=int, default=30, help="maze side for --generate")
    p.add_argument("--min-path-len", type=int, default=None, help="shortest-path length floor for --generate (default 110 * (size/30)^2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag in ("subsample_size", "generate", "generate_test", "min_path_len"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    if not 3 <= args.size <= MAX_GRID_SIDE:
        raise UserError(f"--size {args.size}: mazes must be 3x3 to {MAX_GRID_SIDE}x{MAX_GRID_SIDE}")
    if args.generate_test is not None and args.generate is None:
        raise UserError("--generate-test needs --generate N_TRAIN too")
    check_output_dir(args.output_dir, args.force)
    return args


def load_sources(args) -> Dict[str, Dict[str, object]]:
    choose_csv_source(args, DEFAULT_REPO, "Maze-Hard", fallback_count=1000)
    if args.source_dir is not None:
        splits = {split: read_maze_csv(path) for split, path in locate_split_csvs(args.source_dir).items()}
        if splits["train"]["size"] != splits["test"]["size"]:
            raise UserError(f"train.csv and test.csv in {args.source_dir} hold mazes of different sizes")
        return splits
    seen: set = set()
    counts = {"train": args.generate, "test": 1000 if args.generate_test is None else args.generate_test}
    return {split: generate_split(args.size, count, args.seed, stream, args.min_path_len, seen, f"generate {split}")
            for stream, (split, count) in enumerate(counts.items())}


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.time()
    splits = load_sources(args)
    rng = np.random.default_rng(args.seed)
    train = splits["train"]
    if args.subsample_size is not None and args.subsample_size < len(train["questions"]):
        keep = rng.choice(len(train["questions"]), size=args.subsample_size, replace=False)
        splits["train"] = {**train, **{k: [train[k][i] for i in keep] for k in ("questions", "answers", "path_lens")}}
    for name, split in splits.items():
        print(describe(name, split))
    with AtomicOutputDir(args.output_dir, args.force) as tmp:
        for name, split in splits.items():
            size = split["size"]
            write_maze_split(tmp / name, encode(split["questions"], size), encode(split["answers"], size), args.aug and name == "train")
        write_identifiers(tmp)
    print(f"wrote {args.output_dir} in {time.time() - started:.1f}s")


if __name__ == "__main__":
    user_errors(main)()
