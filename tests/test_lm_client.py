"""The exported LM as its users meet it: the Hugging Face client code exactly as written (AutoTokenizer without
trust_remote_code, generate with max_length and pad_token_id=eos, with and without attention_mask), run in a fresh
process with stdin closed and with a terminal; truncation, the context, the config and the files' modes. The model
is trained on a GPT-2-layout tokenizer (vocab.json + merges.txt, <|endoftext|> and no pad token)."""
import json
import os
import pty
import stat
import subprocess
import sys

import pytest
import torch

from tests._tiny_lm import QUIET_ENV, SEQ_LEN, build_text, last_step, pretrain, trained_gpt2_layout, write_corpus

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 6
PROMPTS = ["the cat", "a small red dog ran to the", "blue"]
CLIENT = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
name, prompts, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(name)
model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True)
batch = tokenizer(prompts, return_tensors="pt", padding=True)
width = batch.input_ids.shape[1]
alone = []
for prompt in prompts:
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(input_ids, max_length=input_ids.shape[1] + new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    alone.append(out[0, input_ids.shape[1]:].tolist())
masked = model.generate(batch.input_ids, attention_mask=batch.attention_mask, max_length=width + new, do_sample=False,
                        pad_token_id=tokenizer.eos_token_id)
unmasked = model.generate(batch.input_ids, max_length=width + new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
sampled = model.generate(batch.input_ids, max_length=width + new, do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
                         repetition_penalty=1.2, pad_token_id=tokenizer.eos_token_id)
print(json.dumps({"alone": alone, "masked": masked[:, width:].tolist(), "unmasked": unmasked[:, width:].tolist(),
                  "sampled": tokenizer.batch_decode(sampled, skip_special_tokens=True), "eos": tokenizer.eos_token_id,
                  "padded": bool((batch.attention_mask == 0).any())}))
"""
PROMPT_TEXT = ("custom code", "[y/N]", "trust_remote_code")


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm_gpt2")
    write_corpus(base / "corpus.txt")
    tokenizer = trained_gpt2_layout(base / "gpt2", base / "corpus.txt")
    data, run = build_text(base, tokenizer=tokenizer), base / "run"
    pretrain(data, run, ["global_batch_size=16", "epochs=4", "eval_interval=4", "lr=3e-3"])
    from models.lm.export import export
    export(str(run / f"step_{last_step(run)}"), str(base / "exported"))
    return base / "exported"


def run_client(exported, stdin):
    """The client code in a fresh Python; stdin "closed" (no stdin at all) or "terminal" (a pty nobody types in)."""
    args = [sys.executable, "-c", CLIENT, str(exported), json.dumps(PROMPTS), str(NEW_TOKENS)]
    env = dict(QUIET_ENV, HF_HUB_OFFLINE="1")
    if stdin == "closed":
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
    leader, follower = pty.openpty()
    try:
        return subprocess.run(args, stdin=follower, capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.close(leader)
        os.close(follower)


@pytest.mark.parametrize("stdin", ["closed", "terminal"])
def test_client_code_as_written(gpt2_export, stdin):
    result = run_client(gpt2_export, stdin)
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert not [text for text in PROMPT_TEXT if text in said], said[-2000:]   # no question asked
    assert "You are using a model of type" not in said and "attention mask" not in said.lower(), said[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["padded"]
    for row, want in enumerate(out["alone"]):
        for mode in ("masked", "unmasked"):
            got = out[mode][row]
            # a prompt alone may stop at eos; the batched row then holds the pad (eos) to the end
            assert got[:len(want)] == want, (mode, PROMPTS[row])
            assert set(got[len(want):]) <= {out["eos"]}, (mode, PROMPTS[row])
    assert any(len(w) > 0 for w in out["alone"])
    assert all(text.startswith(prompt) for text, prompt in zip(out["sampled"], PROMPTS))


def test_the_tokenizer_loads_without_a_word(gpt2_export):
    """AutoTokenizer.from_pretrained(dir), the client code's first line: nothing on stdout or stderr."""
    code = "import sys\nfrom transformers import AutoTokenizer\nAutoTokenizer.from_pretrained(sys.argv[1])\n"
    result = subprocess.run([sys.executable, "-c", code, str(gpt2_export)], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env=dict(QUIET_ENV, HF_HUB_OFFLINE="1"), timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.fixture(scope="module")
def client(gpt2_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoTokenizer.from_pretrained(gpt2_export), AutoModelForCausalLM.from_pretrained(gpt2_export, trust_remote_code=True)


def test_truncation_cuts_to_the_context(client):
    tokenizer, model = client
    long = " ".join(["the cat sat on the mat"] * 20)
    assert tokenizer.model_max_length == model.config.max_position_embeddings == SEQ_LEN
    assert len(tokenizer(long).input_ids) > SEQ_LEN
    assert len(tokenizer(long, truncation=True).input_ids) == SEQ_LEN
    assert tokenizer([long, "a"], truncation=True, padding=True, return_tensors="pt").input_ids.shape == (2, SEQ_LEN)


@pytest.mark.parametrize("lengths", [{"max_length": SEQ_LEN + 1}, {"max_new_tokens": SEQ_LEN}])
def test_a_request_past_the_context_fails_before_generating(client, monkeypatch, lengths):
    tokenizer, model = client
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError) as error:
        model.generate(tokenizer("the cat", return_tensors="pt").input_ids, pad_token_id=tokenizer.eos_token_id, **lengths)
    message = str(error.value)
    assert type(error.value).__name__ == "ContextLengthError" and "\n" not in message
    assert f"context of {SEQ_LEN}" in message and not calls, "refused before any forward pass"


def test_config_is_consistent(gpt2_export, client):
    tokenizer, model = client
    config = json.loads((gpt2_export / "config.json").read_text())
    assert "tie_embeddings" not in config and config["tie_word_embeddings"] is True   # one tying flag
    vocab = json.loads((gpt2_export.parent / "gpt2" / "vocab.json").read_text())
    assert config["vocab_size"] == len(vocab) == len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert config["eos_token_id"] == config["pad_token_id"] == tokenizer.eos_token_id == tokenizer.pad_token_id \
        == vocab["<|endoftext|>"], "no pad token: the eos token pads"
    assert config["num_hidden_layers"] == config["trm_num_layers"] * config["trm_num_loops"]
    assert config["max_position_embeddings"] == SEQ_LEN
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    generation = json.loads((gpt2_export / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (config["eos_token_id"], config["pad_token_id"])


def test_exported_files_are_readable_by_others(gpt2_export):
    umask = os.umask(0)
    os.umask(umask)
    for path in gpt2_export.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_the_model_masks_leading_padding_itself(client):
    """Without a mask, a left-padded row's logits equal the prompt's alone (the pad token is the eos token here)."""
    tokenizer, model = client
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(batch.input_ids, max_new_tokens=1, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
        for row, prompt in enumerate(PROMPTS):
            alone = model(tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1]
            torch.testing.assert_close(out.scores[0][row], alone, atol=1e-4, rtol=1e-4)
