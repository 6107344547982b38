"""What every recursive reasoning model shares (docs/network.md): the config keys, the post-norm block, the shared
network net(h, injection) = blocks(h + injection), and the input embedding and output heads."""
import math
from typing import Literal, Optional, Tuple

import pydantic
import torch
from torch import nn

from models.common import trunc_normal_init_
from models.layers import Attention, CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding, SwiGLU, rms_norm
from models.sparse_embedding import CastedSparseEmbedding
from utils.errors import UserError

PositiveInt = pydantic.PositiveInt
NonNegativeInt = pydantic.NonNegativeInt


class DataSizes(pydantic.BaseModel):
    """What every architecture's config takes from the data and the run (docs/network.md#model-interface)."""
    model_config = pydantic.ConfigDict(extra="forbid")  # a misspelt arch key must not be ignored

    batch_size: PositiveInt
    seq_len: PositiveInt
    vocab_size: PositiveInt
    num_puzzle_identifiers: PositiveInt
    causal: bool = False


def heads_divide_width(config):
    """The attention heads split the width evenly (a model_validator of the configs with heads)."""
    if config.hidden_size % config.num_heads:
        raise UserError(f"arch.hidden_size={config.hidden_size} must be divisible by arch.num_heads={config.num_heads}")
    return config


def last_cycle_with_grad(step, state, cycles: int):
    """`cycles` applications of `step` to `state`, all but the last without gradient (truncated back-propagation
    through the loops, docs/network.md#trm-recursion)."""
    with torch.no_grad():
        for _ in range(cycles - 1):
            state = step(state)
    return step(state)


class RecursiveModelConfig(DataSizes):
    # hidden_size first: errors are reported in field order, and puzzle_emb_ndim is ${.hidden_size} in the YAML
    hidden_size: PositiveInt
    puzzle_emb_ndim: NonNegativeInt = 0
    puzzle_emb_len: NonNegativeInt = 16   # 0: ceil(puzzle_emb_ndim / hidden_size)

    H_cycles: PositiveInt
    L_cycles: PositiveInt
    H_layers: NonNegativeInt = 0
    L_layers: PositiveInt

    expansion: pydantic.PositiveFloat
    num_heads: PositiveInt
    pos_encodings: Literal["rope", "learned", "none"]
    rms_norm_eps: pydantic.PositiveFloat = 1e-5
    rope_theta: pydantic.PositiveFloat = 10000.0
    mlp_t: bool = False

    halt_max_steps: PositiveInt
    halt_exploration_prob: pydantic.confloat(ge=0.0, le=1.0)
    no_ACT_continue: bool = True

    forward_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"

    _heads_divide_width = pydantic.model_validator(mode="after")(lambda self: heads_divide_width(self))


def puzzle_emb_rows(config: RecursiveModelConfig) -> int:
    """Puzzle-embedding rows in front of the tokens: puzzle_emb_len, or for 0 ceil(puzzle_emb_ndim / hidden_size)."""
    return config.puzzle_emb_len or -(config.puzzle_emb_ndim // -config.hidden_size)


class ReasoningBlock(nn.Module):
    """Post-norm block: h = norm(h + mixer(h)); h = norm(h + mlp(h)). The mixer is attention, or with mlp_t a
    SwiGLU across the sequence, whose residual norm (as in the reference) also runs across the sequence."""

    def __init__(self, config: RecursiveModelConfig, seq_len: int):
        super().__init__()
        self.norm_eps = config.rms_norm_eps
        self.mlp_t_mode = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(seq_len, config.expansion, axis=1)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads, causal=config.causal)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        if self.mlp_t_mode:
            hidden_states = rms_norm(hidden_states + self.mlp_t(hidden_states), self.norm_eps, dim=1)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin, hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    """net(h, injection) = blocks(h + injection)."""

    def __init__(self, config: RecursiveModelConfig, num_layers: int, seq_len: int):
        super().__init__()
        self.layers = nn.ModuleList([ReasoningBlock(config, seq_len) for _ in range(num_layers)])

    def forward(self, hidden_states: torch.Tensor, injection, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        hidden_states = hidden_states + injection
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin)
        return hidden_states


class RecursiveInnerBase(nn.Module):
    """Input embedding (puzzle rows in front of the tokens) and the lm / Q heads."""

    def __init__(self, config: RecursiveModelConfig):
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, config.forward_dtype)
        D = config.hidden_size
        self.embed_scale = math.sqrt(D)
        embed_init_std = 1.0 / self.embed_scale

        self.puzzle_emb_len = puzzle_emb_rows(config)
        self.total_seq_len = config.seq_len + self.puzzle_emb_len

        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=embed_init_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        with torch.no_grad():  # Q starts at "do not halt" (sigmoid(-5) ~ 0.007) so early training runs long.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

        if config.puzzle_emb_ndim > 0:
            if config.puzzle_emb_ndim > self.puzzle_emb_len * D:
                raise UserError(f"arch.puzzle_emb_ndim={config.puzzle_emb_ndim} does not fit in arch.puzzle_emb_len="
                                f"{config.puzzle_emb_len} rows of hidden_size={D}; raise puzzle_emb_len or set it to 0 (auto)")
            self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                                                    batch_size=config.batch_size, init_std=0, cast_to=self.forward_dtype)
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(D // config.num_heads, self.total_seq_len, base=config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(self.total_seq_len, D, init_std=embed_init_std, cast_to=self.forward_dtype)

    def state_init(self) -> torch.Tensor:
        """A fresh initial latent [D], truncated normal std 1, in the forward dtype (registered as a buffer)."""
        return trunc_normal_init_(torch.empty(self.config.hidden_size, dtype=self.forward_dtype), std=1.0)

    def empty_latent(self, batch_size: int, device) -> torch.Tensor:
        return torch.zeros(batch_size, self.total_seq_len, self.config.hidden_size, dtype=self.forward_dtype, device=device)

    def cos_sin(self) -> Optional[CosSin]:
        return self.rotary_emb() if hasattr(self, "rotary_emb") else None

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.puzzle_emb_len > 0:
            batch, D = inputs.shape[0], self.config.hidden_size
            if hasattr(self, "puzzle_emb"):
                puzzle = self.puzzle_emb(puzzle_identifiers)
                pad = self.puzzle_emb_len * D - puzzle.shape[-1]
                if pad > 0:
                    puzzle = torch.nn.functional.pad(puzzle, (0, pad))
            else:  # no puzzle embedding: the prefix rows are zero scratch space
                puzzle = embedding.new_zeros(batch, self.puzzle_emb_len * D)
            embedding = torch.cat((puzzle.view(batch, self.puzzle_emb_len, D), embedding), dim=-2)
        if hasattr(self, "embed_pos"):
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def output_heads(self, z_H: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        logits = self.lm_head(z_H[:, self.puzzle_emb_len:])
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return logits, (q_logits[..., 0], q_logits[..., 1])
