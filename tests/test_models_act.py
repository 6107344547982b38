"""ACT wrapper and recursion (docs/network.md#trm-recursion and #act-halting): gradient through the last H cycle only, detached carry, resets,
halting in training and evaluation, exploration, the Q-continue target, and one-line config errors."""
import pytest
import torch

from models.losses import ACTLossHead
from models.recursive_reasoning.hrm import HierarchicalReasoningModel_ACTV1
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from utils.functions import load_model_class

B, SEQ, VOCAB = 4, 6, 5


def tiny_config(**overrides):
    cfg = dict(batch_size=B, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=3, causal=False,
               H_cycles=3, L_cycles=2, H_layers=1, L_layers=1, hidden_size=16, expansion=2, num_heads=2,
               pos_encodings="rope", puzzle_emb_ndim=16, puzzle_emb_len=2, halt_max_steps=4, halt_exploration_prob=0.0,
               forward_dtype="float32", mlp_t=False, no_ACT_continue=True)
    cfg.update(overrides)
    return cfg


def make_batch(seed=0, batch_size=B):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, VOCAB, (batch_size, SEQ), dtype=torch.int32, generator=g),
            "labels": torch.randint(0, VOCAB, (batch_size, SEQ), dtype=torch.int32, generator=g),
            "puzzle_identifiers": torch.randint(0, 3, (batch_size,), dtype=torch.int32, generator=g)}


def set_q(model, q_halt_bias, q_continue_bias=-5.0):
    with torch.no_grad():
        model.inner.q_head.weight.zero_()
        model.inner.q_head.bias.copy_(torch.tensor([q_halt_bias, q_continue_bias]))


def record_grad_modes(module):
    modes = []
    module.register_forward_hook(lambda *_: modes.append(torch.is_grad_enabled()))
    return modes


def test_trm_backpropagates_only_through_the_last_H_cycle():
    torch.manual_seed(0)
    model = TinyRecursiveReasoningModel_ACTV1(tiny_config(H_cycles=3, L_cycles=2))
    modes = record_grad_modes(model.inner.L_level)
    carry, outputs = model(model.initial_carry(make_batch()), make_batch())
    # 3 H cycles x (2 L updates + 1 H update) of the one shared network; only the last cycle's 3 with gradient
    assert modes == [False] * 6 + [True] * 3
    outputs["logits"].sum().backward()
    assert model.inner.L_level.layers[0].mlp.down_proj.weight.grad is not None


def test_hrm_backpropagates_only_through_the_final_L_and_H_updates():
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1(tiny_config(H_cycles=2, L_cycles=3))
    L_modes, H_modes = record_grad_modes(model.inner.L_level), record_grad_modes(model.inner.H_level)
    model(model.initial_carry(make_batch()), make_batch())
    assert L_modes == [False] * 5 + [True] and H_modes == [False, True]


@pytest.mark.parametrize("arch", ["trm", "trm_singlez", "trm_hier6", "hrm", "transformers_baseline"])
def test_returned_carry_is_detached(arch):
    name = {"hrm": "hrm@HierarchicalReasoningModel_ACTV1", "transformers_baseline": "transformers_baseline@Model_ACTV2"}.get(
        arch, f"{arch}@TinyRecursiveReasoningModel_ACTV1")
    model = load_model_class("recursive_reasoning." + name)(tiny_config(H_cycles=2))
    carry, outputs = model(model.initial_carry(make_batch()), make_batch())
    assert outputs["logits"].requires_grad
    for z in vars(carry.inner_carry).values():
        assert not z.requires_grad and z.grad_fn is None


def test_initial_carry_halted_and_rows_reset_on_halt():
    torch.manual_seed(0)
    model = TinyRecursiveReasoningModel_ACTV1(tiny_config())
    first, second = make_batch(0), make_batch(1)
    carry = model.initial_carry(first)
    assert carry.halted.all() and carry.steps.eq(0).all() and carry.steps.dtype == torch.int32

    carry, _ = model(carry, first)
    assert carry.steps.tolist() == [1] * B
    for k in first:
        assert torch.equal(carry.current_data[k], first[k])
    carry.halted = torch.tensor([True, False, True, False])
    z_before = carry.inner_carry

    reset = model.inner.reset_carry(carry.halted, z_before)
    for row in range(B):
        if carry.halted[row]:
            assert torch.equal(reset.z_H[row], model.inner.H_init.expand_as(reset.z_H[row]))
            assert torch.equal(reset.z_L[row], model.inner.L_init.expand_as(reset.z_L[row]))
        else:
            assert torch.equal(reset.z_H[row], z_before.z_H[row]) and torch.equal(reset.z_L[row], z_before.z_L[row])

    carry, _ = model(carry, second)
    assert carry.steps.tolist() == [1, 2, 1, 2]
    for k in first:
        for row, source in enumerate([second, first, second, first]):
            assert torch.equal(carry.current_data[k][row], source[k][row])


def test_evaluation_runs_exactly_halt_max_steps():
    torch.manual_seed(0)
    head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(tiny_config(halt_max_steps=3)))
    set_q(head.model, q_halt_bias=10.0)  # training would halt at step 1
    head.eval()
    batch = make_batch()
    carry = head.initial_carry(batch)
    calls = 0
    with torch.inference_mode():
        while True:
            carry, _, metrics, _, all_halted = head(carry=carry, batch=batch, return_keys=[])
            calls += 1
            if all_halted:
                break
            assert metrics["count"].item() == 0
    assert calls == 3 and carry.steps.tolist() == [3] * B and metrics["steps"].item() == 3 * B


