"""The recursive causal language model (arch=trm_lm): core, Hugging Face export, decoding, generate CLI."""
ARCH_NAME = "recursive_reasoning.trm_lm@TRMLanguageModel"
