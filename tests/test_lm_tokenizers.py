"""Text datasets from reused tokenizers: GPT-2's layout (vocab.json + merges.txt) and tokenizer.json, ids and
vocabulary unchanged, the eos token as pad where there is no pad token, GPT-2's 50,257 ids as the embedding;
dataset.validate on text datasets; this Python's documentation as an offline corpus."""
import json
import random
import re
import shutil

import numpy as np
import pytest

from dataset import build_text_dataset, validate
from dataset.format import read_metadata
from dataset.text import EOS_TOKEN, load_tokenizer, read_documents, stdlib_documents
from tests._tiny_lm import (HIDDEN, SEQ_LEN, VOCAB, build_text, full_size_gpt2_layout, pretrain, trained_gpt2_layout,
                             write_corpus)
from tests.helpers import read_set
from utils.errors import UserError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpt2_layout")
    write_corpus(base / "corpus.txt")
    return trained_gpt2_layout(base / "gpt2", base / "corpus.txt")


def stream(data, split="train"):
    """A split's token stream: its rows side by side, plus the last label (labels are the next inputs)."""
    fields = read_set(data / split, "all")
    return np.concatenate([fields["inputs"].reshape(-1), fields["labels"][-1, -1:]])


def test_gpt2_layout_is_reused_with_its_ids(gpt2_dir, tmp_path):
    from transformers import GPT2Tokenizer
    data = build_text(tmp_path, tokenizer=gpt2_dir)
    reference = GPT2Tokenizer.from_pretrained(gpt2_dir)   # transformers reading the same two files
    vocab = json.loads((gpt2_dir / "vocab.json").read_text())
    meta = read_metadata(data / "train")
    assert meta.vocab_size == len(vocab) == len(reference) == VOCAB
    assert meta.pad_id == vocab[EOS_TOKEN] == VOCAB - 1, "no pad token: the eos token pads"
    saved = load_tokenizer(data / "tokenizer")
    for text in ("the cat sat on a mat.", "a big red house<|endoftext|>tree", "  blue\ttree, small\n\ndog"):
        assert saved.tokenizer.encode(text).ids == reference(text).input_ids, text
    # the training rows are the training documents (the builder's seeded shuffle) as GPT-2 encodes them, each + eos
    docs = read_documents([str(tmp_path / "corpus.txt")])
    random.Random(0).shuffle(docs)
    want = [i for doc in docs[round(len(docs) * 0.1):] for i in reference(doc).input_ids + [reference.eos_token_id]]
    tokens = stream(data)
    assert tokens.tolist() == want[:len(tokens)]


def test_tokenizer_json_without_pad_pads_with_eos_left(gpt2_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Tokenizer
    json_dir = tmp_path / "as_json"
    json_dir.mkdir()
    GPT2Tokenizer.from_pretrained(gpt2_dir).backend_tokenizer.save(str(json_dir / "tokenizer.json"))
    data = build_text(tmp_path, tokenizer=json_dir)
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side) == (EOS_TOKEN, EOS_TOKEN, "left")
    assert tokenizer.model_max_length == SEQ_LEN
    batch = tokenizer(["the cat", "a small red dog"], padding=True)
    assert batch.input_ids[0][0] == tokenizer.eos_token_id and batch.attention_mask[0][0] == 0
    assert read_metadata(data / "train").vocab_size == VOCAB


def test_a_gpt2_size_vocabulary_gives_a_50257_entry_embedding(tmp_path):
    from models.recursive_reasoning.trm_lm import TRMLanguageModel
    data = build_text(tmp_path, docs=40, tokenizer=full_size_gpt2_layout(tmp_path / "gpt2"))
    meta = read_metadata(data / "train")
    assert (meta.vocab_size, meta.pad_id) == (50_257, 50_256)
    model = TRMLanguageModel(dict(vocab_size=meta.vocab_size, seq_len=meta.seq_len, hidden_size=HIDDEN, num_heads=2,
                                  num_layers=1, num_loops=1, expansion=2, forward_dtype="float32"))
    assert model.decoder.embed_tokens.embedding_weight.shape == (50_257, HIDDEN)
    assert int(read_set(data / "train", "all")["inputs"].max()) < 50_257


