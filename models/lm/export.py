"""Export a trm_lm checkpoint as a Hugging Face model directory with custom code:

    python -m models.lm.export checkpoints/<project>/<run>/step_<N> exported/my-trm-lm

writes config.json (with auto_map), the configuration/modeling code and the layers it uses, model.safetensors,
the dataset's tokenizer files and a README model card, then prints the parameter breakdown. Load with
AutoTokenizer.from_pretrained(dir) and AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)."""
import argparse
import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from dataset.format import output_dir_problem, read_metadata
from dataset.build_text_dataset import TOKENIZER_FILES
from models.loading import find_weights
from models.checkpoint_io import strip_compiled_prefix
from models.lm import ARCH_NAME
from training.checkpoint import read_weights_file
from utils.errors import UserError, user_errors

PACKAGE = Path(__file__).resolve().parent
MODELS = PACKAGE.parent
# Files shipped with the model; our absolute imports become relative ones inside the exported directory.
CODE_FILES = {"configuration_trm_lm.py": PACKAGE / "configuration_trm_lm.py", "modeling_trm_lm.py": PACKAGE / "modeling_trm_lm.py",
              "core.py": PACKAGE / "core.py", "layers.py": MODELS / "layers.py", "common.py": MODELS / "common.py"}
DECODER_PREFIX = "model.decoder."


class ExportError(UserError):
    pass


def is_exported(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def relative_imports(source: str) -> str:
    return re.sub(r"^from models(?:\.lm)?\.(\w+) import", r"from .\1 import", source, flags=re.M)


def read_run(checkpoint: Path):
    """-> (arch dict, dataset dir) from the all_config.yaml beside the weights file."""
    config_path = checkpoint.parent / "all_config.yaml"
    if not config_path.is_file():
        raise ExportError(f"{config_path} not found: export a step_<N> file from a pretrain.py run directory")
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    if config["arch"]["name"] != ARCH_NAME:
        raise ExportError(f"run arch is {config['arch']['name']!r}, not trm_lm: only language-model runs (arch=trm_lm) export")
    data_dir = Path(config["data_paths"][0])
    if not data_dir.is_absolute() and not data_dir.exists():
        data_dir = checkpoint.parent / data_dir
    if not (data_dir / "tokenizer" / "tokenizer.json").is_file():
        raise ExportError(f"no tokenizer in {data_dir}/tokenizer: the run's dataset must come from dataset.build_text_dataset")
    return config["arch"], data_dir


def hf_config(arch: dict, vocab_size: int, seq_len: int, tokenizer_dir: Path):
    from tokenizers import Tokenizer
    from models.lm.configuration_trm_lm import TRMLMConfig
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    config = TRMLMConfig(vocab_size=vocab_size, hidden_size=arch["hidden_size"], num_heads=arch["num_heads"],
                         num_layers=arch["num_layers"], num_loops=arch["num_loops"], expansion=arch["expansion"],
                         max_position_embeddings=arch.get("max_position_embeddings") or seq_len,
                         rope_theta=arch.get("rope_theta", 10000.0), rms_norm_eps=arch.get("rms_norm_eps", 1e-5),
                         tie_word_embeddings=arch.get("tie_word_embeddings", True), pad_token_id=0, eos_token_id=eos,
                         bos_token_id=eos)
    config.auto_map = {"AutoConfig": "configuration_trm_lm.TRMLMConfig",
                       "AutoModelForCausalLM": "modeling_trm_lm.TRMLMForCausalLM"}
    config.architectures = ["TRMLMForCausalLM"]
    return config


def model_card(name: str, config, breakdown: dict) -> str:
    return f"""---
library_name: transformers
tags: [trm, recursive, causal-lm]
---
# {name}

A recursive causal language model (Tiny Recursive Model for text): {config.num_layers} decoder layers (causal attention
with RoPE, SwiGLU) applied {config.num_loops} times, hidden size {config.hidden_size}, {config.num_heads} heads,
context {config.max_position_embeddings}, vocabulary {config.vocab_size:,} (byte-level BPE),
{'tied' if config.tie_embeddings else 'untied'} embeddings.

| Parameters | Count |
|---|---|
| Core (looped layers) | {breakdown['core']:,} |
| Vocabulary (embeddings{'' if config.tie_embeddings else ' + output head'}) | {breakdown['vocabulary']:,} |
| Total | {breakdown['total']:,} |

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
inputs = tokenizer(["Once upon a time"], return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.9)[0]))
```
"""


def hf_model_from_checkpoint(checkpoint) -> tuple:
    """A weights file or run directory -> (TRMLMForCausalLM holding its weights in float32, the dataset directory),
    the same model the exported directory loads as."""
    from models.lm.modeling_trm_lm import TRMLMForCausalLM

    weights = find_weights(checkpoint)
    arch, data_dir = read_run(weights)
    metadata = read_metadata(data_dir / "train")
    model = TRMLMForCausalLM(hf_config(arch, metadata.vocab_size, metadata.seq_len, data_dir / "tokenizer"))
    state = {k.removeprefix(DECODER_PREFIX): v for k, v in strip_compiled_prefix(read_weights_file(str(weights))).items()}
    try:
        model.decoder.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(f"{weights} does not match its all_config.yaml: {str(e).splitlines()[0]}") from None
    return model.eval(), data_dir


def export(checkpoint: str, out_dir: str, force: bool = False) -> dict:
    """Write the model directory (absent, empty, or with `force` a previous export); -> the parameter breakdown."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig
    from models.lm.core import parameter_breakdown

    out = Path(out_dir)
    problem = output_dir_problem(out, force, recognise=is_exported, what="model export")
    if problem:  # before the model is read
        raise ExportError(problem.replace("--output-dir", "OUT_DIR"))
    model, data_dir = hf_model_from_checkpoint(checkpoint)
    config, decoder = model.config, model.decoder
    breakdown = parameter_breakdown(decoder)

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    GenerationConfig(pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
                     bos_token_id=config.bos_token_id, use_cache=False).save_pretrained(out)
    save_file({f"decoder.{k}": v.float().contiguous() for k, v in decoder.state_dict().items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    for name, source in CODE_FILES.items():
        (out / name).write_text(relative_imports(source.read_text()))
    for name in TOKENIZER_FILES:
        shutil.copy(data_dir / "tokenizer" / name, out / name)
    (out / "README.md").write_text(model_card(out.name, config, breakdown))
    return breakdown


@user_errors
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trm_lm weights file <checkpoint_path>/step_<N>, or its run directory (newest step)")
    p.add_argument("out_dir")
    p.add_argument("--force", action="store_true", help="replace a model exported into OUT_DIR before")
    args = p.parse_args(argv)
    breakdown = export(args.checkpoint, args.out_dir, args.force)
    print(f"Exported to {args.out_dir}\n"
          f"  core (looped layers): {breakdown['core']:>12,}\n"
          f"  vocabulary:           {breakdown['vocabulary']:>12,}\n"
          f"  total:                {breakdown['total']:>12,}")


if __name__ == "__main__":
    main()
