"""The recursive decoder shared by training and the exported Hugging Face model: `num_layers` pre-norm blocks
(causal attention with RoPE, SwiGLU) applied `num_loops` times, tied or untied token embeddings.
Imports only torch and our layers so `models.lm.export` can ship it beside the modeling code."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SwiGLU, apply_rotary_pos_emb, rms_norm


def padded_causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 1 = token, 0 = padding -> [B, 1, S, S] bool: a query sees earlier tokens; it always sees itself, so
    padding queries stay finite (their outputs are never used)."""
    seq = attention_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()
    mask = causal & attention_mask.bool()[:, None, :]
    return (mask | torch.eye(seq, dtype=torch.bool, device=attention_mask.device)).unsqueeze(1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left-padded rows count positions from their first token, so a padded row matches the unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class MaskedCausalAttention(Attention):
    """Causal Attention that also takes per-row positions and a padding mask (batched, left-padded prompts)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__(hidden_size, num_heads, causal=True)

    def forward(self, cos_sin, hidden_states, attention_mask: Optional[torch.Tensor] = None):
        if attention_mask is None:
            return super().forward(cos_sin, hidden_states)
        batch, seq, width = hidden_states.shape
        positions = positions_from_mask(attention_mask)
        cos, sin = cos_sin[0][positions], cos_sin[1][positions]  # [B, S, head_dim]
        query, key, value = self.qkv_proj(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim).unbind(2)
        query, key = apply_rotary_pos_emb(query, cos, sin), apply_rotary_pos_emb(key, cos, sin)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=padded_causal_mask(attention_mask))
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, width))


class DecoderBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, expansion: float, rms_norm_eps: float):
        super().__init__()
        self.eps = rms_norm_eps
        self.self_attn = MaskedCausalAttention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, cos_sin, hidden_states, attention_mask=None):
        hidden_states = hidden_states + self.self_attn(cos_sin, rms_norm(hidden_states, self.eps), attention_mask)
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

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """-> logits [B, S, vocab] in float32."""
        hidden_states = self.embed_scale * self.embed_tokens(input_ids.to(torch.long))
        cos_sin = self.rotary_emb()
        for _ in range(self.num_loops):
            for layer in self.layers:
                hidden_states = layer(cos_sin, hidden_states, attention_mask)
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