def halting_steps(model, halt_max_steps, rows=64, seed=0):
    """Train-mode ACT steps until every row has halted once; returns each row's step count at its first halt."""
    torch.manual_seed(seed)
    batch = make_batch(batch_size=rows)
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    first_halt = torch.where(carry.halted, carry.steps, 0)
    for _ in range(halt_max_steps - 1):
        carry, _ = model(carry, batch)
        first_halt = torch.where((first_halt == 0) & carry.halted, carry.steps, first_halt)
    return first_halt


def test_training_halts_on_q_and_exploration_never_halts_before_the_drawn_minimum():
    cfg = tiny_config(batch_size=64, halt_max_steps=5, H_cycles=1, L_cycles=1, puzzle_emb_ndim=0)
    model = TinyRecursiveReasoningModel_ACTV1(dict(cfg, halt_exploration_prob=0.0))
    set_q(model, q_halt_bias=10.0)
    assert halting_steps(model, 5).tolist() == [1] * 64          # q_halt > 0 halts at once

    model = TinyRecursiveReasoningModel_ACTV1(dict(cfg, halt_exploration_prob=1.0))
    set_q(model, q_halt_bias=10.0)
    steps = halting_steps(model, 5)
    assert steps.min().item() >= 2 and steps.max().item() <= 5        # minimum drawn from [2, halt_max_steps]
    assert set(steps.tolist()) == {2, 3, 4, 5}

    model = TinyRecursiveReasoningModel_ACTV1(dict(cfg, halt_exploration_prob=0.0))
    set_q(model, q_halt_bias=-10.0)
    assert halting_steps(model, 5).tolist() == [5] * 64          # never wants to halt: stops at the limit


def test_q_continue_target_when_act_continue_is_on():
    torch.manual_seed(0)
    head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(tiny_config(no_ACT_continue=False, halt_max_steps=3)))
    set_q(head.model, q_halt_bias=-1.0, q_continue_bias=0.5)          # halts when q_halt > q_continue: never here
    batch = make_batch()
    carry = head.initial_carry(batch)
    carry, loss, metrics, _, _ = head(carry=carry, batch=batch, return_keys=[])
    assert "q_continue_loss" in metrics and not carry.halted.any()
    # target = sigmoid(max(next q_halt, next q_continue)) = sigmoid(0.5) before the last step
    target = torch.sigmoid(torch.tensor(0.5))
    q_cont = torch.tensor(0.5)
    expected = B * -(target * torch.log(torch.sigmoid(q_cont)) + (1 - target) * torch.log(1 - torch.sigmoid(q_cont)))
    assert metrics["q_continue_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    carry, _, metrics, _, _ = head(carry=carry, batch=batch, return_keys=[])
    carry, _, metrics, _, all_halted = head(carry=carry, batch=batch, return_keys=[])
    assert bool(all_halted)
    # at the last step the target is sigmoid(next q_halt) = sigmoid(-1)
    target = torch.sigmoid(torch.tensor(-1.0))
    expected = B * -(target * torch.log(torch.sigmoid(q_cont)) + (1 - target) * torch.log(1 - torch.sigmoid(q_cont)))
    assert metrics["q_continue_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_size=30, num_heads=4), "arch.hidden_size=30 must be divisible by arch.num_heads=4"),
    (dict(H_cycles=0), "arch.H_cycles=0: Input should be greater than 0"),
    (dict(L_cycles=0), "arch.L_cycles=0: Input should be greater than 0"),
    (dict(pos_encodings="alibi"), "arch.pos_encodings='alibi': Input should be 'rope', 'learned' or 'none'"),
    (dict(forward_dtype="int8"), "arch.forward_dtype='int8': Input should be 'bfloat16', 'float32' or 'float16'"),
    (dict(hidden_size=None), "arch.hidden_size=None: Input should be a valid integer"),
])
def test_bad_config_fails_at_construction_with_one_line(overrides, message):
    with pytest.raises(ValueError) as info:
        TinyRecursiveReasoningModel_ACTV1(tiny_config(**overrides))
    assert str(info.value) == message


def test_missing_key_and_unknown_arch_name_are_one_line():
    cfg = tiny_config()
    del cfg["L_cycles"]
    with pytest.raises(ValueError, match=r"^arch.L_cycles is missing: set it in config/arch/\*.yaml or with arch.L_cycles=...$"):
        TinyRecursiveReasoningModel_ACTV1(cfg)
    with pytest.raises(ValueError, match="has no class 'TRM'"):
        load_model_class("recursive_reasoning.trm@TRM")
    with pytest.raises(ValueError, match="not found"):
        load_model_class("recursive_reasoning.nope@TRM")


def test_puzzle_emb_exposed_only_when_configured():
    assert TinyRecursiveReasoningModel_ACTV1(tiny_config()).puzzle_emb is not None
    assert getattr(TinyRecursiveReasoningModel_ACTV1(tiny_config(puzzle_emb_ndim=0)), "puzzle_emb", None) is None
