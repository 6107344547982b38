"""The Universal Reasoning Model (arch=urm, docs/network.md#urm): its size and weight names at the paper's ARC size,
truncated back-propagation through loops, the detached carry, the ConvSwiGLU against a plain float64 version,
Muon beside AdamATan2, and a tiny URM trained end to end by pretrain.py."""
import math
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from models.build import build_loss_head, sizes_metadata
from models.layers import ConvSwiGLU, swiglu_hidden_width
from models.losses import ACTLossHead
from models.recursive_reasoning.urm import URM_ACTV1, URMInnerCarry
from tests.helpers import ENV, ROOT, pretrain_command, read_metrics, tiny_arch
from utils.errors import UserError


def urm_arch(**changes) -> dict:
    arch = OmegaConf.to_container(OmegaConf.load(ROOT / "config/arch/urm.yaml"), resolve=True)
    arch.update(changes)
    if "hidden_size" in changes and "puzzle_emb_ndim" not in changes:
        arch["puzzle_emb_ndim"] = changes["hidden_size"]
    return arch


def tiny_urm(**changes) -> URM_ACTV1:
    config = dict(batch_size=2, seq_len=6, vocab_size=5, num_puzzle_identifiers=3, hidden_size=16, num_heads=2,
                  expansion=2, num_layers=2, H_cycles=3, L_cycles=2, halt_max_steps=4, puzzle_emb_ndim=16,
                  forward_dtype="float32")
    config.update(changes)
    return URM_ACTV1(config)


def tiny_batch(batch_size=2, seq_len=6, vocab=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(1, vocab, (batch_size, seq_len), generator=g),
            "labels": torch.randint(1, vocab, (batch_size, seq_len), generator=g),
            "puzzle_identifiers": torch.tensor([1, 2][:batch_size])}


def test_parameter_count_and_names_at_the_arc_size():
    head = build_loss_head(urm_arch(), sizes_metadata(vocab_size=12, seq_len=900, num_puzzle_identifiers=10), 2, "float32")
    D, V, layers = 512, 12, 4
    inter = swiglu_hidden_width(D, 4)
    assert inter == 1536
    per_layer = D * 3 * D + D * D + D * 2 * inter + (2 * inter + inter) + inter * D  # qkv, o, gate_up, dwconv, down
    expected = V * D + V * D + (2 * D + 2) + layers * per_layer                      # embed, lm_head, q_head
    assert sum(p.numel() for p in head.parameters()) == expected == 13_663_234

    names = set(head.state_dict())
    assert {"model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.weight",
            "model.inner.q_head.bias", "model.inner.puzzle_emb.weights", "model.inner.init_hidden"} <= names
    for i in range(layers):
        for part in ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
                     "mlp.dwconv.weight", "mlp.dwconv.bias", "mlp.down_proj.weight"):
            assert f"model.inner.layers.{i}.{part}" in names
    assert len(names) == 6 + 6 * layers  # nothing else is saved (rotary tables are not persistent)
    # one puzzle-embedding row (ceil(512 / 512)), as the URM code has it; the Q head reads position 0
    assert head.model.inner.puzzle_emb_len == 1
    assert head.model.inner.init_hidden.shape == (D,) and head.model.inner.init_hidden.dtype == torch.float32


def test_bad_urm_keys_fail_with_one_line():
    with pytest.raises(UserError, match="arch.L_layers"):
        tiny_urm(L_layers=2)
    with pytest.raises(UserError, match="divisible"):
        tiny_urm(num_heads=3)
    with pytest.raises(UserError, match="no_ACT_continue"):
        tiny_urm(no_ACT_continue=False)


def _loss(logits, q_halt):
    return logits.square().mean() + q_halt.square().mean()


