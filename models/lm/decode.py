"""Our own greedy decoding loop over the recursive decoder (the reference the exported model's generate() is checked
against): re-run the whole prefix each step, append the argmax, stop at max_new_tokens or when every row emitted eos."""
from typing import Optional

import torch

from models.lm.core import RecursiveDecoder


@torch.no_grad()
def greedy_decode(decoder: RecursiveDecoder, input_ids: torch.Tensor, max_new_tokens: int,
                  eos_token_id: Optional[int] = None, pad_token_id: int = 0) -> torch.Tensor:
    """input_ids [B, S] (no padding) -> [B, S + new]; rows that finished are filled with pad_token_id."""
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        next_ids = decoder(input_ids)[:, -1].argmax(-1)
        next_ids = torch.where(finished, pad_token_id, next_ids)
        input_ids = torch.cat([input_ids, next_ids[:, None].to(input_ids.dtype)], dim=1)
        if eos_token_id is not None:
            finished |= next_ids == eos_token_id
            if finished.all():
                break
    return input_ids
