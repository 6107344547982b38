"""Tiny Recursive Model (docs/network.md#trm-recursion): one small network refines a latent z_L and an answer state z_H."""
from dataclasses import dataclass

import torch

from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import RecursiveInnerBase, RecursiveModelConfig, ReasoningModule


class TinyRecursiveReasoningModel_ACTV1Config(RecursiveModelConfig):
    pass


@dataclass
class TinyRecursiveReasoningModel_ACTV1InnerCarry:
    z_H: torch.Tensor  # [B, puzzle_emb_len + seq_len, D]
    z_L: torch.Tensor


class TinyRecursiveReasoningModel_ACTV1_Inner(RecursiveInnerBase):
    def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
        super().__init__(config)
        self.L_level = ReasoningModule(config, config.L_layers, self.total_seq_len)  # the one shared network
        self.register_buffer("H_init", self.state_init(), persistent=True)
        self.register_buffer("L_init", self.state_init(), persistent=True)

    def empty_carry(self, batch_size: int, device=None):
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(self.empty_latent(batch_size, device), self.empty_latent(batch_size, device))

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(reset_rows(reset_flag, self.H_init, carry.z_H),
                                                           reset_rows(reset_flag, self.L_init, carry.z_L))

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        net = self.L_level
        z_H, z_L = carry.z_H, carry.z_L

        def H_cycle(z_H, z_L):
            for _ in range(self.config.L_cycles):
                z_L = net(z_L, z_H + x, cos_sin)
            z_H = net(z_H, z_L, cos_sin)
            return z_H, z_L

        # Only the last H cycle is back-propagated.
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = H_cycle(z_H, z_L)
        z_H, z_L = H_cycle(z_H, z_L)

        new_carry = TinyRecursiveReasoningModel_ACTV1InnerCarry(z_H.detach(), z_L.detach())
        return (new_carry, *self.output_heads(z_H))


class TinyRecursiveReasoningModel_ACTV1(ACTModel):
    config_class = TinyRecursiveReasoningModel_ACTV1Config
    inner_class = TinyRecursiveReasoningModel_ACTV1_Inner
