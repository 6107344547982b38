"""Reference weights files (docs/checkpoints.md): with or without `_orig_mod.`, new puzzle tables, clear mismatch errors."""
import pytest
import torch

from models.checkpoint_io import load_reference_checkpoint
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from utils.functions import load_model_class


def head(num_puzzle_identifiers=4, hidden_size=16):
    return ACTLossHead(TinyRecursiveReasoningModel_ACTV1(dict(
        batch_size=2, seq_len=4, vocab_size=5, num_puzzle_identifiers=num_puzzle_identifiers, H_cycles=1, L_cycles=1,
        L_layers=1, hidden_size=hidden_size, expansion=2, num_heads=2, pos_encodings="rope", puzzle_emb_ndim=hidden_size,
        halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32")))


@pytest.mark.parametrize("prefix", ["_orig_mod.", ""])
def test_weights_file_loads_with_or_without_compiled_prefix(tmp_path, prefix):
    torch.manual_seed(0)
    source = head()
    with torch.no_grad():
        source.model.inner.puzzle_emb.weights.normal_()
    path = tmp_path / "step_10"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    target = head()
    load_reference_checkpoint(target, str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_new_puzzle_table_starts_from_the_mean_row():
    source = head(num_puzzle_identifiers=3)
    with torch.no_grad():
        source.model.inner.puzzle_emb.weights.copy_(torch.arange(3.0)[:, None].expand(3, 16))
    target = head(num_puzzle_identifiers=7)
    load_reference_checkpoint(target, {"_orig_mod." + k: v for k, v in source.state_dict().items()})
    assert torch.equal(target.model.inner.puzzle_emb.weights, torch.ones(7, 16))


def test_mismatched_checkpoint_fails_with_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"shapes differ from the model .*embed_tokens.embedding_weight \(5, 32\) vs \(5, 16\)"):
        load_reference_checkpoint(head(), {k: v for k, v in head(hidden_size=32).state_dict().items()})
    partial = dict(head().state_dict())
    partial.pop("model.inner.H_init")
    partial["model.inner.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['model.inner.H_init'\], unexpected keys \['model.inner.extra'\]"):
        load_reference_checkpoint(head(), partial)
    with pytest.raises(FileNotFoundError, match="checkpoint '.*nowhere' not found"):
        load_reference_checkpoint(head(), str(tmp_path / "nowhere"))


TINY_ABLATION = dict(batch_size=2, seq_len=4, vocab_size=5, num_puzzle_identifiers=3, H_cycles=1, L_cycles=1, L_layers=1,
                     hidden_size=16, expansion=2, num_heads=2, pos_encodings="rope", puzzle_emb_ndim=16,
                     halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32")


def ablation_head(arch):
    return ACTLossHead(load_model_class(f"recursive_reasoning.{arch}@TinyRecursiveReasoningModel_ACTV1")(TINY_ABLATION))


@pytest.mark.parametrize("arch, inits", [("trm_singlez", ["L_init"]),
                                         ("trm_hier6", ["H_init"] + [f"L{i}_init" for i in range(1, 7)])])
def test_ablation_loads_the_reference_layout(arch, inits):
    D, V, hidden = 16, 5, 256  # SwiGLU width: 2/3 * expansion * D rounded up to a multiple of 256
    shapes = {"embed_tokens.embedding_weight": (V, D), "lm_head.weight": (V, D), "q_head.weight": (2, D),
              "q_head.bias": (2,), "puzzle_emb.weights": (3, D), **{k: (D,) for k in inits},
              "L_level.layers.0.self_attn.qkv_proj.weight": (3 * D, D), "L_level.layers.0.self_attn.o_proj.weight": (D, D),
              "L_level.layers.0.mlp.gate_up_proj.weight": (2 * hidden, D), "L_level.layers.0.mlp.down_proj.weight": (D, hidden)}
    torch.manual_seed(0)
    reference = {"_orig_mod.model.inner." + k: torch.randn(shape) for k, shape in shapes.items()}
    target = ablation_head(arch)
    load_reference_checkpoint(target, reference)
    for k, v in reference.items():
        assert torch.equal(target.state_dict()[k.removeprefix("_orig_mod.")], v), k


def test_ablation_initial_vectors_are_separate_draws_in_the_reference_order():
    heads = {}
    for arch in ("trm", "trm_singlez", "trm_hier6"):
        torch.manual_seed(0)
        heads[arch] = ablation_head(arch).model.inner
    trm, singlez, hier6 = heads["trm"], heads["trm_singlez"], heads["trm_hier6"]
    assert torch.equal(singlez.L_init, trm.H_init)  # the first draw after the network, like trm's H_init
    assert torch.equal(hier6.H_init, trm.H_init) and torch.equal(hier6.L1_init, trm.L_init)
    latents = [getattr(hier6, f"L{i}_init") for i in range(1, 7)]
    assert all(not torch.equal(a, b) for i, a in enumerate(latents) for b in latents[i + 1:])


TINY_ARCHS = {
    "hrm_learned": dict(name="recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", H_layers=1, pos_encodings="learned"),
    "trm_mlp_t": dict(name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", mlp_t=True, pos_encodings="none"),
    "trm_mlp_t_auto_rows": dict(name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", mlp_t=True,
                                pos_encodings="none", puzzle_emb_len=0),
}


@pytest.mark.parametrize("kind", sorted(TINY_ARCHS))
def test_a_run_whose_data_is_gone_loads_with_its_seq_len_from_the_weights(tmp_path, kind):
    from omegaconf import OmegaConf
    from models.build import build_loss_head, sizes_metadata
    from models.checkpoint_io import save_weights
    from models.loading import load_checkpoint
    arch = dict(loss=dict(name="losses@ACTLossHead"), H_cycles=1, L_cycles=1, L_layers=1, hidden_size=16, expansion=2,
                num_heads=2, puzzle_emb_ndim=16, halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32",
                **TINY_ARCHS[kind])  # puzzle_emb_len left to the model's own default (HRM: derived, TRM: 16)
    source = build_loss_head(arch, sizes_metadata(vocab_size=6, seq_len=9, num_puzzle_identifiers=3), 2, "float32")
    run = tmp_path / "run"
    save_weights(source, str(run), 3)
    OmegaConf.save(OmegaConf.create({"arch": arch, "data_paths": [str(tmp_path / "gone")]}), run / "all_config.yaml")
    loaded = load_checkpoint(run, torch.device("cpu"))
    assert loaded.metadata.seq_len == 9 and loaded.metadata.vocab_size == 6 and loaded.step == 3
    assert loaded.head.model.inner.puzzle_emb_len == source.model.inner.puzzle_emb_len
