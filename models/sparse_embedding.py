"""Puzzle embeddings (docs/network.md#puzzle-embeddings): a table trained sparsely, one row per puzzle id, by sign-SGD.

The table is a buffer, not a parameter: in training the batch's rows are copied into `local_weights`, the only
tensor that receives a gradient, and the optimiser writes the update back into `weights` for those ids."""
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from models.common import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std), persistent=True)
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_ids.shape[0]:
            raise ValueError(f"puzzle embedding built for batch_size={self.local_ids.shape[0]} (per rank) got a training "
                             f"batch of {ids.shape[0]} rows; build the model with the per-rank batch size")
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)


def sign_sgd_sparse_update_(weights: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, lr: float, weight_decay: float) -> None:
    """Sum the gradient rows per unique id, then p = p * (1 - lr*wd) - lr * sign(grad) on those rows only."""
    unique_ids, inverse = ids.to(torch.long).unique(return_inverse=True)
    summed = torch.zeros(unique_ids.shape[0], grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    rows = weights[unique_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed).to(rows.dtype), alpha=-lr)
    weights[unique_ids] = rows


class CastedSparseEmbeddingSignSGD_Distributed(Optimizer):
    """Sign-SGD for CastedSparseEmbedding: pass `embedding.buffers()` as params. With several ranks the batch rows
    and their gradients are gathered from every rank first, so all ranks apply the same update."""

    def __init__(self, params: Iterable[torch.Tensor], world_size: int, lr: float = 1e-3, weight_decay: float = 1e-2):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, world_size=world_size))

    @staticmethod
    def _roles(group):
        local_weights = local_ids = weights = None
        for p in group["params"]:
            if p.requires_grad:
                local_weights = p
            elif not p.is_floating_point():
                local_ids = p
            else:
                weights = p
        if local_weights is None or local_ids is None or weights is None or len(group["params"]) != 3:
            raise ValueError("CastedSparseEmbeddingSignSGD_Distributed expects the three buffers of a CastedSparseEmbedding "
                             "(weights, local_weights, local_ids): pass puzzle_emb.buffers()")
        return local_weights, local_ids, weights

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            local_weights, local_ids, weights = self._roles(group)
            if local_weights.grad is None:
                continue
            grads, ids = local_weights.grad, local_ids
            world_size = group["world_size"]
            if world_size > 1 and dist.is_available() and dist.is_initialized():
                all_grads = torch.empty((world_size * grads.shape[0], grads.shape[1]), dtype=grads.dtype, device=grads.device)
                all_ids = torch.empty(world_size * ids.shape[0], dtype=ids.dtype, device=ids.device)
                dist.all_gather_into_tensor(all_grads, grads.contiguous())
                dist.all_gather_into_tensor(all_ids, ids.contiguous())
                grads, ids = all_grads, all_ids
            sign_sgd_sparse_update_(weights, ids, grads, group["lr"], group["weight_decay"])
