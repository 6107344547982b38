"""The recursive decoder trained by pretrain.py: `num_layers` pre-norm blocks (causal attention with RoPE, SwiGLU)
applied `num_loops` times, tied or untied token embeddings. `models.lm.export` writes it out as the equivalent
unrolled Llama network."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SwiGLU, rms_norm


class DecoderBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, expansion: float, rms_norm_eps: float):
        super().__init__()
        self.eps = rms_norm_eps
        self.self_attn = Attention(hidden_size, num_heads, causal=True)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, cos_sin, hidden_states):
        hidden_states = hidden_states + self.self_attn(cos_sin, rms_norm(hidden_states, self.eps))
        return hidden_states + self.mlp(rms_norm(hidden_states, self.eps))


class RecursiveDecoder(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_heads: int, num_layers: int, num_loops: int,
                 expansion: float, max_position_embeddings: int, rope_theta: float = 10000.0,
                 tie_word_embeddings: bool = True, rms_norm_eps: float = 1e-5, forward_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_loops, self.eps, self.forward_dtype = num_loops, rms_norm_eps, forward_dtype
        self.embed_scale = math.sqrt(hidden_size)
        # Tokens enter at unit scale (std 1/sqrt(H) times sqrt(H)), as in TRM.
        self.embed_tokens = CastedEmbedding(vocab_size, hidden_size, init_std=1.0 / self.embed_scale, cast_to=forward_dtype)
        self.rotary_emb = RotaryEmbedding(hidden_size // num_heads, max_position_embeddings, base=rope_theta)
        self.layers = nn.ModuleList(DecoderBlock(hidden_size, num_heads, expansion, rms_norm_eps) for _ in range(num_layers))
        self.lm_head = None if tie_word_embeddings else CastedLinear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """-> logits [B, S, vocab] in float32."""
        hidden_states = self.embed_scale * self.embed_tokens(input_ids.to(torch.long))
        cos_sin = self.rotary_emb()
        for _ in range(self.num_loops):
            for layer in self.layers:
                hidden_states = layer(cos_sin, hidden_states)
        hidden_states = rms_norm(hidden_states, self.eps)
        if self.lm_head is None:
            logits = F.linear(hidden_states, self.embed_tokens.embedding_weight.to(hidden_states.dtype))
        else:
            logits = self.lm_head(hidden_states)
        return logits.to(torch.float32)


def parameter_breakdown(decoder: RecursiveDecoder) -> dict:
    """Core (the looped blocks) vs vocabulary (embedding and, when untied, the output head) parameter counts."""
    vocabulary = sum(p.numel() for name, p in decoder.named_parameters() if name.startswith(("embed_tokens.", "lm_head.")))
    total = sum(p.numel() for p in decoder.parameters())
    return {"core": total - vocabulary, "vocabulary": vocabulary, "total": total}


def describe_parameters(decoder: RecursiveDecoder) -> str:
    """The breakdown as printed at the start of training and by the export, with the other tying choice's total."""
    counts = parameter_breakdown(decoder)
    vocab, hidden = decoder.embed_tokens.embedding_weight.shape
    tied = decoder.lm_head is None
    head = vocab * hidden  # the output head that untying adds
    other = counts["total"] + head if tied else counts["total"] - head
    return (f"parameters: core {counts['core']:,} ({len(decoder.layers)} layers x {decoder.num_loops} loops) + vocabulary "
            f"{counts['vocabulary']:,} ({vocab:,} x {hidden}, {'tied' if tied else 'untied'}) = {counts['total']:,}; "
            f"{'untied' if tied else 'tied'}: {other:,}")
