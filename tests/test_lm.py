"""trm_lm end to end on generated text: build the dataset, train through pretrain.py, export, load with
transformers and check the unrolled Llama export and generate() against our own decoder and decoding loop."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset import build_text_dataset
from dataset.format import read_metadata
from models.layers import swiglu_hidden_width
from models.lm.core import RecursiveDecoder, describe_parameters, parameter_breakdown
from models.lm.decode import greedy_decode
from models.recursive_reasoning.trm_lm import LMLossHead, TRMLanguageModel
from evaluation.loop import eval_summary_line, token_perplexity
from training.loop import final_summary_line
from tests.helpers import read_set
from tests._tiny_lm import HIDDEN, SEQ_LEN, VOCAB, build_text, last_step, load_decoder, metrics, pretrain
from utils.errors import UserError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm")
    data, run = build_text(base), base / "run"
    pretrain(data, run, ["global_batch_size=16", "epochs=4", "eval_interval=4", "lr=3e-3"])
    weights = run / f"step_{last_step(run)}"
    exported = base / "exported"
    from models.lm.export import export
    breakdown = parameter_breakdown(export(str(weights), str(exported)))
    return {"data": data, "run": run, "weights": weights, "exported": exported, "breakdown": breakdown}


@pytest.fixture(scope="module")
def hf(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(trained["exported"])
    model = AutoModelForCausalLM.from_pretrained(trained["exported"], trust_remote_code=True).eval()
    return tokenizer, model


def our_decoder(trained) -> RecursiveDecoder:
    return load_decoder(trained["weights"])


# ------------------------------------------------------------------ dataset
def test_text_dataset_labels_are_the_next_tokens(trained):
    meta = read_metadata(trained["data"] / "train")
    # packed rows hold no padding, so no label id is ignored
    assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id) == (SEQ_LEN, VOCAB, 0, None)
    for split in ("train", "test"):
        fields = read_set(trained["data"] / split, "all")
        assert (fields["inputs"][:, 1:] == fields["labels"][:, :-1]).all()
        assert (fields["inputs"][1:, 0] == fields["labels"][:-1, -1]).all()  # rows continue the token stream
        assert fields["labels"].min() > 0  # pad never occurs in text
    assert (trained["data"] / "tokenizer" / "tokenizer.json").is_file()


def test_text_dataset_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        build_text_dataset.main(["--input", str(tmp_path / "missing.txt"), "--output-dir", str(tmp_path / "out")])
    (tmp_path / "short.txt").write_text("just a few words")
    with pytest.raises(UserError, match="cannot be split|fewer than"):
        build_text_dataset.main(["--input", str(tmp_path / "short.txt"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ model maths
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_breakdown_by_hand(tied):
    decoder = RecursiveDecoder(vocab_size=100, hidden_size=32, num_heads=2, num_layers=3, num_loops=4, expansion=2,
                               max_position_embeddings=16, tie_word_embeddings=tied)
    core = 3 * (4 * 32 * 32 + 3 * 32 * swiglu_hidden_width(32, 2))
    assert parameter_breakdown(decoder) == {"core": core, "vocabulary": 100 * 32 * (1 if tied else 2),
                                            "total": core + 100 * 32 * (1 if tied else 2)}


def test_parameter_breakdown_at_the_issue_size():
    """3 layers x 8 loops, hidden 512, 8 heads, context 1024, GPT-2's 50,257 tokens (the README's figures)."""
    with torch.device("meta"):
        tied, untied = (RecursiveDecoder(vocab_size=50257, hidden_size=512, num_heads=8, num_layers=3, num_loops=8,
                                         expansion=2, max_position_embeddings=1024, tie_word_embeddings=tie)
                        for tie in (True, False))
    assert parameter_breakdown(tied) == {"core": 6_684_672, "vocabulary": 25_731_584, "total": 32_416_256}
    assert parameter_breakdown(untied)["vocabulary"] == 2 * 25_731_584
    # the line printed at the start of training and by the export names the other tying choice's total too
    assert describe_parameters(tied) == ("parameters: core 6,684,672 (3 layers x 8 loops) + vocabulary 25,731,584 "
                                         "(50,257 x 512, tied) = 32,416,256; untied: 58,147,840")
    assert describe_parameters(untied).endswith("(50,257 x 512, untied) = 58,147,840; tied: 32,416,256")


def test_perplexity_weighs_tokens_not_rows():
    torch.manual_seed(0)
    head = LMLossHead(TRMLanguageModel(dict(vocab_size=20, seq_len=6, hidden_size=16, num_heads=2, num_layers=1,
                                            num_loops=2, expansion=2, forward_dtype="float32"))).eval()
    inputs = torch.randint(1, 20, (3, 6), dtype=torch.int32)
    labels = torch.randint(1, 20, (3, 6), dtype=torch.int32)
    labels[0, 1:] = -100  # one token in the first row, six in the others
    labels[2] = -100      # a padding row of the test iterator
    batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(3, dtype=torch.int32)}
    with torch.no_grad():
        _, _, metrics, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    token_nll = F.cross_entropy(outputs["logits"].flatten(0, 1), labels.long().flatten(), ignore_index=-100,
                                reduction="none").view(3, 6)
    sums = {k: float(v) for k, v in metrics.items()}
    reduced = token_perplexity(sums)
    assert reduced["tokens"] == 7 and "token_nll" not in sums and "tokens" not in sums
    assert reduced["token_loss"] == pytest.approx(float(token_nll.sum() / 7), rel=1e-6)
    assert reduced["token_loss"] != pytest.approx(float(metrics["lm_loss"] / metrics["count"]), rel=1e-3), "not a row mean"
    assert reduced["perplexity"] == pytest.approx(np.exp(reduced["token_loss"]))
    assert "token_nll" not in head.train()(carry=head.initial_carry(batch), batch=batch)[2], "training logs stay as they were"
    line = eval_summary_line(7, {"all": {**reduced, "accuracy": 0.5}})
    assert f"ppl {reduced['perplexity']:.2f}" in line
    assert "perplexity" in final_summary_line(7, 60.0, {"all": {**reduced, "exact_accuracy": 0.0, "count": 2}})


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
    records = metrics(trained["run"])
    losses = [r["train/lm_loss"] for r in records if "train/lm_loss" in r]
    assert len(losses) > 20 and losses[-1] < losses[0] - 1.0, (losses[0], losses[-1])
    held_out = [r for r in records if "all/perplexity" in r][-1]
    # The untrained model sits near the uniform guess (perplexity ~ vocabulary); a few seconds of training take the
    # held-out perplexity to a tenth of where training started.
    assert losses[0] > np.log(VOCAB) - 0.5
    assert held_out["all/perplexity"] == pytest.approx(np.exp(held_out["all/token_loss"]))
    assert held_out["all/perplexity"] < np.exp(losses[0]) / 10, (held_out["all/perplexity"], np.exp(losses[0]))


def test_export_directory_and_breakdown(trained):
    from safetensors.torch import load_file
    out = trained["exported"]
    config = json.loads((out / "config.json").read_text())
    # a Llama config (transformers reads it without custom code); the model class comes from the shipped file
    assert config["model_type"] == "llama" and config["auto_map"] == {"AutoModelForCausalLM": "modeling_trm_lm.TRMLMForCausalLM"}
    for name in ("modeling_trm_lm.py", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    weights = load_file(str(out / "model.safetensors"))
    vocabulary = sum(t.numel() for k, t in weights.items() if k.startswith(("model.embed_tokens.", "lm_head.")))
    norms = sum(t.numel() for k, t in weights.items() if "norm" in k)  # Llama's scales: ones, or 1/sqrt(H) folded in
    core = sum(t.numel() for t in weights.values()) - vocabulary - norms
    assert vocabulary == trained["breakdown"]["vocabulary"] == VOCAB * HIDDEN
    assert core == trained["breakdown"]["core"] * config["trm_num_loops"], "each loop stored as its own layers"
    card = (out / "README.md").read_text()
    assert f"{trained['breakdown']['core']:,}" in card and f"{trained['breakdown']['vocabulary']:,}" in card


def test_export_is_the_recursive_decoder_unrolled(trained):
    """Loaded without our code, the directory is a plain LlamaForCausalLM computing our decoder's logits."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(trained["exported"]).eval()
    assert type(plain) is LlamaForCausalLM and plain.config.num_hidden_layers == 2 * 2
    ids = torch.randint(2, VOCAB, (3, SEQ_LEN))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, our_decoder(trained)(ids), atol=2e-5, rtol=1e-5)


