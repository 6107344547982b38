"""Worked example of the custom-dataset template: multi-digit addition laid out on a grid.

A 3 x (D+1) grid holds the two operands right-aligned in rows 0 and 1; the input leaves row 2 blank
and the output writes the sum there, right-aligned (digits carry to the left, so the sum can use
the extra column). Blanks are ' ' (a real symbol the model predicts), so nothing is padding:

    input          output
    "  487"        "  487"
    " 9035"        " 9035"
    "     "        " 9522"

Operands have 1..D digits (length drawn uniformly, then the digits). Test pairs never repeat a
training pair. Built through `dataset.build_custom_dataset.build_dataset`, charset " 0123456789".

    python dataset/build_arithmetic_dataset.py --digits 8 --num-train 10000 --num-test 1000 --output-dir data/addition-8
"""
import argparse
import random
import sys
from pathlib import Path
from typing import List, Set, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.build_custom_dataset import Pair, build_dataset
from dataset.format import MAX_GRID_SIDE, add_output_args, check_output_dir
from utils.errors import UserError, user_errors

CHARSET = " 0123456789"


def addition_pair(a: int, b: int, digits: int) -> Tuple[List[str], List[str]]:
    width = digits + 1
    rows = [str(a).rjust(width), str(b).rjust(width)]
    return rows + [" " * width], rows + [str(a + b).rjust(width)]


def random_operand(rng: random.Random, digits: int) -> int:
    length = rng.randint(1, digits)
    return rng.randrange(10 ** (length - 1) if length > 1 else 0, 10 ** length)


def sample_pairs(rng: random.Random, count: int, digits: int, taken: Set[Tuple[int, int]], name: str) -> List[Pair]:
    pairs, tries = [], 0
    while len(pairs) < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise UserError(f"only {len(pairs)} distinct {digits}-digit additions left for {name}; ask for fewer or more --digits")
        a, b = random_operand(rng, digits), random_operand(rng, digits)
        if (a, b) in taken:
            continue
        taken.add((a, b))
        x, y = addition_pair(a, b, digits)
        pairs.append(Pair(x, y, f"{name} {a}+{b}"))
    return pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_args(p, default="data/addition")
    p.add_argument("--digits", type=int, default=8, help="operands have up to this many digits")
    p.add_argument("--num-train", type=int, default=10000)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.digits <= MAX_GRID_SIDE - 1:
        raise UserError(f"--digits {args.digits}: must lie in 1..{MAX_GRID_SIDE - 1} (the grid is digits+1 wide, at most {MAX_GRID_SIDE})")
    if args.num_train < 1 or args.num_test < 1:
        raise UserError("--num-train and --num-test must be >= 1")
    check_output_dir(args.output_dir, args.force)
    rng, taken = random.Random(args.seed), set()
    splits = {"train": sample_pairs(rng, args.num_train, args.digits, taken, "train"),
              "test": sample_pairs(rng, args.num_test, args.digits, taken, "test")}
    metadata = build_dataset(splits, args.output_dir, charset=CHARSET, force=args.force)
    print(f"wrote {args.output_dir}: {args.num_train} train / {args.num_test} test additions of up to {args.digits} digits, "
          f"grid 3x{args.digits + 1}, seq_len {metadata['train'].seq_len}, vocab {metadata['train'].vocab_size}")


if __name__ == "__main__":
    user_errors(main)()
