"""Hugging Face model around the recursive decoder (shipped with exported models): forward returns
CausalLMOutput, so transformers' generate() provides greedy search, sampling and the logits processors.
Each step re-reads the whole sequence (no KV cache)."""
import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from models.lm.configuration_trm_lm import TRMLMConfig
from models.lm.core import RecursiveDecoder
from models.layers import RotaryEmbedding


class TRMLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TRMLMConfig
    base_model_prefix = "decoder"
    _supports_cache_class = False

    def __init__(self, config: TRMLMConfig):
        super().__init__(config)
        self.decoder = RecursiveDecoder(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_heads=config.num_heads,
            num_layers=config.num_layers, num_loops=config.num_loops, expansion=config.expansion,
            max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
            tie_word_embeddings=config.tie_embeddings, rms_norm_eps=config.rms_norm_eps, forward_dtype=torch.float32)
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.use_cache = False  # no KV cache: generate() must not build one

    @torch.no_grad()
    def _init_weights(self, module):
        # Weights come from the checkpoint; only the rotary tables are not saved (non-persistent buffers), and
        # transformers may have allocated them empty, so they are recomputed here.
        if isinstance(module, RotaryEmbedding):
            with torch.device("cpu"):
                fresh = RotaryEmbedding(module.cos_cached.shape[1], module.cos_cached.shape[0], base=self.config.rope_theta)
            module.cos_cached.copy_(fresh.cos_cached)
            module.sin_cached.copy_(fresh.sin_cached)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        if input_ids.shape[1] > self.config.max_position_embeddings:
            # RoPE tables end at the training context; past it the shapes would fail deep inside attention.
            raise ValueError(f"{input_ids.shape[1]} tokens exceed the model's context of {self.config.max_position_embeddings}: "
                             f"shorten the prompt or max_new_tokens")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing to mask: the plain causal kernel
        logits = self.decoder(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)
