"""Analytic model FLOPs of a TRM (docs/network.md): matrix products only, a multiply-add counted as 2 FLOPs.

Elementwise work (norms, activations, the optimiser) is left out, as MFU conventionally does."""
from dataclasses import dataclass

from models.layers import swiglu_hidden_width


@dataclass(frozen=True)
class TRMShape:
    batch_size: int
    seq_len: int             # tokens, without the puzzle-embedding rows
    puzzle_emb_len: int
    vocab_size: int
    hidden_size: int
    expansion: float
    num_heads: int
    mlp_t: bool
    L_layers: int
    H_cycles: int
    L_cycles: int

    @property
    def positions(self) -> int:
        return self.seq_len + self.puzzle_emb_len


def swiglu_flops(rows: int, width: int, hidden: int) -> int:
    """gate_up (width -> 2*hidden) and down (hidden -> width) over `rows` vectors."""
    return 2 * rows * width * 2 * hidden + 2 * rows * hidden * width


def attention_flops(batch: int, positions: int, width: int) -> int:
    """Fused qkv and output projections, plus QK^T and attention @ V over all heads."""
    projections = 2 * batch * positions * width * (3 * width + width)
    scores_and_mix = 2 * 2 * batch * positions * positions * width
    return projections + scores_and_mix


def block_flops(s: TRMShape) -> int:
    B, T, D = s.batch_size, s.positions, s.hidden_size
    if s.mlp_t:  # mixes the T positions of each of the B*D channels
        mixer = swiglu_flops(B * D, T, swiglu_hidden_width(T, s.expansion))
    else:
        mixer = attention_flops(B, T, D)
    return mixer + swiglu_flops(B * T, D, swiglu_hidden_width(D, s.expansion))


def head_flops(s: TRMShape) -> int:
    """lm_head over the tokens, q_head over the first position."""
    return 2 * s.batch_size * s.seq_len * s.hidden_size * s.vocab_size + 2 * s.batch_size * s.hidden_size * 2


def act_step_flops(s: TRMShape, training: bool) -> int:
    """One ACT step: H_cycles x (L_cycles + 1) applications of the L_layers-block network, then the heads.

    Training back-propagates only the last H cycle and the heads, at twice their forward cost (gradients for
    both the input and the weights of every product)."""
    net = s.L_layers * block_flops(s)
    calls_per_cycle = s.L_cycles + 1
    forward = s.H_cycles * calls_per_cycle * net + head_flops(s)
    if not training:
        return forward
    return forward + 2 * (calls_per_cycle * net + head_flops(s))
