"""Building blocks of the recursive reasoning models (docs/network.md#block): weights are kept in float32 and cast to the
forward dtype on use; norms and rotary embeddings are computed in float32."""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.common import trunc_normal_init_
from utils.errors import UserError

CosSin = Tuple[torch.Tensor, torch.Tensor]


def swiglu_hidden_width(width: int, expansion: float, multiple: int = 256) -> int:
    """round(expansion * width * 2/3), rounded up to a multiple of 256."""
    hidden = round(expansion * width * 2 / 3)
    return -(hidden // -multiple) * multiple


def rms_norm(hidden_states: torch.Tensor, eps: float = 1e-5, dim: int = -1) -> torch.Tensor:
    """RMSNorm without a learned scale, in float32, returned in the input dtype."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.square().mean(dim, keepdim=True)
    return (hidden_states * torch.rsqrt(variance + eps)).to(input_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, head_dim]; cos, sin [S, head_dim] in float32."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x32 = x.to(cos.dtype)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_position_embeddings: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(max_position_embeddings, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def _softmax_float32(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scores * scale) over the last axis, in float32 (scale > 0)."""
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if torch.compiler.is_compiling():
        # Spelled out, and scaled after the max, so that Inductor fuses one plain kernel (instead of its CPU flash
        # kernel, or a scaled-softmax pattern with finiteness checks that runs 1.2x slower).
        exp = ((scores - scores.amax(-1, keepdim=True)) * scale).exp()
        return exp / exp.sum(-1, keepdim=True)
    return (scores * scale).softmax(-1)


def _softmax_backward(probs: torch.Tensor, d_probs: torch.Tensor) -> torch.Tensor:
    """d scores of a softmax given its output (in float32, returned in probs' dtype)."""
    compute_dtype = torch.promote_types(probs.dtype, torch.float32)
    p, dp = probs.to(compute_dtype), d_probs.to(compute_dtype)
    return (p * (dp - (p * dp).sum(-1, keepdim=True))).to(probs.dtype)


class BlockAttentionFunction(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v over [..., S, head_dim], `block` queries at a time, with a hand-written backward.

    For bfloat16 on CPUs without AMX: the fused SDPA kernel computes in float32 there, at a fifth of the bf16
    matrix rate; bf16 products with a float32 softmax between them run twice as fast. The scores are rounded to
    bf16 before the softmax (as in transformers' eager attention); blocks bound the memory of the score matrix.
    The backward reuses the stored bf16 probabilities instead of recomputing the softmax, and forms the key and
    value gradients as [head_dim, S] products, whose operands are both in their stored layout (autograd's
    transposed-operand product runs at 60% of that rate)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block: int) -> torch.Tensor:
        seq, head_dim = query.shape[-2:]
        q, k, v = (t.reshape(-1, seq, head_dim) for t in (query, key, value))
        scale = head_dim ** -0.5
        k_t = k.transpose(1, 2)
        probs = [_softmax_float32(torch.bmm(q[:, start:start + block], k_t), scale).to(v.dtype)
                 for start in range(0, seq, block)]
        ctx.block, ctx.scale, ctx.shape = block, scale, query.shape
        ctx.save_for_backward(q, k, v, *probs)
        return torch.cat([torch.bmm(p, v) for p in probs], 1).view(query.shape)

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        q, k, v, *probs = ctx.saved_tensors
        block, seq = ctx.block, q.shape[1]
        d_out = d_out.reshape(q.shape)
        v_t = v.transpose(1, 2)
        d_q, d_k_t, d_v_t = [], 0, 0
        accumulate = torch.promote_types(q.dtype, torch.float32)
        for p, start in zip(probs, range(0, seq, block)):
            d_out_block, q_block = d_out[:, start:start + block], q[:, start:start + block]
            d_scores = _softmax_backward(p, torch.bmm(d_out_block, v_t))
            d_q.append(torch.bmm(d_scores, k))
            # summed over query blocks in float32
            d_k_t = d_k_t + torch.bmm(q_block.transpose(1, 2), d_scores).to(accumulate)
            d_v_t = d_v_t + torch.bmm(d_out_block.transpose(1, 2), p).to(accumulate)
        d_q = torch.cat(d_q, 1) * ctx.scale
        d_k = (d_k_t * ctx.scale).to(q.dtype).transpose(1, 2)
        return d_q.view(ctx.shape), d_k.reshape(ctx.shape), d_v_t.to(q.dtype).transpose(1, 2).reshape(ctx.shape), None


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and no biases; non-causal unless asked."""

    def __init__(self, hidden_size: int, num_heads: int, causal: bool = False):
        super().__init__()
        if hidden_size % num_heads:
            raise UserError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, cos_sin: CosSin, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(2)
        if cos_sin is not None:
            cos, sin = cos_sin
            query, key = apply_rotary_pos_emb(query, cos[:seq], sin[:seq]), apply_rotary_pos_emb(key, cos[:seq], sin[:seq])
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if query.device.type == "cpu" and query.dtype == torch.bfloat16 and not self.causal:
            out = BlockAttentionFunction.apply(query, key, value, 512)
        else:
            out = F.scaled_dot_product_attention(query, key, value, is_causal=self.causal)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, width))


def silu_mul_backward(d_act: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    """Gradients of act = silu(gate) * up: (d_gate, d_up), and act itself (recomputed rather than stored).
    ATen's fused silu_backward: half the passes over these wide tensors of the formula spelled out."""
    silu = F.silu(gate)
    d_gate = torch.ops.aten.silu_backward(d_act * up, gate)
    return d_gate, d_act * silu, silu * up


def _fold_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, S, D] -> [1, S, B * D]: every sample's columns side by side (a copy)."""
    return x.transpose(0, 1).reshape(1, x.shape[1], -1)


def _unfold_batch(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    batch, seq, width = shape
    return y.view(seq, batch, width).transpose(0, 1)


class SequenceSwiGLUFunction(torch.autograd.Function):
    """down @ (silu(gate) * up) with [gate; up] = gate_up @ x[b], mixing the positions of each x[b] [S, D].

    Every product is an explicit bmm in the activations' own [B, S, D] layout: autograd's (and Inductor's) default
    for a 2-D @ 3-D matmul folds the batch into one GEMM by transposing a [B, 2H, D] gradient, a copy as large as
    the layer's biggest activation. With `fold_batch` the input is instead copied once into [S, B * D], so that
    each product is one large GEMM rather than B small ones: worth its copies when the per-sample products are
    small (float32 at narrow widths). Only gate_up is stored; act is recomputed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, fold_batch: bool = False):
        ctx.fold_batch, ctx.shape = fold_batch, x.shape
        if fold_batch:
            x = _fold_batch(x)
        batch = x.shape[0]
        gate_up = torch.bmm(w_gate_up.expand(batch, -1, -1), x)          # [B, 2H, D]
        gate, up = gate_up.chunk(2, dim=1)
        ctx.save_for_backward(x, w_gate_up, w_down, gate_up)
        out = torch.bmm(w_down.expand(batch, -1, -1), F.silu(gate) * up)
        return _unfold_batch(out, ctx.shape) if fold_batch else out

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        x, w_gate_up, w_down, gate_up = ctx.saved_tensors
        if ctx.fold_batch:
            d_out = _fold_batch(d_out)
        batch = x.shape[0]
        gate, up = gate_up.chunk(2, dim=1)
        d_act = torch.bmm(w_down.t().expand(batch, -1, -1), d_out)
        d_gate, d_up, act = silu_mul_backward(d_act, gate, up)
        d_gate_up = torch.cat((d_gate, d_up), dim=1)
        d_w_down = torch.bmm(d_out, act.transpose(1, 2)).sum(0)
        d_w_gate_up = torch.bmm(d_gate_up, x.transpose(1, 2)).sum(0)
        d_x = torch.bmm(w_gate_up.t().expand(batch, -1, -1), d_gate_up)
        return (_unfold_batch(d_x, ctx.shape) if ctx.fold_batch else d_x), d_w_gate_up, d_w_down, None


class SwiGLU(nn.Module):
    """down(silu(gate) * up) over `width` features; `axis=1` mixes along the sequence of a [B, S, D] input
    (the mlp_t token mixer) without transposing it."""

    def __init__(self, width: int, expansion: float, axis: int = -1):
        super().__init__()
        if axis not in (-1, 1):
            raise ValueError(f"SwiGLU axis={axis}: use -1 (features) or 1 (sequence positions)")
        self.axis = axis
        hidden = swiglu_hidden_width(width, expansion)
        self.gate_up_proj = CastedLinear(width, 2 * hidden, bias=False)
        self.down_proj = CastedLinear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == -1:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        # The same maths as the reference's transpose -> linear -> transpose, without the transposes.
        return SequenceSwiGLUFunction.apply(x, self.gate_up_proj.weight.to(x.dtype), self.down_proj.weight.to(x.dtype),
                                            fold_sequence_products(x))


def fold_sequence_products(x: torch.Tensor) -> bool:
    """Whether SequenceSwiGLUFunction should fold the batch into single GEMMs. Measured on 2 CPU cores (fwd + bwd of
    the layer): eager float32 at widths up to 128 gains 1.2-1.4x; bfloat16, wider layers and Inductor's compiled
    batched products (up to 1.3x faster than folded ones) do not."""
    return x.dtype == torch.float32 and x.shape[-1] <= 128 and not torch.compiler.is_compiling()


class ConvSwiGLU(nn.Module):
    """The URM's MLP (docs/network.md#urm): act = silu(gate) * up, then a depthwise convolution over the sequence
    (kernel 2, bias, padding 1; the first S outputs kept, so position t mixes act[t - 1] and act[t]), a SiLU and
    the down projection. The convolution's weights are kept in float32 like every other weight and cast on use."""

    def __init__(self, width: int, expansion: float, conv_kernel: int = 2):
        super().__init__()
        hidden = swiglu_hidden_width(width, expansion)
        self.gate_up_proj = CastedLinear(width, 2 * hidden, bias=False)
        self.dwconv = nn.Conv1d(hidden, hidden, kernel_size=conv_kernel, padding=conv_kernel // 2, groups=hidden, bias=True)
        self.down_proj = CastedLinear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        act = (F.silu(gate) * up).transpose(1, 2)                    # [B, H, S]
        conv = self.dwconv
        mixed = F.conv1d(act, conv.weight.to(act.dtype), conv.bias.to(act.dtype), padding=conv.padding,
                         groups=conv.groups)[..., :x.shape[1]]
        return self.down_proj(F.silu(mixed).transpose(1, 2))
