"""Build a language-model dataset (docs/dataset_format.md) from text: train a byte-level BPE tokenizer or reuse one
(a tokenizer.json directory, or GPT-2's vocab.json + merges.txt, ids and vocabulary unchanged), cut the text into
documents, hold out a fraction of them, and pack each split into fixed-length rows whose labels are the next
tokens. The tokenizer is saved in <output-dir>/tokenizer.

    python -m dataset.build_text_dataset --input corpus/*.txt --vocab-size 8192 --seq-len 512 --output-dir data/text
    python -m dataset.build_text_dataset --stdlib-docs --tokenizer tokenizers/gpt2 --seq-len 1024 --output-dir data/gpt2

--stdlib-docs adds this Python's own documentation (standard-library docstrings and the help() topics), a corpus
every machine has offline; --input files are cut at blank lines.
"""
import argparse
import random
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.format import (AtomicOutputDir, PuzzleDatasetMetadata, add_output_args, check_output_dir, single_example_layout, write_identifiers, write_split)
from dataset.text import encode_stream, load_tokenizer, pack, read_documents, save_tokenizer, stdlib_documents, train_tokenizer
from utils.errors import UserError, user_errors


def check_args(args: argparse.Namespace) -> None:
    if not args.input and not args.stdlib_docs:
        raise UserError("no text: give UTF-8 files with --input, or --stdlib-docs for this Python's documentation")
    if args.seq_len < 1:
        raise UserError(f"--seq-len={args.seq_len} must be at least 1")
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction={args.test_fraction} must be between 0 and 1 (exclusive)")
    if args.tokenizer is None and args.vocab_size < 258:
        raise UserError(f"--vocab-size={args.vocab_size} must be at least 258 (256 bytes + 2 special tokens)")


def split_documents(args: argparse.Namespace) -> dict:
    docs = read_documents(args.input) + (stdlib_documents() if args.stdlib_docs else [])
    if not docs:
        raise UserError("the inputs hold no text: give non-empty text files with --input")
    random.Random(args.seed).shuffle(docs)
    num_test = max(1, round(len(docs) * args.test_fraction))
    if len(docs) - num_test < 1:
        raise UserError(f"{len(docs)} documents cannot be split with --test-fraction={args.test_fraction}: give more text")
    return {"test": docs[:num_test], "train": docs[num_test:]}


def text_metadata(rows: int, seq_len: int, text_tokenizer) -> PuzzleDatasetMetadata:
    # Packed rows hold no padding, so no label is ignored (ignore_label_id None): GPT-2's id 0 is the token "!".
    return PuzzleDatasetMetadata(pad_id=text_tokenizer.pad_id, ignore_label_id=None, blank_identifier_id=0,
                                 vocab_size=text_tokenizer.vocab_size, seq_len=seq_len, num_puzzle_identifiers=1,
                                 total_groups=rows, mean_puzzle_examples=1.0, total_puzzles=rows, sets=["all"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", default=[], help="UTF-8 text files (documents: blank-line separated paragraphs)")
    p.add_argument("--stdlib-docs", action="store_true", help="add this Python's standard-library documentation")
    add_output_args(p, required=True)
    p.add_argument("--seq-len", type=int, default=512, help="row length, the model's context")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size when training a tokenizer")
    p.add_argument("--tokenizer", default=None,
                   help="reuse this tokenizer directory (tokenizer.json, or vocab.json + merges.txt) instead of training one")
    p.add_argument("--test-fraction", type=float, default=0.05, help="fraction of documents held out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_args(args)
    check_output_dir(args.output_dir, args.force)
    text_tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None  # a bad directory fails before reading

    splits = split_documents(args)
    text_tokenizer = text_tokenizer or train_tokenizer(splits["train"], args.vocab_size)
    packed = {}
    for split, split_docs in splits.items():
        inputs, labels = pack(encode_stream(text_tokenizer, split_docs), args.seq_len)
        if not len(inputs):
            raise UserError(f"the {split} split holds fewer than {args.seq_len + 1} tokens: give more text, "
                            f"a smaller --seq-len or another --test-fraction")
        packed[split] = (inputs, labels)

    with AtomicOutputDir(args.output_dir, args.force) as out:
        for split, (inputs, labels) in packed.items():
            write_split(out / split, text_metadata(len(inputs), args.seq_len, text_tokenizer),
                        {"all": {"inputs": inputs, "labels": labels, **single_example_layout(len(inputs), 1)}})
        write_identifiers(out)
        save_tokenizer(text_tokenizer, out / "tokenizer", model_max_length=args.seq_len)
    pad = "eos" if text_tokenizer.pad_token == text_tokenizer.eos_token else repr(text_tokenizer.pad_token)
    print(f"{args.output_dir}: train {len(packed['train'][0])} rows, test {len(packed['test'][0])} rows of "
          f"{args.seq_len} tokens, vocabulary {text_tokenizer.vocab_size:,} (eos {text_tokenizer.eos_token!r} id "
          f"{text_tokenizer.eos_id}, pad {pad} id {text_tokenizer.pad_id})")


if __name__ == "__main__":
    user_errors(main)()