@pytest.mark.parametrize("setup, message", [
    ("missing", "is not a directory"),
    ("empty", "has neither tokenizer.json nor vocab.json + merges.txt"),
    ("no_eos", "has no end-of-text token '<|endoftext|>'"),
    ("broken", "tokenizer.json is not readable"),
])
def test_bad_tokenizer_directories_are_one_line(gpt2_dir, tmp_path, setup, message):
    directory = tmp_path / "tok"
    if setup != "missing":
        directory.mkdir()
    if setup == "no_eos":
        vocab = json.loads((gpt2_dir / "vocab.json").read_text())
        del vocab[EOS_TOKEN]
        (directory / "vocab.json").write_text(json.dumps(vocab))
        shutil.copy(gpt2_dir / "merges.txt", directory)
    if setup == "broken":
        (directory / "tokenizer.json").write_text("{not json")
    write_corpus(tmp_path / "corpus.txt")
    with pytest.raises(UserError, match=re.escape(message)) as error:
        build_text_dataset.main(["--input", str(tmp_path / "corpus.txt"), "--tokenizer", str(directory),
                                 "--output-dir", str(tmp_path / "out")])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_validate_understands_text_datasets(tmp_path, capsys):
    data = build_text(tmp_path)
    capsys.readouterr()
    validate.main([str(data)])
    assert capsys.readouterr().out.startswith(f"ok: {data}")
    (data / "identifiers.json").unlink()  # as built before the builder wrote it
    validate.main([str(data)])
    for split in ("train", "test"):  # rows that could not have come from this tokenizer
        meta = json.loads((data / split / "dataset.json").read_text())
        (data / split / "dataset.json").write_text(json.dumps({**meta, "vocab_size": VOCAB + 1}))
    with pytest.raises(UserError, match=f"vocab_size {VOCAB + 1} but .* holds {VOCAB} tokens"):
        validate.main([str(data)])


def test_the_standard_library_documentation_is_a_corpus(tmp_path):
    package = tmp_path / "lib" / "pkg"
    (tmp_path / "lib" / "test").mkdir(parents=True)
    package.mkdir()
    (package / "mod.py").write_text('"""Module help."""\ndef f():\n    """Function help."""\nclass C:\n    """Module help."""\n')
    (tmp_path / "lib" / "test" / "test_x.py").write_text('"""A test."""\n')
    docs = stdlib_documents(tmp_path / "lib")
    assert docs[:2] == ["Module help.", "Function help."], "repeats and tests left out"
    real = stdlib_documents()
    assert len(real) > 1000 and any(d.startswith("JSON (JavaScript Object Notation)") for d in real)
    assert real == stdlib_documents(), "the same corpus every time"


def test_stdlib_docs_without_input_and_no_text_at_all(tmp_path):
    with pytest.raises(UserError, match="no text: give UTF-8 files with --input, or --stdlib-docs"):
        build_text_dataset.main(["--output-dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_a_gpt2_size_model_trains_and_exports(tmp_path):
    """GPT-2's 50,257 ids end to end: the dataset, a few training steps, the export's config and embedding."""
    from safetensors import safe_open
    from models.lm.export import export
    data = build_text(tmp_path, docs=60, tokenizer=full_size_gpt2_layout(tmp_path / "gpt2"))
    run = tmp_path / "run"
    pretrain(data, run, ["global_batch_size=8", "epochs=1", "eval_interval=1", "eval_max_batches=1"])
    export(str(run), str(tmp_path / "exported"))
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (config["vocab_size"], config["pad_token_id"], config["eos_token_id"]) == (50_257, 50_256, 50_256)
    with safe_open(str(tmp_path / "exported" / "model.safetensors"), "pt") as weights:
        assert weights.get_slice("model.embed_tokens.weight").get_shape() == [50_257, HIDDEN]
