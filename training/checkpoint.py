"""Weights files in the reference layout (SPEC §9)."""
import os
from typing import Dict

import torch
from torch import nn

COMPILED_PREFIX = "_orig_mod."


def reference_state_dict(head: nn.Module) -> Dict[str, torch.Tensor]:
    """The loss head's weights keyed as the reference's compiled model saves them."""
    module = getattr(head, "_orig_mod", head)
    return {COMPILED_PREFIX + k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_weights(head: nn.Module, checkpoint_dir: str, step: int) -> str:
    """Write `<dir>/step_<N>` atomically: a crash mid-write never leaves a truncated file under that name."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, f"step_{step}")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(reference_state_dict(head), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
