"""Build a language-model dataset (SPEC §7 layout) from local text files: train a byte-level BPE tokenizer (or reuse
one), cut the text into documents (blank-line separated paragraphs), hold out a fraction of them, and pack each
split into fixed-length rows whose labels are the next tokens. The tokenizer is saved in <output-dir>/tokenizer.

    python -m dataset.build_text_dataset --input corpus/*.txt --vocab-size 8192 --seq-len 512 --output-dir data/text
"""
import argparse
import json
import random
import sys
from pathlib import Path
from typing import List, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dataset.format import (AtomicOutputDir, DatasetError, PuzzleDatasetMetadata, add_output_args, check_output_dir,
                            single_example_layout, write_split)
from utils.errors import user_errors

PAD_TOKEN, EOS_TOKEN = "<pad>", "<|endoftext|>"   # pad is id 0: it never occurs in text, so labels can ignore it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def read_documents(paths: Sequence[str]) -> List[str]:
    docs = []
    for path in paths:
        if not Path(path).is_file():
            raise DatasetError(f"input '{path}' is not a file: give UTF-8 text files with --input")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"input '{path}' is not UTF-8 text: convert it (iconv -t utf-8) or leave it out") from None
        docs += [d.strip() for d in text.split("\n\n") if d.strip()]
    if not docs:
        raise DatasetError("the inputs hold no text: give non-empty text files with --input")
    return docs


def train_tokenizer(docs: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, directory: Path) -> None:
    """tokenizer.json plus the small configs AutoTokenizer reads (no transformers needed to write them)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "left", "model_max_length": 1 << 30,
         **special}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in special.items() if v}, indent=2))


def load_tokenizer(directory: str):
    from tokenizers import Tokenizer
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise DatasetError(f"--tokenizer '{directory}' has no tokenizer.json: give a tokenizer directory or leave it out to train one")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.token_to_id(PAD_TOKEN) != 0 or tokenizer.token_to_id(EOS_TOKEN) is None:
        raise DatasetError(f"--tokenizer '{directory}' must map {PAD_TOKEN} to id 0 and have {EOS_TOKEN}: train one with this builder")
    return tokenizer


def pack(token_ids: np.ndarray, seq_len: int):
    """Rows of seq_len + 1 consecutive tokens -> inputs (first seq_len) and labels (shifted by one)."""
    rows = (len(token_ids) - 1) // seq_len
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    window = token_ids[idx]
    return window[:, :-1].astype(np.int32), window[:, 1:].astype(np.int32)


def encode_stream(tokenizer, docs: Sequence[str]) -> np.ndarray:
    eos = tokenizer.token_to_id(EOS_TOKEN)
    ids = []
    for encoding in tokenizer.encode_batch(list(docs)):
        ids += encoding.ids + [eos]
    return np.asarray(ids, dtype=np.int64)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="UTF-8 text files")
    add_output_args(p, required=True)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size when training a tokenizer")
    p.add_argument("--tokenizer", default=None, help="reuse this tokenizer directory instead of training one")
    p.add_argument("--test-fraction", type=float, default=0.05, help="fraction of documents held out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seq_len < 1:
        raise DatasetError(f"--seq-len={args.seq_len} must be at least 1")
    if not 0 < args.test_fraction < 1:
        raise DatasetError(f"--test-fraction={args.test_fraction} must be between 0 and 1 (exclusive)")
    if args.tokenizer is None and args.vocab_size < 258:
        raise DatasetError(f"--vocab-size={args.vocab_size} must be at least 258 (256 bytes + 2 special tokens)")
    check_output_dir(args.output_dir, args.force)

    docs = read_documents(args.input)
    random.Random(args.seed).shuffle(docs)
    num_test = max(1, round(len(docs) * args.test_fraction))
    if len(docs) - num_test < 1:
        raise DatasetError(f"{len(docs)} documents cannot be split with --test-fraction={args.test_fraction}: give more text")
    splits = {"test": docs[:num_test], "train": docs[num_test:]}
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else train_tokenizer(splits["train"], args.vocab_size)

    packed = {}
    for split, split_docs in splits.items():
        inputs, labels = pack(encode_stream(tokenizer, split_docs), args.seq_len)
        if not len(inputs):
            raise DatasetError(f"the {split} split holds fewer than {args.seq_len + 1} tokens: give more text, "
                               f"a smaller --seq-len or another --test-fraction")
        packed[split] = (inputs, labels)

    with AtomicOutputDir(args.output_dir, args.force) as out:
        for split, (inputs, labels) in packed.items():
            rows = len(inputs)
            metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                                             vocab_size=tokenizer.get_vocab_size(), seq_len=args.seq_len,
                                             num_puzzle_identifiers=1, total_groups=rows, mean_puzzle_examples=1.0,
                                             total_puzzles=rows, sets=["all"])
            write_split(out / split, metadata, {"all": {"inputs": inputs, "labels": labels, **single_example_layout(rows, 1)}})
        save_tokenizer(tokenizer, out / "tokenizer")
    print(f"{args.output_dir}: train {len(packed['train'][0])} rows, test {len(packed['test'][0])} rows of "
          f"{args.seq_len} tokens, vocabulary {tokenizer.get_vocab_size()}")


if __name__ == "__main__":
    user_errors(main)()
