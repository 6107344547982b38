"""trm_lm end to end on generated text: build the dataset, train through pretrain.py, export, load with
transformers and check generate() against our own decoding loop."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dataset import build_text_dataset
from dataset.common import DatasetError, read_metadata, read_set
from models.checkpoint_io import load_reference_checkpoint
from models.layers import swiglu_hidden_width
from models.lm.core import RecursiveDecoder, padded_causal_mask, parameter_breakdown
from models.lm.decode import greedy_decode
from models.recursive_reasoning.trm_lm import LMLossHead, TRMLanguageModel

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1")
HIDDEN, HEADS, LAYERS, LOOPS, SEQ_LEN, VOCAB = 32, 2, 2, 2, 24, 300


def write_corpus(path: Path, docs: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "the cat dog sat on a mat and ran to the big small red blue house tree".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "." for _ in range(docs)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm")
    write_corpus(base / "corpus.txt")
    data, run = base / "text", base / "run"
    build_text_dataset.main(["--input", str(base / "corpus.txt"), "--output-dir", str(data), "--seq-len", str(SEQ_LEN),
                             "--vocab-size", str(VOCAB), "--test-fraction", "0.1"])
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretrain.py"), "arch=trm_lm", f"data_paths=[{data}]", "evaluators=[]",
         "global_batch_size=16", "epochs=4", "eval_interval=4", "lr=3e-3", "lr_warmup_steps=5", "device=cpu",
         f"+checkpoint_path={run}", f"arch.hidden_size={HIDDEN}", f"arch.num_heads={HEADS}", f"arch.num_layers={LAYERS}",
         f"arch.num_loops={LOOPS}", "arch.forward_dtype=float32"],
        cwd=base, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    step = max(int(p.name.split("_")[1]) for p in run.glob("step_*"))
    exported = base / "exported"
    from models.lm.export import export
    breakdown = export(str(run / f"step_{step}"), str(exported))
    return {"data": data, "run": run, "weights": run / f"step_{step}", "exported": exported, "breakdown": breakdown}


@pytest.fixture(scope="module")
def hf(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(trained["exported"])
    model = AutoModelForCausalLM.from_pretrained(trained["exported"], trust_remote_code=True).eval()
    return tokenizer, model


def our_decoder(trained) -> RecursiveDecoder:
    """The training-side model, loaded from the checkpoint the way pretrain.py built it."""
    arch = OmegaConf.to_container(OmegaConf.load(trained["run"] / "all_config.yaml"))["arch"]
    metadata = read_metadata(trained["data"] / "train")
    head = LMLossHead(TRMLanguageModel({**{k: v for k, v in arch.items() if k not in ("name", "loss")},
                                        "vocab_size": metadata.vocab_size, "seq_len": metadata.seq_len}))
    load_reference_checkpoint(head, str(trained["weights"]))
    return head.model.decoder.eval()


# ------------------------------------------------------------------ dataset
def test_text_dataset_labels_are_the_next_tokens(trained):
    meta = read_metadata(trained["data"] / "train")
    assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id) == (SEQ_LEN, VOCAB, 0, 0)
    for split in ("train", "test"):
        fields = read_set(trained["data"] / split, "all")
        assert (fields["inputs"][:, 1:] == fields["labels"][:, :-1]).all()
        assert (fields["inputs"][1:, 0] == fields["labels"][:-1, -1]).all()  # rows continue the token stream
        assert fields["labels"].min() > 0  # pad never occurs in text
    assert (trained["data"] / "tokenizer" / "tokenizer.json").is_file()


def test_text_dataset_bad_input_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="is not a file"):
        build_text_dataset.main(["--input", str(tmp_path / "missing.txt"), "--output-dir", str(tmp_path / "out")])
    (tmp_path / "short.txt").write_text("just a few words")
    with pytest.raises(DatasetError, match="cannot be split|fewer than"):
        build_text_dataset.main(["--input", str(tmp_path / "short.txt"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ model maths
def test_padded_causal_mask_by_hand():
    mask = padded_causal_mask(torch.tensor([[0, 1, 1]]))[0, 0].int().tolist()
    # query 0 is padding and sees only itself; tokens never see the padding key 0
    assert mask == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_breakdown_by_hand(tied):
    decoder = RecursiveDecoder(vocab_size=100, hidden_size=32, num_heads=2, num_layers=3, num_loops=4, expansion=2,
                               max_position_embeddings=16, tie_word_embeddings=tied)
    core = 3 * (4 * 32 * 32 + 3 * 32 * swiglu_hidden_width(32, 2))
    assert parameter_breakdown(decoder) == {"core": core, "vocabulary": 100 * 32 * (1 if tied else 2),
                                            "total": core + 100 * 32 * (1 if tied else 2)}


def test_loops_reuse_the_same_layers():
    torch.manual_seed(0)
    once = RecursiveDecoder(vocab_size=50, hidden_size=16, num_heads=2, num_layers=1, num_loops=1, expansion=2,
                            max_position_embeddings=8)
    twice = RecursiveDecoder(vocab_size=50, hidden_size=16, num_heads=2, num_layers=1, num_loops=2, expansion=2,
                             max_position_embeddings=8)
    twice.load_state_dict(once.state_dict())
    ids = torch.randint(1, 50, (2, 8))
    assert not torch.allclose(once(ids), twice(ids))
    # causal: a later token never changes earlier logits
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % 49) + 1
    assert torch.allclose(twice(ids)[:, :-1], twice(changed)[:, :-1], atol=1e-6)


# ------------------------------------------------------------------ training, export, generation
def test_training_lowers_the_loss(trained):
    records = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/lm_loss"] for r in records if "train/lm_loss" in r]
    assert losses[-1] < losses[0] - 1.0, (losses[0], losses[-1])
    evals = [r for r in records if "all/lm_loss" in r]
    assert evals and evals[-1]["all/lm_loss"] < np.log(VOCAB)


def test_export_directory_and_breakdown(trained):
    from safetensors.torch import load_file
    out = trained["exported"]
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    for name in ("configuration_trm_lm.py", "modeling_trm_lm.py", "core.py", "layers.py", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    weights = load_file(str(out / "model.safetensors"))
    total = sum(t.numel() for t in weights.values())
    vocabulary = sum(t.numel() for k, t in weights.items() if k.startswith(("decoder.embed_tokens.", "decoder.lm_head.")))
    assert trained["breakdown"] == {"core": total - vocabulary, "vocabulary": vocabulary, "total": total}
    assert vocabulary == VOCAB * HIDDEN
    card = (out / "README.md").read_text()
    assert f"{trained['breakdown']['core']:,}" in card and f"{trained['breakdown']['vocabulary']:,}" in card


def test_transformers_greedy_generate_matches_our_decoding(trained, hf):
    tokenizer, model = hf
    prompt = tokenizer("the cat sat on", return_tensors="pt")
    ours = greedy_decode(our_decoder(trained), prompt.input_ids, max_new_tokens=10,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    theirs = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    assert theirs.tolist() == ours[:, :theirs.shape[1]].tolist()
    assert theirs.shape[1] > prompt.input_ids.shape[1]


def test_batched_left_padded_generation_equals_unbatched(hf):
    tokenizer, model = hf
    prompts = ["the cat", "a small red dog ran to the", "blue"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and (batch.attention_mask == 0).any()
    batched = model.generate(**batch, max_new_tokens=8, do_sample=False)
    for row, prompt in enumerate(prompts):
        single = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)[0]
        continuation = batched[row, batch.input_ids.shape[1]:]
        want = single[len(tokenizer(prompt).input_ids):]  # a single row may stop early at eos
        assert continuation[:len(want)].tolist() == want.tolist(), prompt


def test_sampling_options(hf):
    tokenizer, model = hf
    batch = tokenizer(["the cat", "a dog ran"], return_tensors="pt", padding=True)
    greedy = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None)
    torch.manual_seed(0)
    assert model.generate(**batch, max_new_tokens=6, do_sample=True, top_k=1, eos_token_id=None).tolist() == greedy.tolist()
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                             repetition_penalty=1.3, eos_token_id=None)
    assert sampled.shape == greedy.shape and sampled.min() >= 0 and sampled.max() < VOCAB
    assert tokenizer.decode(sampled[0], skip_special_tokens=True).startswith("the cat")
