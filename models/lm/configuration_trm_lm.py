"""Hugging Face configuration of the recursive causal LM (shipped with exported models)."""
from transformers import PretrainedConfig


class TRMLMConfig(PretrainedConfig):
    model_type = "trm_lm"

    def __init__(self, vocab_size=50257, hidden_size=512, num_heads=8, num_layers=3, num_loops=8, expansion=2.0,
                 max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                 pad_token_id=0, eos_token_id=1, bos_token_id=1, **kwargs):
        self.vocab_size, self.hidden_size, self.num_heads = vocab_size, hidden_size, num_heads
        self.num_layers, self.num_loops, self.expansion = num_layers, num_loops, expansion
        self.max_position_embeddings, self.rope_theta, self.rms_norm_eps = max_position_embeddings, rope_theta, rms_norm_eps
        # Tying is done inside the decoder (one tensor), so transformers is told the weights are separate.
        self.tie_embeddings = tie_word_embeddings
        kwargs["use_cache"] = False
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                         tie_word_embeddings=False, **kwargs)
