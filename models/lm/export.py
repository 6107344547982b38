"""Export a trm_lm checkpoint as a Hugging Face model directory:

    python -m models.lm.export checkpoints/<project>/<run>/step_<N> exported/my-trm-lm

The recursive decoder (num_layers blocks applied num_loops times) is written as the Llama network it equals,
unrolled to num_layers x num_loops layers: the token scale sqrt(hidden) folded into the embedding (and, when tied,
its inverse into the final norm), each fused projection split into Llama's. config.json is therefore a Llama
config that transformers reads without custom code, so AutoTokenizer.from_pretrained(dir) asks nothing; its
auto_map names modeling_trm_lm.TRMLMForCausalLM for AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True), which adds self-masked padding and the up-front context check. Also written:
model.safetensors, generation_config.json, the dataset's tokenizer (model_max_length = the context) and a model
card with the parameter breakdown."""
import argparse
import math
import os
import shutil
from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf

from dataset.format import output_dir_problem, read_metadata
from dataset.text import load_tokenizer, save_tokenizer
from models.checkpoint_io import read_weights_file, strip_compiled_prefix
from models.lm import ARCH_NAME
from models.lm.core import RecursiveDecoder, describe_parameters, parameter_breakdown
from models.loading import find_weights
from utils.errors import UserError, user_errors

MODELING_FILE = Path(__file__).resolve().parent / "modeling_trm_lm.py"
DECODER_PREFIX = "model.decoder."


def is_exported(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def read_run(checkpoint: Path):
    """-> (arch dict, dataset dir) from the all_config.yaml beside the weights file."""
    config_path = checkpoint.parent / "all_config.yaml"
    if not config_path.is_file():
        raise UserError(f"{config_path} not found: export a step_<N> file from a pretrain.py run directory")
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    if config["arch"]["name"] != ARCH_NAME:
        raise UserError(f"run arch is {config['arch']['name']!r}, not trm_lm: only language-model runs (arch=trm_lm) export")
    data_dir = Path(config["data_paths"][0])
    if not data_dir.is_absolute() and not data_dir.exists():
        data_dir = checkpoint.parent / data_dir
    if not (data_dir / "tokenizer" / "tokenizer.json").is_file():
        raise UserError(f"no tokenizer in {data_dir}/tokenizer: the run's dataset must come from dataset.build_text_dataset")
    return config["arch"], data_dir


def load_decoder(weights: Path, arch: dict, data_dir: Path) -> RecursiveDecoder:
    """The run's decoder in float32, built as training built it (arch + the dataset's vocabulary and length)."""
    from models.recursive_reasoning.trm_lm import TRMLMConfig
    metadata = read_metadata(data_dir / "train")
    keys = {k: v for k, v in arch.items() if k in TRMLMConfig.model_fields}
    config = TRMLMConfig(**{**keys, "vocab_size": metadata.vocab_size, "seq_len": metadata.seq_len})
    decoder = RecursiveDecoder(**config.decoder_kwargs())
    state = {k.removeprefix(DECODER_PREFIX): v for k, v in strip_compiled_prefix(read_weights_file(str(weights))).items()}
    try:
        decoder.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{weights} does not match its all_config.yaml: {str(e).splitlines()[0]}") from None
    return decoder.eval()


def llama_config(decoder: RecursiveDecoder, text_tokenizer, rope_theta: float):
    from transformers import LlamaConfig
    vocab, hidden = decoder.embed_tokens.embedding_weight.shape
    first = decoder.layers[0]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=first.mlp.down_proj.weight.shape[1],
        num_hidden_layers=len(decoder.layers) * decoder.num_loops, num_attention_heads=first.self_attn.num_heads,
        num_key_value_heads=first.self_attn.num_heads, head_dim=first.self_attn.head_dim,
        max_position_embeddings=decoder.rotary_emb.cos_cached.shape[0], rms_norm_eps=decoder.eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, tie_word_embeddings=decoder.lm_head is None,
        pad_token_id=text_tokenizer.pad_id, eos_token_id=text_tokenizer.eos_id, bos_token_id=text_tokenizer.eos_id,
        attention_bias=False, mlp_bias=False, hidden_act="silu")
    config.architectures = ["LlamaForCausalLM"]
    config.auto_map = {"AutoModelForCausalLM": "modeling_trm_lm.TRMLMForCausalLM"}
    # The recursion the unrolled layers repeat (layer i is physical layer i % trm_num_layers), for readers of the file.
    config.trm_num_layers, config.trm_num_loops = len(decoder.layers), decoder.num_loops
    config.rope_theta = rope_theta  # the key transformers 4.x reads (5.x reads rope_parameters)
    return config


