"""Template: turn your own (input, output) pairs into a dataset the trainer can load (docs/dataset_format.md).

Give one file per split, JSON or CSV:

  JSON  a list of pairs  [{"input": X, "output": Y}, ...]   (or {"pairs": [...]})
        X and Y are a string ("12+3"), a list of strings (grid rows, one character per cell),
        a list of integers (a sequence) or a list of lists of integers (a grid).
  CSV   a header with columns `input,output`; each cell is a string whose rows are split on
        --row-sep (default "/"; "" keeps one row), or a JSON array when it starts with "[".

Symbols: with characters, token = position in --charset + 1 (default: every character found, sorted);
with integers, token = value + 1 and values must lie in [0, --num-values) (default: largest + 1).
Token 0 is padding. Grids sit in the top-left corner of a canvas as large as the largest grid
(or --canvas H W), at most 30x30; sequences are 1-row grids. Padding in the labels is ignored by the
loss unless --predict-padding (then the model must also say where the output ends).
--dihedral adds the 8 symmetries of the square to each training pair (only for tasks where they hold).
Each pair is a group; each of its augments is a puzzle with one example (as in Sudoku and Maze).
`vocab.json` records the symbol of every token so predictions can be decoded.

    python dataset/build_custom_dataset.py --train my/train.json --test my/test.json --output-dir data/my-task
    python dataset/build_custom_dataset.py --train t.csv --test v.csv --charset " 0123456789" --dihedral --output-dir data/x

From Python (see dataset/build_arithmetic_dataset.py): `build_dataset({"train": pairs, "test": pairs}, out_dir)`,
with pairs a list of `Pair(input, output, where)`.
"""
import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tqdm import tqdm

from dataset.dihedral import dihedral_transform_batch
from dataset.format import (MAX_GRID_SIDE, SPLITS, AtomicOutputDir, PuzzleDatasetMetadata, add_output_args, check_output_dir, set_array_path, single_example_layout, write_identifiers, write_metadata)
from utils.errors import UserError, user_errors


class Pair(NamedTuple):
    input: object
    output: object
    where: str  # "file pair k" / "file row k", for error messages


# ---------------------------------------------------------------- reading

def _csv_cell(text: str, row_sep: str):
    if text.startswith("["):
        return json.loads(text)
    return text.split(row_sep) if row_sep else text


def read_pairs(path, row_sep: str = "/") -> List[Pair]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing split: {path} not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        items = data.get("pairs") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a list of {{\"input\": ..., \"output\": ...}} objects")
        pairs = []
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "input" not in item or "output" not in item:
                raise UserError(f"{path} pair {k}: expected an object with keys \"input\" and \"output\"")
            pairs.append(Pair(item["input"], item["output"], f"{path} pair {k}"))
        return pairs
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or "input" not in header or "output" not in header:
                raise UserError(f"{path} row 1: expected a header with columns input,output, got {header}")
            i, o = header.index("input"), header.index("output")
            pairs = []
            for line, row in enumerate(rows, start=2):
                if len(row) != len(header):
                    raise UserError(f"{path} row {line}: expected {len(header)} columns, got {len(row)}")
                try:
                    pairs.append(Pair(_csv_cell(row[i], row_sep), _csv_cell(row[o], row_sep), f"{path} row {line}"))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} row {line}: a cell starting with '[' must be a JSON array ({e})") from None
            return pairs
    raise UserError(f"{path}: unknown file type; use .json or .csv")


# ---------------------------------------------------------------- symbols -> token grids

def _rows(value, where: str) -> List[list]:
    """Any accepted form -> list of rows of symbols (str characters or ints)."""
    if isinstance(value, str):
        return [list(value)]
    if isinstance(value, list) and value and all(isinstance(r, str) for r in value):
        return [list(r) for r in value]
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(r, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in r) for r in value):
        return value
    raise UserError(f"{where}: expected a string, a list of strings, a list of integers or a list of lists of integers")


def is_sequence(value) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and not isinstance(value[0], (list, str)))


def symbols_of(pairs: Sequence[Pair]) -> Tuple[str, set]:
    """('str' | 'int', the set of symbols seen)."""
    kinds, seen = set(), set()
    for p in pairs:
        for field, value in (("input", p.input), ("output", p.output)):
            for row in _rows(value, f"{p.where} {field}"):
                seen.update(row)
                kinds.update(type(v).__name__ for v in row)
    if len(kinds) > 1:
        raise UserError("pairs mix characters and integers; use one kind of symbol throughout")
    return (kinds.pop() if kinds else "str"), seen


def to_grid(value, where: str, vocab: "Vocabulary") -> np.ndarray:
    rows = _rows(value, where)
    if len({len(r) for r in rows}) != 1:
        raise UserError(f"{where}: grid rows have different lengths {sorted({len(r) for r in rows})}")
    if len(rows) > 1 and (len(rows) > MAX_GRID_SIDE or len(rows[0]) > MAX_GRID_SIDE):
        raise UserError(f"{where}: grid is {len(rows)}x{len(rows[0])}; grids larger than {MAX_GRID_SIDE}x{MAX_GRID_SIDE} are not supported")
    try:
        return np.array([[vocab.token[v] for v in r] for r in rows], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"{where}: symbol {e.args[0]!r} is outside the vocabulary ({vocab.description})") from None


class Vocabulary(NamedTuple):
    token: Dict[object, int]  # symbol -> token, pad = 0
    symbols: List[str]        # by token
    description: str


