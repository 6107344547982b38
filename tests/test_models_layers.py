"""Hand-computed values for the layers of docs/network.md."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.common import trunc_normal_init_, truncated_normal_std
from models.layers import (Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SequenceSwiGLUFunction, SwiGLU,
                           BlockAttentionFunction,
                           apply_rotary_pos_emb, rms_norm, silu_mul_backward, swiglu_hidden_width)


def test_truncated_normal_has_the_requested_std_and_stays_within_two_std():
    assert truncated_normal_std(-2, 2) == pytest.approx(0.8796256610, abs=1e-9)  # std of N(0,1) truncated at +-2
    torch.manual_seed(0)
    for std in (1.0, 0.02):
        x = trunc_normal_init_(torch.empty(400_000), std=std)
        assert x.std().item() == pytest.approx(std, rel=0.01)
        assert x.mean().item() == pytest.approx(0.0, abs=0.01 * std)
        bound = 2 * std / 0.8796256610
        assert x.abs().max().item() <= bound + 1e-6 and x.abs().max().item() > 0.95 * bound
    assert trunc_normal_init_(torch.ones(5), std=0).eq(0).all()


def test_rms_norm_hand_values_in_float32_without_scale():
    out = rms_norm(torch.tensor([[3.0, 4.0]]))
    expected = torch.tensor([[3.0, 4.0]]) / math.sqrt(12.5 + 1e-5)
    torch.testing.assert_close(out, expected)
    bf16 = rms_norm(torch.tensor([[3.0, 4.0]], dtype=torch.bfloat16))
    assert bf16.dtype == torch.bfloat16
    # dim=1 normalises across the sequence, as the mlp_t block does
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(rms_norm(x, dim=1), rms_norm(x.transpose(1, 2)).transpose(1, 2))


def test_rope_rotate_half_hand_values():
    rope = RotaryEmbedding(dim=4, max_position_embeddings=3, base=10000.0)
    cos, sin = rope()
    # inv_freq = [1, 10000^(-2/4)] = [1, 0.01]; the table is cat(freqs, freqs)
    torch.testing.assert_close(cos[1], torch.tensor([math.cos(1), math.cos(0.01), math.cos(1), math.cos(0.01)]))
    torch.testing.assert_close(sin[2], torch.tensor([math.sin(2), math.sin(0.02), math.sin(2), math.sin(0.02)]))
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)  # [B, S, H, hd]
    out = apply_rotary_pos_emb(x, cos, sin)
    # (x0, x2) is the rotated pair: position p turns (1, 0) into (cos p, sin p)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([math.cos(1), 0.0, math.sin(1), 0.0]))
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([math.cos(2), 0.0, math.sin(2), 0.0]))


def test_swiglu_width_rule():
    assert swiglu_hidden_width(512, 4) == 1536   # round(1365.3) = 1365 -> 1536
    assert swiglu_hidden_width(97, 4) == 512     # Sudoku mlp_t: 81 cells + 16 puzzle rows -> round(258.7) = 259 -> 512
    assert swiglu_hidden_width(81, 4) == 256
    assert swiglu_hidden_width(384, 4) == 1024
    mlp = SwiGLU(512, 4)
    assert mlp.gate_up_proj.weight.shape == (2 * 1536, 512) and mlp.down_proj.weight.shape == (512, 1536)


def test_swiglu_output_and_sequence_axis_form():
    torch.manual_seed(0)
    mlp = SwiGLU(6, 2)
    x = torch.randn(2, 3, 6)
    W1, W2 = mlp.gate_up_proj.weight, mlp.down_proj.weight
    gate, up = (x @ W1.T).chunk(2, -1)
    torch.testing.assert_close(mlp(x), (F.silu(gate) * up) @ W2.T)
    # axis=1 mixes positions of [B, S, D]: the same as transposing, applying over the last axis, transposing back
    seq_mlp = SwiGLU(3, 2, axis=1)
    channel_mlp = SwiGLU(3, 2)
    channel_mlp.load_state_dict(seq_mlp.state_dict())
    expected = channel_mlp(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(seq_mlp(x), expected)


def test_casted_layers_init_and_cast():
    torch.manual_seed(0)
    lin = CastedLinear(256, 512, bias=True)
    assert lin.weight.dtype == torch.float32 and lin.bias.eq(0).all()
    assert lin.weight.std().item() == pytest.approx(1 / 16, rel=0.02)
    assert lin(torch.randn(2, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16
    emb = CastedEmbedding(10, 4, init_std=0.5, cast_to=torch.bfloat16)
    assert emb(torch.tensor([1, 2])).dtype == torch.bfloat16


def test_attention_is_noncausal_multi_head_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(hidden_size=8, num_heads=2)
    h = torch.randn(1, 4, 8)
    qkv = h @ attn.qkv_proj.weight.T
    q, k, v = (t.view(1, 4, 2, 4).transpose(1, 2) for t in qkv.split(8, -1))
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # no mask: every position sees every other
    expected = (w @ v).transpose(1, 2).reshape(1, 4, 8) @ attn.o_proj.weight.T
    torch.testing.assert_close(attn(None, h), expected)
    with pytest.raises(ValueError, match="hidden_size=10 must be divisible by num_heads=4"):
        Attention(10, 4)


@pytest.mark.parametrize("fold_batch", [False, True], ids=["batched", "folded"])
def test_sequence_swiglu_gradients_equal_autograd_of_the_plain_form(fold_batch):
    torch.manual_seed(0)
    seq_mlp = SwiGLU(5, 2, axis=1)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    W1 = seq_mlp.gate_up_proj.weight.detach().double().requires_grad_()
    W2 = seq_mlp.down_proj.weight.detach().double().requires_grad_()
    d_out = torch.randn(3, 5, 4, dtype=torch.float64)

    gate, up = torch.matmul(W1, x).chunk(2, dim=1)
    expected = torch.matmul(W2, F.silu(gate) * up)
    expected_grads = torch.autograd.grad(expected, (x, W1, W2), d_out)

    out = SequenceSwiGLUFunction.apply(x, W1, W2, fold_batch)
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out, (x, W1, W2), d_out), expected_grads):
        torch.testing.assert_close(got, want)
    torch.autograd.gradcheck(SequenceSwiGLUFunction.apply, (x[:2, :, :2].detach().requires_grad_(), W1, W2, fold_batch))


def test_silu_mul_backward_hand_values():
    gate, up, d_act = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    d_gate, d_up, act = silu_mul_backward(d_act, gate, up)
    s1 = 1 / (1 + math.exp(-1.0))
    # silu'(0) = 1/2; silu'(1) = s(1) * (1 + 1 - s(1))
    torch.testing.assert_close(d_gate, torch.tensor([2 * 0.5, 3 * s1 * (2 - s1)]))
    torch.testing.assert_close(d_up, torch.tensor([0.0, s1]))
    torch.testing.assert_close(act, torch.tensor([0.0, 3 * s1]))


@pytest.mark.parametrize("block", [512, 3])   # one block, and blocks that do not divide the 7 positions
def test_block_attention_and_its_backward_equal_sdpa(block):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    d_out = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    out = BlockAttentionFunction.apply(q, k, v, block)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), d_out), torch.autograd.grad(expected, (q, k, v), d_out))
    assert torch.autograd.gradcheck(lambda q, k, v: BlockAttentionFunction.apply(q, k, v, block), (q, k, v))


def test_bf16_cpu_attention_and_its_gradients_stay_close_to_float32():
    torch.manual_seed(0)
    attn = Attention(hidden_size=64, num_heads=4)
    d_out = torch.randn(2, 20, 64)
    relative_error = lambda got, expected: ((got.float() - expected).norm() / expected.norm()).item()
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        h = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_()
        out = attn(None, h)
        results[dtype] = (out, *torch.autograd.grad(out, (h, attn.qkv_proj.weight), d_out.to(dtype)))
    for got, expected in zip(results[torch.bfloat16], results[torch.float32]):
        assert relative_error(got, expected) < 0.02