def test_export_command_prints_the_breakdown_and_refuses_bad_paths(trained, capsys, tmp_path):
    from models.lm import export
    export.main([str(trained["run"]), str(tmp_path / "out")])  # a run directory: its newest step
    printed = capsys.readouterr().out
    for part in ("core", "vocabulary", "total"):
        assert f"{trained['breakdown'][part]:,}" in printed, part
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (trained["exported"] / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as stop:
        export.main([str(tmp_path / "missing"), str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "not found" in err, err


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


# ------------------------------------------------------------------ the generate command line
def run_generate(capsys, *args):
    from models.lm import generate
    try:
        generate.main([str(a) for a in args])
    except SystemExit as e:
        captured = capsys.readouterr()
        return e.code, captured.out, captured.err
    captured = capsys.readouterr()
    return 0, captured.out, captured.err


def test_generate_cli_greedy_from_checkpoint_and_export_equals_our_decoding(trained, hf, capsys):
    tokenizer, _ = hf
    prompts = ["the cat sat on", "a big"]
    want = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = greedy_decode(our_decoder(trained), ids, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
        want.append(prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    prompt_args = [a for p in prompts for a in ("--prompt", p)]
    for source in (trained["run"], trained["weights"], trained["exported"]):
        code, out, err = run_generate(capsys, source, *prompt_args, "--max-new-tokens", 6, "--device", "cpu")
        assert code == 0, err
        assert out.rstrip("\n").split("\n\n") == want, source
    assert any(len(w) > len(p) for w, p in zip(want, prompts)), "something was generated"


def test_generate_cli_sampling_is_seeded(trained, capsys):
    args = [trained["exported"], "--prompt", "the", "--max-new-tokens", 8, "--temperature", 1.5, "--top-k", 50,
            "--top-p", 0.95, "--repetition-penalty", 1.2, "--device", "cpu"]
    runs = {seed: [run_generate(capsys, *args, "--seed", seed)[1] for _ in range(2)] for seed in range(4)}
    assert all(a == b for a, b in runs.values()), "the same seed gives the same text"
    assert len({a for a, _ in runs.values()}) > 1, "different seeds give different samples"


@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "--top-p=0.0 must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature=-1.0 must be >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0 must be at least 1"),
    (["--max-new-tokens", str(SEQ_LEN)], f"past this model's context of {SEQ_LEN}"),
])
def test_generate_cli_bad_options_are_one_line(trained, capsys, args, message):
    code, out, err = run_generate(capsys, trained["exported"], "--prompt", "the cat", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_generate_cli_bad_paths_are_one_line(trained, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    puzzle_run = tmp_path / "puzzle"
    puzzle_run.mkdir()
    (puzzle_run / "step_1").write_bytes(b"")
    (puzzle_run / "all_config.yaml").write_text("arch:\n  name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1\n")
    for path, message in ((tmp_path / "missing", "not found"), (tmp_path / "empty", "neither an exported model"),
                          (puzzle_run, "not trm_lm")):
        code, out, err = run_generate(capsys, path, "--prompt", "the")
        assert code == 2 and err.count("\n") == 1 and message in err, (path, err)


def test_the_progress_bar_shows_perplexity_for_language_models_and_exact_rows_for_puzzles():
    from training.loop import progress_postfix
    metrics = {"train/lm_loss": math.log(20.0), "train/accuracy": 0.25, "train/exact_accuracy": 0.0}
    assert progress_postfix(metrics, language_model=True) == {"loss": "2.996", "ppl": "20.0", "acc": "0.250"}
    assert progress_postfix(metrics, language_model=False) == {"loss": "2.996", "acc": "0.250", "exact": "0.000"}