def make_vocabulary(kind: str, seen: set, charset: Optional[str], num_values: Optional[int]) -> Vocabulary:
    if kind == "str":
        chars = charset if charset is not None else "".join(sorted(seen))
        if len(set(chars)) != len(chars):
            raise UserError(f"--charset {chars!r} repeats a character")
        return Vocabulary({c: i + 1 for i, c in enumerate(chars)}, ["<pad>"] + list(chars), f"--charset {chars!r}")
    num_values = num_values if num_values is not None else max(seen) + 1
    return Vocabulary({v: v + 1 for v in range(num_values)}, ["<pad>"] + [str(v) for v in range(num_values)],
                      f"values 0..{num_values - 1}, set by --num-values")


# ---------------------------------------------------------------- building

def build_dataset(splits: Dict[str, List[Pair]], output_dir, charset: Optional[str] = None, num_values: Optional[int] = None,
                  dihedral: bool = False, predict_padding: bool = False, canvas: Optional[Tuple[int, int]] = None,
                  force: bool = False) -> Dict[str, PuzzleDatasetMetadata]:
    """Check and encode every pair first, then write all splits atomically into `output_dir`."""
    for split in SPLITS:
        if not splits.get(split):
            raise UserError(f"missing split: no {split} pairs given")
    check_output_dir(output_dir, force)
    kind, seen = symbols_of([p for split in SPLITS for p in splits[split]])
    vocab = make_vocabulary(kind, seen, charset, num_values)
    symbols = vocab.symbols
    encoded = {split: [(to_grid(p.input, f"{p.where} input", vocab), to_grid(p.output, f"{p.where} output", vocab))
                       for p in tqdm(splits[split], desc=f"encode {split}")] for split in SPLITS}
    grids = [g for split in SPLITS for pair in encoded[split] for g in pair]
    sequences = [f"{p.where}" for split in SPLITS for p in splits[split] if is_sequence(p.input) or is_sequence(p.output)]
    if dihedral and sequences:
        raise UserError(f"--dihedral needs 2-D grids, but {sequences[0]} is a sequence (a string or a flat list)")
    height, width = canvas or (max(len(g) for g in grids), max(g.shape[1] for g in grids))
    if dihedral:
        height = width = max(height, width)  # transposes must fit the canvas
    for split in SPLITS:
        for p, (x, y) in zip(splits[split], encoded[split]):
            for field, g in (("input", x), ("output", y)):
                if len(g) > height or g.shape[1] > width:
                    raise UserError(f"{p.where} {field}: {len(g)}x{g.shape[1]} does not fit the {height}x{width} canvas (--canvas)")
    vocab_size = len(symbols)
    dtype = np.uint8 if vocab_size <= 256 else np.int32
    metadata = {}
    with AtomicOutputDir(output_dir, force) as tmp:
        for split in SPLITS:
            tids = list(range(8)) if dihedral and split == "train" else [0]
            pairs = encoded[split]
            arrays = {field: np.zeros((len(pairs), len(tids), height, width), dtype=dtype) for field in ("inputs", "labels")}
            for k, (x, y) in enumerate(pairs):
                for field, g in (("inputs", x), ("labels", y)):
                    for j, t in enumerate(tids):
                        moved = dihedral_transform_batch(g, t)
                        arrays[field][k, j, :moved.shape[0], :moved.shape[1]] = moved
            split_dir = tmp / split
            split_dir.mkdir()
            for field, a in arrays.items():
                np.save(set_array_path(split_dir, "all", field), a.reshape(len(pairs) * len(tids), height * width))
            for field, a in single_example_layout(len(pairs), len(tids)).items():
                np.save(set_array_path(split_dir, "all", field), a)
            metadata[split] = PuzzleDatasetMetadata(
                pad_id=0, ignore_label_id=None if predict_padding else 0, blank_identifier_id=0, vocab_size=vocab_size,
                seq_len=height * width, num_puzzle_identifiers=1, total_groups=len(pairs), mean_puzzle_examples=1.0,
                total_puzzles=len(pairs) * len(tids), sets=["all"])
            write_metadata(split_dir, metadata[split])
        write_identifiers(tmp)
        (tmp / "vocab.json").write_text(json.dumps({"symbols": symbols, "grid": [height, width]}))
    return metadata


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training pairs (.json or .csv)")
    p.add_argument("--test", required=True, help="test pairs (.json or .csv)")
    add_output_args(p, required=True)
    p.add_argument("--charset", default=None, help="characters in token order (token = position + 1)")
    p.add_argument("--num-values", type=int, default=None, help="integer symbols lie in [0, NUM_VALUES)")
    p.add_argument("--row-sep", default="/", help="row separator inside CSV string cells ('' = one row)")
    p.add_argument("--canvas", type=int, nargs=2, default=None, metavar=("H", "W"), help="fixed canvas instead of the largest grid")
    p.add_argument("--dihedral", action="store_true", help="8 dihedral augments of every training pair")
    p.add_argument("--predict-padding", action="store_true", help="train on padding cells of the labels too")
    args = p.parse_args(argv)
    if args.num_values is not None and args.num_values < 1:
        raise UserError(f"--num-values must be >= 1, got {args.num_values}")
    if args.canvas is not None and not all(1 <= s <= MAX_GRID_SIDE for s in args.canvas):
        raise UserError(f"--canvas {args.canvas[0]} {args.canvas[1]}: sides must lie in 1..{MAX_GRID_SIDE}")
    check_output_dir(args.output_dir, args.force)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    splits = {"train": read_pairs(args.train, args.row_sep), "test": read_pairs(args.test, args.row_sep)}
    metadata = build_dataset(splits, args.output_dir, args.charset, args.num_values, args.dihedral, args.predict_padding,
                             tuple(args.canvas) if args.canvas else None, force=args.force)
    for split, m in metadata.items():
        print(f"{split}: {m.total_groups} pairs, {m.total_puzzles} puzzles, seq_len {m.seq_len}, vocab {m.vocab_size}")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    user_errors(main)()