def test_gradients_flow_only_through_the_last_outer_cycle_and_the_carry_is_detached():
    torch.manual_seed(0)
    model = tiny_urm(H_cycles=3)
    inner = model.inner
    batch = tiny_batch()
    start = inner.reset_carry(torch.ones(2, dtype=torch.bool), inner.empty_carry(2))
    hidden0 = start.hidden.clone().requires_grad_(True)

    new_carry, logits, (q_halt, _) = inner(URMInnerCarry(hidden0), batch)
    _loss(logits, q_halt).backward()
    assert hidden0.grad is None, "no gradient reaches the state before the last outer cycle"
    assert not new_carry.hidden.requires_grad and new_carry.hidden.grad_fn is None
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    assert "layers.0.mlp.dwconv.weight" in grads

    # The same gradients from the last cycle alone, started where the first two cycles (without gradient) end.
    inner.zero_grad(set_to_none=True)
    cos_sin = inner.cos_sin()
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    with torch.no_grad():
        h = inner.loop(inner.loop(start.hidden, x.detach(), cos_sin), x.detach(), cos_sin)
    h = h.detach().requires_grad_(True)
    last = inner.loop(h, x, cos_sin)
    logits2, (q2, _) = inner.output_heads(last)
    _loss(logits2, q2).backward()
    assert torch.equal(logits, logits2)
    for n, p in inner.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0, msg=n)
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_the_act_wrapper_halts_on_q_halt_and_runs_halt_max_steps_in_evaluation():
    torch.manual_seed(0)
    model = tiny_urm(halt_max_steps=3).eval()
    batch = tiny_batch()
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 4):
            carry, outputs = model(carry, batch)
            assert torch.equal(carry.halted, torch.full((2,), step == 3))
    assert "target_q_continue" not in outputs


def plain_conv_swiglu(x, w_gate_up, w_conv, b_conv, w_down):
    """The ConvSwiGLU written out position by position, in float64."""
    batch, seq, _ = x.shape
    inter = w_down.shape[1]
    out = torch.zeros(batch, seq, w_down.shape[0], dtype=torch.float64)
    for b in range(batch):
        act = []
        for t in range(seq):
            gu = w_gate_up @ x[b, t]
            gate, up = gu[:inter], gu[inter:]
            act.append(gate / (1 + torch.exp(-gate)) * up)
        for t in range(seq):
            previous = act[t - 1] if t > 0 else torch.zeros(inter, dtype=torch.float64)
            mixed = w_conv[:, 0, 0] * previous + w_conv[:, 0, 1] * act[t] + b_conv
            out[b, t] = w_down @ (mixed / (1 + torch.exp(-mixed)))
    return out


def test_conv_swiglu_matches_a_plain_float64_version():
    torch.manual_seed(0)
    layer = ConvSwiGLU(8, 2).double()
    with torch.no_grad():
        layer.dwconv.bias.normal_()  # a nonzero bias is part of what is compared
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = plain_conv_swiglu(x, layer.gate_up_proj.weight, layer.dwconv.weight, layer.dwconv.bias,
                                 layer.down_proj.weight)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.dwconv.weight.shape == (swiglu_hidden_width(8, 2), 1, 2)
    # position t depends on positions t - 1 and t only
    y = x.clone()
    y[:, 3] += 1.0
    changed = (layer(y) - layer(x)).abs().amax(-1) > 0
    assert changed.tolist() == [[False, False, False, True, True]] * 2


def muon_config(optimizer="muon"):
    return SimpleNamespace(optimizer=optimizer, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, puzzle_emb_lr=1e-2,
                           puzzle_emb_weight_decay=0.1, freeze_weights=False)


def test_muon_takes_the_hidden_matrices_and_adam_atan2_the_rest():
    from models.adam_atan2 import AdamATan2
    from training.builders import create_optimizers
    torch.manual_seed(0)
    head = ACTLossHead(tiny_urm(), loss_type="softmax_cross_entropy")
    optimizers, base_lrs = create_optimizers(muon_config(), head, world_size=1)
    muon = [o for o in optimizers if isinstance(o, torch.optim.Muon)]
    adam = [o for o in optimizers if isinstance(o, AdamATan2)]
    assert len(muon) == 1 and len(adam) == 1 and len(optimizers) == 3 and base_lrs == [1e-2, 1e-3, 1e-3]
    names = {id(p): n for n, p in head.named_parameters()}
    in_muon = {names[id(p)] for g in muon[0].param_groups for p in g["params"]}
    in_adam = {names[id(p)] for g in adam[0].param_groups for p in g["params"]}
    assert in_muon | in_adam == set(names.values()) and not in_muon & in_adam
    assert all(n.endswith(("qkv_proj.weight", "o_proj.weight", "gate_up_proj.weight", "down_proj.weight"))
               for n in in_muon) and len(in_muon) == 4 * 2
    assert {"model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.bias",
            "model.inner.layers.0.mlp.dwconv.weight", "model.inner.layers.0.mlp.dwconv.bias"} <= in_adam

    # one training step moves both groups
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    batch = tiny_batch()
    carry = head.initial_carry(batch)
    head.train()
    _, loss, _, _, _ = head(return_keys=[], carry=carry, batch=batch)
    loss.backward()
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = 1e-3
        opt.step()
    moved = {n for n, p in head.named_parameters() if not torch.equal(p, before[n])}
    assert "model.inner.layers.0.self_attn.qkv_proj.weight" in moved and "model.inner.lm_head.weight" in moved


