"""Hierarchical Reasoning Model (docs/network.md#hrm): a slow H module and a fast L module, each its own network.
Per ACT step H_cycles x L_cycles L updates and H_cycles H updates; only the final L and H updates get gradient."""
from dataclasses import dataclass

import pydantic
import torch

from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import RecursiveInnerBase, RecursiveModelConfig, ReasoningModule


class HierarchicalReasoningModel_ACTV1Config(RecursiveModelConfig):
    H_layers: pydantic.PositiveInt
    puzzle_emb_len: pydantic.NonNegativeInt = 0   # HRM: ceil(puzzle_emb_ndim / hidden_size)
    no_ACT_continue: bool = False                 # HRM learns Q-continue


@dataclass
class HierarchicalReasoningModel_ACTV1InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


class HierarchicalReasoningModel_ACTV1_Inner(RecursiveInnerBase):
    def __init__(self, config: HierarchicalReasoningModel_ACTV1Config):
        super().__init__(config)
        self.H_level = ReasoningModule(config, config.H_layers, self.total_seq_len)
        self.L_level = ReasoningModule(config, config.L_layers, self.total_seq_len)
        self.register_buffer("H_init", self.state_init(), persistent=True)
        self.register_buffer("L_init", self.state_init(), persistent=True)

    def empty_carry(self, batch_size: int, device=None):
        return HierarchicalReasoningModel_ACTV1InnerCarry(self.empty_latent(batch_size, device), self.empty_latent(batch_size, device))

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return HierarchicalReasoningModel_ACTV1InnerCarry(reset_rows(reset_flag, self.H_init, carry.z_H),
                                                          reset_rows(reset_flag, self.L_init, carry.z_L))

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        H_cycles, L_cycles = self.config.H_cycles, self.config.L_cycles
        z_H, z_L = carry.z_H, carry.z_L

        # All updates but the very last L and H ones run without gradient (the one-step gradient approximation).
        with torch.no_grad():
            for h in range(H_cycles):
                for l in range(L_cycles):
                    if not (h == H_cycles - 1 and l == L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if h != H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)

        new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H.detach(), z_L.detach())
        return (new_carry, *self.output_heads(z_H))


class HierarchicalReasoningModel_ACTV1(ACTModel):
    config_class = HierarchicalReasoningModel_ACTV1Config
    inner_class = HierarchicalReasoningModel_ACTV1_Inner
