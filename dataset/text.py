"""Text for the recursive language model (arch=trm_lm): the tokenizer a text dataset is built with (trained here,
or reused from a directory in either Hugging Face layout) and saved beside the dataset, an offline corpus (this
Python's own documentation) and the packing of a token stream into rows whose labels are the next tokens."""
import ast
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from dataset.format import PuzzleDatasetMetadata
from utils.errors import UserError

PAD_TOKEN, EOS_TOKEN = "<pad>", "<|endoftext|>"   # the tokens of the tokenizers trained here: pad 0, eos 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GPT2_FILES = ("vocab.json", "merges.txt")
# Standard-library folders that hold tests, demos or vendored code rather than documented modules.
STDLIB_SKIP = {"idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "__pycache__", "venv"}


@dataclass
class TextTokenizer:
    """A `tokenizers.Tokenizer` and the two special tokens a text dataset needs: eos separates documents, pad fills
    left-padded batches (the eos token itself where the tokenizer has no pad token, as GPT-2's has not)."""
    tokenizer: object
    eos_token: str
    pad_token: str

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding: one past the largest id (a GPT-2 layout: 50,257)."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def train_tokenizer(docs: Sequence[str], vocab_size: int) -> TextTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return TextTokenizer(tokenizer, EOS_TOKEN, PAD_TOKEN)


def gpt2_layout_tokenizer(vocab: Path, merges: Path):
    """vocab.json + merges.txt as GPT-2 ships them -> the byte-level BPE GPT-2's own tokenizer.json describes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def configured_special_tokens(directory: Path) -> Dict[str, str]:
    """eos_token / pad_token as the directory's tokenizer_config.json or special_tokens_map.json name them."""
    found: Dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        for key in ("eos_token", "pad_token"):
            value = config.get(key) if isinstance(config, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and key not in found:
                found[key] = value
    return found


def read_tokenizer_files(directory: Path, flag: str):
    from tokenizers import Tokenizer
    if (directory / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise UserError(f"{flag} '{directory}': tokenizer.json is not readable ({str(e).splitlines()[0]})") from None
    if all((directory / name).is_file() for name in GPT2_FILES):
        try:
            return gpt2_layout_tokenizer(directory / "vocab.json", directory / "merges.txt")
        except Exception as e:
            raise UserError(f"{flag} '{directory}': vocab.json + merges.txt are not a BPE vocabulary "
                            f"({str(e).splitlines()[0]})") from None
    raise UserError(f"{flag} '{directory}' has neither tokenizer.json nor vocab.json + merges.txt: give a Hugging Face "
                    f"tokenizer directory, or leave {flag} out to train one")


def load_tokenizer(directory, flag: str = "--tokenizer") -> TextTokenizer:
    """Reuse a tokenizer directory in either layout, ids and vocabulary unchanged."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"{flag} '{directory}' is not a directory: give a tokenizer directory "
                        f"(tokenizer.json, or GPT-2's vocab.json + merges.txt)")
    tokenizer = read_tokenizer_files(path, flag)
    configured = configured_special_tokens(path)
    eos = configured.get("eos_token", EOS_TOKEN)
    if tokenizer.token_to_id(eos) is None:
        raise UserError(f"{flag} '{directory}' has no end-of-text token {eos!r} to separate documents: name one as "
                        f"eos_token in its tokenizer_config.json")
    pad = configured.get("pad_token")
    if pad is None or tokenizer.token_to_id(pad) is None:
        pad = PAD_TOKEN if tokenizer.token_to_id(PAD_TOKEN) is not None else eos
    size = len(tokenizer.get_vocab(with_added_tokens=True))
    # Tokens already in the vocabulary keep their ids; as special tokens they match whole and are skipped in decoding.
    tokenizer.add_special_tokens(sorted({eos, pad}))
    assert len(tokenizer.get_vocab(with_added_tokens=True)) == size, "marking existing tokens special added none"
    return TextTokenizer(tokenizer, eos, pad)


def save_tokenizer(text_tokenizer: TextTokenizer, directory: Path, model_max_length: int) -> None:
    """tokenizer.json plus the configs AutoTokenizer reads: left padding (for batched generation) and the context
    as model_max_length (so truncation=True cuts prompts to it)."""
    directory.mkdir(parents=True, exist_ok=True)
    text_tokenizer.tokenizer.save(str(directory / "tokenizer.json"))
    eos, pad = text_tokenizer.eos_token, text_tokenizer.pad_token
    special = {"eos_token": eos, "bos_token": eos, "pad_token": pad, "unk_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "left", "model_max_length": model_max_length,
         "clean_up_tokenization_spaces": False, **special}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in special.items() if v}, indent=2))


def read_documents(paths: Sequence[str]) -> List[str]:
    """Blank-line separated paragraphs of UTF-8 text files."""
    docs = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"input '{path}' is not a file: give UTF-8 text files with --input")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"input '{path}' is not UTF-8 text: convert it (iconv -t utf-8) or leave it out") from None
        docs += [d.strip() for d in text.split("\n\n") if d.strip()]
    return docs


def stdlib_documents(root: Optional[Path] = None) -> List[str]:
    """This Python's own documentation, present wherever it runs: every module, class and function docstring of
    its standard library (tests and demos left out) and the language-reference topics behind help()
    (pydoc_data). Deterministic for one Python version; about 2 MB of text for Python 3.11."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in STDLIB_SKIP or p.startswith("test") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # the odd file written for another Python or encoding
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions leave pydoc_data out
        topics = {}
    docs += [topics[name].strip() for name in sorted(topics) if topics[name].strip()]
    if not docs:
        raise UserError(f"--stdlib-docs: no documentation found under {root} (a Python without its standard library "
                        f"sources?): give text files with --input")
    return docs


def encode_stream(text_tokenizer: TextTokenizer, docs: Sequence[str]) -> np.ndarray:
    """The documents' tokens, each followed by eos; no tokenizer template (BOS/EOS) is added."""
    ids = []
    for encoding in text_tokenizer.tokenizer.encode_batch(list(docs), add_special_tokens=False):
        ids += encoding.ids + [text_tokenizer.eos_id]
    return np.asarray(ids, dtype=np.int64)


def pack(token_ids: np.ndarray, seq_len: int):
    """Rows of seq_len + 1 consecutive tokens -> inputs (first seq_len) and labels (shifted by one)."""
    rows = (len(token_ids) - 1) // seq_len
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    window = token_ids[idx]
    return window[:, :-1].astype(np.int32), window[:, 1:].astype(np.int32)


def is_text_dataset(root: Path) -> bool:
    return (Path(root) / "tokenizer" / "tokenizer.json").is_file()


def check_text_dataset(root: Path, metas: Dict[str, PuzzleDatasetMetadata]) -> None:
    """A text dataset's tokenizer must be the one its rows were encoded with: same vocabulary and pad id."""
    text_tokenizer = load_tokenizer(Path(root) / "tokenizer", flag="tokenizer")
    for split, meta in metas.items():
        where = f"{root}/{split}/dataset.json"
        if meta.vocab_size != text_tokenizer.vocab_size:
            raise UserError(f"{where}: vocab_size {meta.vocab_size} but {root}/tokenizer holds {text_tokenizer.vocab_size} tokens")
        if meta.pad_id != text_tokenizer.pad_id:
            raise UserError(f"{where}: pad_id {meta.pad_id} but the tokenizer pads with id {text_tokenizer.pad_id}")
