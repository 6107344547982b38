"""The exported recursive LM for transformers' AutoModelForCausalLM (shipped in the model directory, loaded with
trust_remote_code=True). The weights are a plain Llama network, the recursion unrolled (layer i repeats physical
layer i % trm_num_layers), so transformers' own Llama code computes the model, KV cache included. This class adds
what a recursive LM's users rely on beyond it:

- batched prompts without an attention_mask: generate() masks the run of padding each row starts with (the
  tokenizer's pad id, and any pad_token_id given), so that padded rows decode as each prompt alone even where the
  pad token is the eos token and transformers cannot infer the mask;
- a request past the context (max_position_embeddings, the training length) fails before generating."""
import torch
from transformers import LlamaForCausalLM


class ContextLengthError(ValueError):
    pass


def leading_padding(input_ids: torch.Tensor, pad_ids) -> torch.Tensor:
    """[B, S] ids -> bool [B, S], True on the pad tokens each row starts with; a row's last token always counts as
    text (generation continues from it)."""
    is_pad = torch.isin(input_ids, torch.tensor(sorted(pad_ids), device=input_ids.device))
    run = is_pad.long().cumprod(-1).bool()
    run[:, -1] = False
    return run


class TRMLMForCausalLM(LlamaForCausalLM):
    def generation_length(self, prompt_length: int, generation_config, kwargs) -> int:
        """The sequence length generate() will reach, as transformers resolves it (max_new_tokens over max_length)."""
        config = generation_config if generation_config is not None else self.generation_config
        max_new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
        if max_new_tokens is not None:
            return prompt_length + max_new_tokens
        return max(kwargs.get("max_length") or config.max_length, prompt_length)

    def generate(self, inputs=None, generation_config=None, **kwargs):
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if input_ids is None or input_ids.ndim != 2 or input_ids.is_floating_point():
            return super().generate(inputs, generation_config, **kwargs)
        length, context = self.generation_length(input_ids.shape[1], generation_config, kwargs), self.config.max_position_embeddings
        if length > context:
            raise ContextLengthError(f"the prompt ({input_ids.shape[1]} tokens) and the new tokens reach {length} tokens, past "
                                     f"this model's context of {context}: shorten the prompt (truncation=True cuts it "
                                     f"to the context) or ask for fewer new tokens")
        pad_ids = {i for i in (self.config.pad_token_id, kwargs.get("pad_token_id")) if i is not None}
        if kwargs.get("attention_mask") is None and pad_ids:
            kwargs["attention_mask"] = (~leading_padding(input_ids, pad_ids)).long()
        return super().generate(inputs, generation_config, **kwargs)
