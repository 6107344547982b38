"""Generate text with a recursive causal LM, from a training checkpoint or an exported model directory:

    python -m models.lm.generate checkpoints/<project>/<run> --prompt "Once upon a time" --max-new-tokens 50
    python -m models.lm.generate exported/my-trm-lm --prompt "The cat" --prompt "A dog" --temperature 0.8 --top-p 0.95

A checkpoint (a step_<N> weights file, or a run directory: its newest step) is loaded as the same Hugging Face
model the export writes, so both paths decode with transformers' generate(). --temperature 0 (the default) is
greedy; several --prompt run as one left-padded batch."""
import argparse
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from models.lm.export import hf_model_from_checkpoint, is_exported
from models.loading import find_weights
from utils.errors import UserError, user_errors


def load_model(path: str) -> Tuple[object, object]:
    """-> (model in eval mode, tokenizer) from an exported directory or a trm_lm checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # small models load in an instant; keep stderr for errors
    path = Path(path)
    if is_exported(path):
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval(), AutoTokenizer.from_pretrained(path)
    if not path.exists():
        raise UserError(f"'{path}' not found: give an exported model directory, a trm_lm run directory or a step_<N> file")
    try:
        weights = find_weights(path)
    except UserError:
        raise UserError(f"'{path}' is neither an exported model (config.json + model.safetensors) nor holds step_<N> "
                        f"weights: give an exported directory or a trm_lm run") from None
    model, _, data_dir = hf_model_from_checkpoint(weights)  # a run that is not trm_lm says so
    return model, AutoTokenizer.from_pretrained(data_dir / "tokenizer")


def check_options(args: argparse.Namespace) -> None:
    """Impossible sampling settings -> one line, before the model is loaded."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens={args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        raise UserError(f"--temperature={args.temperature} must be >= 0 (0: greedy)")
    if args.top_k < 0:
        raise UserError(f"--top-k={args.top_k} must be >= 0 (0: off)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p={args.top_p} must be in (0, 1] (1: off)")
    if args.repetition_penalty <= 0:
        raise UserError(f"--repetition-penalty={args.repetition_penalty} must be > 0 (1: off)")
    if any(not p for p in args.prompt):
        raise UserError("an empty --prompt: give some text to continue")


def generation_kwargs(temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                      max_new_tokens: int) -> Dict[str, object]:
    """Our options as generate() keywords; temperature 0 means greedy, and top-k 0 / top-p 1 switch those filters off
    (transformers would otherwise apply its default top_k=50)."""
    kwargs = {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty}
    if temperature == 0:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}


def generate(model, tokenizer, prompts: Sequence[str], device=None, **kwargs) -> List[str]:
    """-> the continuation of each prompt (text after it, special tokens dropped)."""
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    if device is not None:
        model, batch = model.to(device), batch.to(device)
    try:
        out = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **kwargs)
    except ValueError as e:
        # The model's up-front context check, as one line (its class comes from the model directory's own module).
        if type(e).__name__ != "ContextLengthError":
            raise
        raise UserError(str(e)) from None
    return tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)


def run(args: argparse.Namespace) -> List[str]:
    import torch
    from utils.device import pick_device
    check_options(args)
    device = pick_device(args.device, flag="--device ")
    model, tokenizer = load_model(args.model)
    torch.manual_seed(args.seed)
    return generate(model, tokenizer, args.prompt, device=device,
                    **generation_kwargs(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.max_new_tokens))


@user_errors
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an exported model directory, a trm_lm run directory or a step_<N> weights file")
    p.add_argument("--prompt", action="append", required=True, help="text to continue (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = p.parse_args(argv)
    texts = run(args)
    print("\n\n".join(prompt + text for prompt, text in zip(args.prompt, texts)))


if __name__ == "__main__":
    main()
