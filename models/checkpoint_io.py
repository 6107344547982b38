"""Load weights saved by the reference code (SPEC §9) into our loss head: same key names, with or without the
`_orig_mod.` prefix that torch.compile adds."""
import os
from typing import Dict, Union

import torch
from torch import nn

COMPILED_PREFIX = "_orig_mod."
PUZZLE_EMB_KEY_SUFFIX = "puzzle_emb.weights"


def strip_compiled_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' not found: give the path of a weights file such as <checkpoint_path>/step_<N>")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_reference_checkpoint(head: nn.Module, source: Union[str, Dict[str, torch.Tensor]], strict: bool = True) -> None:
    """Load a reference-layout state dict (a file path or a dict) into `head` (an ACTLossHead, compiled or not).

    A puzzle-embedding table with another number of puzzles (fine-tuning on new puzzles) is replaced by its
    mean row, broadcast to this model's table (SPEC §6)."""
    state_dict = strip_compiled_prefix(read_state_dict(source) if isinstance(source, str) else source)
    module = getattr(head, "_orig_mod", head)
    own = module.state_dict()
    for key, value in list(state_dict.items()):
        if (key.endswith(PUZZLE_EMB_KEY_SUFFIX) and key in own and value.shape != own[key].shape
                and value.shape[1:] == own[key].shape[1:]):
            print(f"Puzzle embedding {tuple(value.shape)} -> {tuple(own[key].shape)}: initialised with the mean row")
            state_dict[key] = value.mean(dim=0, keepdim=True).expand(own[key].shape).contiguous()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint does not match the model (another arch or size?): missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    bad_shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state_dict and state_dict[k].shape != own[k].shape]
    if bad_shapes:
        raise ValueError(f"checkpoint shapes differ from the model (check the arch.* sizes): {'; '.join(bad_shapes[:3])}")
    module.load_state_dict(state_dict, strict=strict)