def llama_weights(decoder: RecursiveDecoder) -> Dict[str, torch.Tensor]:
    """Our decoder's weights under Llama's names, one copy per unrolled layer (safetensors stores no aliases)."""
    state = {k: v.detach().float() for k, v in decoder.state_dict().items()}
    hidden = state["embed_tokens.embedding_weight"].shape[1]
    scale = math.sqrt(hidden)
    tied = decoder.lm_head is None
    weights = {"model.embed_tokens.weight": state["embed_tokens.embedding_weight"] * decoder.embed_scale,
               "model.norm.weight": torch.full((hidden,), 1 / scale if tied else 1.0)}
    if not tied:
        weights["lm_head.weight"] = state["lm_head.weight"]
    ones = torch.ones(hidden)
    for index in range(len(decoder.layers) * decoder.num_loops):
        ours, theirs = f"layers.{index % len(decoder.layers)}.", f"model.layers.{index}."
        query, key, value = state[ours + "self_attn.qkv_proj.weight"].chunk(3, dim=0)
        gate, up = state[ours + "mlp.gate_up_proj.weight"].chunk(2, dim=0)
        layer = {"self_attn.q_proj": query, "self_attn.k_proj": key, "self_attn.v_proj": value,
                 "self_attn.o_proj": state[ours + "self_attn.o_proj.weight"], "mlp.gate_proj": gate, "mlp.up_proj": up,
                 "mlp.down_proj": state[ours + "mlp.down_proj.weight"], "input_layernorm": ones,
                 "post_attention_layernorm": ones}
        weights.update({f"{theirs}{name}.weight": tensor.clone().contiguous() for name, tensor in layer.items()})
    return weights


def hf_model_from_checkpoint(checkpoint) -> tuple:
    """A weights file or run directory -> (TRMLMForCausalLM holding its weights, the recursive decoder, the dataset
    directory): the model the exported directory loads as."""
    from models.lm.modeling_trm_lm import TRMLMForCausalLM
    weights = find_weights(checkpoint)
    arch, data_dir = read_run(weights)
    decoder = load_decoder(weights, arch, data_dir)
    config = llama_config(decoder, load_tokenizer(data_dir / "tokenizer"), arch.get("rope_theta", 10000.0))
    model = TRMLMForCausalLM(config)
    missing, unexpected = model.load_state_dict(llama_weights(decoder), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied: the embedding
    return model.eval(), decoder, data_dir


def model_card(name: str, config, decoder: RecursiveDecoder) -> str:
    counts = parameter_breakdown(decoder)
    stored = counts["vocabulary"] + counts["core"] * decoder.num_loops
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [trm, recursive, causal-lm, custom_code]
---
# {name}

A recursive causal language model (Tiny Recursive Model for text): {config.trm_num_layers} decoder layers (causal
attention with RoPE, SwiGLU, RMSNorm) applied {config.trm_num_loops} times, hidden size {config.hidden_size},
{config.num_attention_heads} heads, context {config.max_position_embeddings}, vocabulary {config.vocab_size:,}
(byte-level BPE), {'tied' if config.tie_word_embeddings else 'untied'} embeddings.

The weights are stored as the equal {config.num_hidden_layers}-layer Llama network (layer i repeats layer
i % {config.trm_num_layers}), so transformers' Llama code runs it; `trust_remote_code=True` adds
`modeling_trm_lm.py`, which masks the leading padding of batched prompts given without an `attention_mask`
and refuses a request past the context before generating. Fine-tuning this copy unties the loops.

| Parameters | Count |
|---|---|
| Core ({config.trm_num_layers} looped layers) | {counts['core']:,} |
| Vocabulary (embedding{'' if config.tie_word_embeddings else ' + output head'}) | {counts['vocabulary']:,} |
| Total | {counts['total']:,} |
| Stored (unrolled) | {stored:,} |

{describe_parameters(decoder)}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
input_ids = tokenizer(["Once upon a time", "The"], return_tensors="pt", padding=True).input_ids   # left padding
out = model.generate(input_ids, max_length=40, do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
                     repetition_penalty=1.2, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```
"""


def readable_by_others(directory: Path) -> None:
    """Give every exported file the mode the umask allows (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def export(checkpoint: str, out_dir: str, force: bool = False) -> RecursiveDecoder:
    """Write the model directory (absent, empty, or with `force` a previous export); -> the exported decoder."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out = Path(out_dir)
    problem = output_dir_problem(out, force, recognise=is_exported, what="model export")
    if problem:  # before the model is read
        raise UserError(problem.replace("--output-dir", "OUT_DIR"))
    model, decoder, data_dir = hf_model_from_checkpoint(checkpoint)
    config = model.config
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    GenerationConfig(pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
                     bos_token_id=config.bos_token_id).save_pretrained(out)
    save_file(llama_weights(decoder), str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(MODELING_FILE, out / MODELING_FILE.name)
    save_tokenizer(load_tokenizer(data_dir / "tokenizer"), out, model_max_length=config.max_position_embeddings)
    (out / "README.md").write_text(model_card(out.name, config, decoder))
    readable_by_others(out)
    return decoder


@user_errors
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trm_lm weights file <checkpoint_path>/step_<N>, or its run directory (newest step)")
    p.add_argument("out_dir")
    p.add_argument("--force", action="store_true", help="replace a model exported into OUT_DIR before")
    args = p.parse_args(argv)
    decoder = export(args.checkpoint, args.out_dir, args.force)
    print(f"Exported to {args.out_dir}\n  {describe_parameters(decoder)}")


if __name__ == "__main__":
    main()
