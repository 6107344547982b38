"""Every config/arch/*.yaml builds and trains a step on CPU; the paper's sizes give the paper's parameter counts;
state-dict keys are the reference's (docs/network.md#model-interface, docs/checkpoints.md#key-names)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from utils.functions import load_model_class

ARCH_DIR = Path(__file__).resolve().parents[1] / "config" / "arch"
ARCH_FILES = sorted(p.stem for p in ARCH_DIR.glob("*.yaml"))


def build_head(arch_name: str, seq_len: int, vocab_size: int, batch_size: int = 2, **overrides):
    """What pretrain.py does (docs/network.md#model-interface): the arch keys except name/loss plus the data's sizes, then the loss head."""
    arch = OmegaConf.load(ARCH_DIR / f"{arch_name}.yaml")
    for key, value in overrides.items():
        arch[key] = value
    arch = OmegaConf.to_container(arch, resolve=True)
    name, loss = arch.pop("name"), arch.pop("loss")
    model = load_model_class(name)(dict(arch, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                                        num_puzzle_identifiers=5, causal=False))
    loss_kwargs = {k: v for k, v in loss.items() if k != "name"}
    return load_model_class(loss["name"])(model, **loss_kwargs)


def test_all_spec_arch_files_exist():
    assert {"trm", "trm_singlez", "trm_hier6", "hrm", "transformers_baseline"} <= set(ARCH_FILES)


@pytest.mark.parametrize("arch_name", ARCH_FILES)
@pytest.mark.parametrize("variant", [dict(), dict(mlp_t=True, pos_encodings="none"), dict(pos_encodings="learned")])
def test_arch_yaml_builds_and_runs_forward_and_backward_at_tiny_size(arch_name, variant):
    torch.manual_seed(0)
    overrides = dict(hidden_size=32, num_heads=2, forward_dtype="float32", H_cycles=2, L_cycles=2, halt_max_steps=2, **variant)
    if arch_name == "trm_lm":  # declares none of the ACT and position keys, and unknown arch keys are errors
        overrides = {k: v for k, v in overrides.items() if k in ("hidden_size", "num_heads", "forward_dtype")}
    if arch_name == "urm":  # attention in every block: no mlp_t variant
        overrides.pop("mlp_t", None)
    head = build_head(arch_name, seq_len=9, vocab_size=6, **overrides)
    head.train()
    batch = {"inputs": torch.randint(0, 6, (2, 9), dtype=torch.int32), "labels": torch.randint(0, 6, (2, 9), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 3], dtype=torch.int32)}
    carry = head.initial_carry(batch)
    for _ in range(2):
        carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits", "preds", "q_halt_logits"])
        loss.backward()
    assert torch.isfinite(loss) and outputs["logits"].shape == (2, 9, 6) and outputs["preds"].shape == (2, 9)
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    if arch_name != "trm_lm":  # the language model has no puzzle embedding
        assert head.model.puzzle_emb.local_weights.grad is not None


def test_bfloat16_forward_on_cpu():
    torch.manual_seed(0)
    head = build_head("trm", seq_len=9, vocab_size=6, hidden_size=32, num_heads=2, forward_dtype="bfloat16",
                      H_cycles=1, L_cycles=1)
    batch = {"inputs": torch.randint(0, 6, (2, 9), dtype=torch.int32), "labels": torch.randint(0, 6, (2, 9), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 3], dtype=torch.int32)}
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert carry.inner_carry.z_H.dtype == torch.bfloat16 and outputs["logits"].dtype == torch.bfloat16
    assert head.model.inner.lm_head.weight.dtype == torch.float32  # weights stay float32, cast on use
    loss.backward()
    assert torch.isfinite(loss)


def count_params(head) -> int:
    return sum(p.numel() for p in head.parameters())  # the puzzle embedding is a buffer: excluded


@pytest.mark.parametrize("arch_name, overrides, seq_len, vocab, low, high", [
    ("trm", dict(L_layers=2), 900, 12, 6.5e6, 7.5e6),                                        # ARC, attention: ~7M
    ("trm", dict(L_layers=2, mlp_t=True, pos_encodings="none"), 81, 11, 4.7e6, 5.3e6),       # Sudoku, MLP: ~5M
    ("trm_singlez", dict(), 900, 12, 6.5e6, 7.5e6),
    ("trm_hier6", dict(), 900, 12, 6.5e6, 7.5e6),
    ("hrm", dict(), 900, 12, 26.5e6, 28.0e6),                                                # HRM paper: 27M
])
def test_paper_size_parameter_counts(arch_name, overrides, seq_len, vocab, low, high):
    head = build_head(arch_name, seq_len=seq_len, vocab_size=vocab, **overrides)
    assert low < count_params(head) < high


def test_state_dict_keys_are_the_reference_keys():
    head = build_head("trm", seq_len=9, vocab_size=6, hidden_size=32, num_heads=2, pos_encodings="learned")
    keys = set(head.state_dict())
    prefix = "model.inner."
    expected = {prefix + k for k in ["embed_tokens.embedding_weight", "lm_head.weight", "q_head.weight", "q_head.bias",
                                     "puzzle_emb.weights", "H_init", "L_init", "embed_pos.embedding_weight"]}
    for i in range(2):
        expected |= {f"{prefix}L_level.layers.{i}.{k}" for k in ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
                                                                  "mlp.gate_up_proj.weight", "mlp.down_proj.weight"]}
    assert keys == expected
    mlp_t = build_head("trm", seq_len=9, vocab_size=6, hidden_size=32, num_heads=2, mlp_t=True)
    assert f"{prefix}L_level.layers.1.mlp_t.gate_up_proj.weight" in mlp_t.state_dict()
    assert f"{prefix}L_level.layers.1.mlp_t.down_proj.weight" in mlp_t.state_dict()
    hrm = build_head("hrm", seq_len=9, vocab_size=6, hidden_size=32, num_heads=2)
    assert f"{prefix}H_level.layers.3.self_attn.qkv_proj.weight" in hrm.state_dict()
    assert hrm.model.inner.puzzle_emb_len == 1  # HRM: ceil(puzzle_emb_ndim / hidden_size)