def test_default_optimizer_is_adam_atan2_alone():
    from training.builders import create_optimizers
    head = ACTLossHead(tiny_urm(), loss_type="softmax_cross_entropy")
    optimizers, _ = create_optimizers(muon_config("adam_atan2"), head, world_size=1)
    assert not any(isinstance(o, torch.optim.Muon) for o in optimizers) and len(optimizers) == 2


@pytest.mark.slow
def test_a_tiny_urm_trains_end_to_end_with_muon(sudoku4, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = [f"data_paths=[{sudoku4}]", "evaluators=[]", "global_batch_size=32", "epochs=2", "eval_interval=2",
            "lr=1e-3", "lr_warmup_steps=2", "device=cpu", "optimizer=muon", f"+checkpoint_path={ckpt}", "arch=urm",
            *tiny_arch(num_layers=1, H_cycles=2, L_cycles=1, halt_max_steps=2)]
    result = subprocess.run(pretrain_command(args), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(ckpt)
    losses = [r["train/lm_loss"] for r in records if "train/lm_loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert [r for r in records if "all/exact_accuracy" in r]
    step = sorted(ckpt.glob("step_*"))[-1]
    state = torch.load(step, weights_only=True)
    assert any(k.endswith("model.inner.layers.0.mlp.dwconv.weight") for k in state)
    assert (ckpt / "urm.py").exists()


def test_an_unknown_optimizer_is_refused_in_one_line():
    from tests.test_config import compose_raw
    from training.config import validate_config
    assert validate_config(compose_raw(["optimizer=muon"])).optimizer == "muon"
    with pytest.raises(UserError, match="optimizer") as e:
        validate_config(compose_raw(["optimizer=adamw"]))
    assert "\n" not in str(e.value)


def test_a_checkpoint_in_the_urm_code_layout_loads(tmp_path):
    """The URM public code saves the compiled loss head's state dict (`_orig_mod.model.inner.<same names>`), with its
    depthwise convolution in bfloat16: such a file loads here as it is."""
    from models.loading import load_checkpoint
    torch.manual_seed(0)
    arch = urm_arch(hidden_size=16, num_heads=2, expansion=2, num_layers=2, H_cycles=2, L_cycles=1, halt_max_steps=2,
                    forward_dtype="float32")
    theirs = build_loss_head(arch, sizes_metadata(vocab_size=5, seq_len=6, num_puzzle_identifiers=3), 2, "float32")
    state = {f"_orig_mod.{k}": (v.to(torch.bfloat16) if ".dwconv." in k else v) for k, v in theirs.state_dict().items()}
    torch.save(state, tmp_path / "step_7")
    loaded = load_checkpoint(tmp_path / "step_7", torch.device("cpu"), metadata=sizes_metadata(5, 6, 3), arch=arch,
                             batch_size=2, forward_dtype="float32")
    ours = loaded.head.state_dict()
    assert ours.keys() == theirs.state_dict().keys()
    for key, value in state.items():
        assert torch.equal(ours[key.removeprefix("_orig_mod.")], value.to(torch.float32)), key


@pytest.mark.parametrize("experiment", ["urm_arc1", "urm_arc2", "urm_sudoku"])
def test_the_urm_recipes_compose_to_the_papers_settings(experiment):
    from tests.test_config import compose_raw
    from training.config import validate_config
    config = validate_config(compose_raw([f"+experiment={experiment}"]))
    arch = config.arch.model_extra
    assert config.arch.name == "recursive_reasoning.urm@URM_ACTV1"
    assert (arch["num_layers"], arch["H_cycles"], arch["L_cycles"], arch["halt_max_steps"]) == (4, 2, 6, 16)
    assert (arch["hidden_size"], arch["num_heads"], arch["expansion"], arch["puzzle_emb_ndim"]) == (512, 8, 4, 512)
    assert config.ema and config.eval_interval == 2000
    if experiment == "urm_sudoku":
        assert (config.lr, config.puzzle_emb_lr, config.weight_decay, config.puzzle_emb_weight_decay,
                config.global_batch_size, config.epochs) == (1e-4, 1e-4, 1.0, 1.0, 128, 50000)
        assert "sudoku" in config.data_paths[0]
    else:
        assert (config.epochs, config.weight_decay) == (200000, 0.1)
        assert ("arc2" in config.data_paths[0]) == (experiment == "urm_arc2")
