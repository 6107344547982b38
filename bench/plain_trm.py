"""The TRM network written the plain way, for `python -m bench.mfu --versus-plain`: the same equations on the same
parameters as models/recursive_reasoning/trm.py, with stock eager PyTorch only (linear layers, transpose ->
linear -> transpose for the sequence MLP, SDPA for attention, RMSNorm spelled out), as a reader of the paper
would write it. The ACT wrapper, loss and optimizers stay ours, so a timing ratio isolates the network's
implementation."""
import types

import torch
import torch.nn.functional as F

from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1_Inner, TinyRecursiveReasoningModel_ACTV1InnerCarry


def plain_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def plain_swiglu(x: torch.Tensor, mlp) -> torch.Tensor:
    gate, up = F.linear(x, mlp.gate_up_proj.weight.to(x.dtype)).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, mlp.down_proj.weight.to(x.dtype))


def plain_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).to(x.dtype)


def plain_attention(x: torch.Tensor, attn, cos_sin) -> torch.Tensor:
    batch, seq, width = x.shape
    qkv = F.linear(x, attn.qkv_proj.weight.to(x.dtype)).view(batch, seq, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cos_sin is not None:
        cos, sin = cos_sin[0][:seq], cos_sin[1][:seq]
        q, k = plain_rotary(q, cos, sin), plain_rotary(k, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=attn.causal)
    return F.linear(out.transpose(1, 2).reshape(batch, seq, width), attn.o_proj.weight.to(x.dtype))


def plain_block(h: torch.Tensor, block, cos_sin) -> torch.Tensor:
    eps = block.norm_eps
    if block.mlp_t_mode:  # the token mixer and its norm run across the sequence: transpose in, transpose out
        h_t = h.transpose(1, 2)
        h = plain_rms_norm(h_t + plain_swiglu(h_t, block.mlp_t), eps).transpose(1, 2)
    else:
        h = plain_rms_norm(h + plain_attention(h, block.self_attn, cos_sin), eps)
    return plain_rms_norm(h + plain_swiglu(h, block.mlp), eps)


def plain_net(h: torch.Tensor, injection: torch.Tensor, module, cos_sin) -> torch.Tensor:
    h = h + injection
    for block in module.layers:
        h = plain_block(h, block, cos_sin)
    return h


def plain_inner_forward(inner, carry, batch):
    """TinyRecursiveReasoningModel_ACTV1_Inner.forward, plainly."""
    cos_sin = inner.cos_sin()
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])

    def H_cycle(z_H, z_L):
        for _ in range(inner.config.L_cycles):
            z_L = plain_net(z_L, z_H + x, inner.L_level, cos_sin)
        return plain_net(z_H, z_L, inner.L_level, cos_sin), z_L

    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():  # only the last H cycle is back-propagated
        for _ in range(inner.config.H_cycles - 1):
            z_H, z_L = H_cycle(z_H, z_L)
    z_H, z_L = H_cycle(z_H, z_L)
    return (TinyRecursiveReasoningModel_ACTV1InnerCarry(z_H.detach(), z_L.detach()), *inner.output_heads(z_H))


def use_plain_network(head) -> None:
    """Route this loss head's TRM through plain_inner_forward (its parameters are shared, not copied)."""
    inner = head.model.inner
    if type(inner) is not TinyRecursiveReasoningModel_ACTV1_Inner:
        raise ValueError(f"--versus-plain covers arch=trm, not {type(head.model).__name__}")
    inner.forward = types.MethodType(plain_inner_forward, inner)
