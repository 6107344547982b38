"""bench/plain_trm.py computes the same network as ours, so `bench.mfu --versus-plain` compares like with like."""
import copy

import pytest
import torch

from bench.plain_trm import use_plain_network
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1


def trm_head(**overrides):
    cfg = dict(batch_size=3, seq_len=6, vocab_size=7, num_puzzle_identifiers=4, H_cycles=2, L_cycles=2, L_layers=2,
               hidden_size=16, expansion=2, num_heads=2, pos_encodings="rope", puzzle_emb_ndim=16, puzzle_emb_len=2,
               halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32")
    cfg.update(overrides)
    return ACTLossHead(TinyRecursiveReasoningModel_ACTV1(cfg), loss_type="softmax_cross_entropy")


@pytest.mark.parametrize("overrides", [{}, {"mlp_t": True, "pos_encodings": "none"}], ids=["attention", "mlp_t"])
def test_plain_network_gives_our_outputs_and_gradients(overrides):
    torch.manual_seed(0)
    ours = trm_head(**overrides)
    with torch.no_grad():  # a non-zero Q head and puzzle rows, so every path carries signal
        ours.model.inner.q_head.weight.normal_()
        ours.model.inner.puzzle_emb.weights.normal_()
    plain = copy.deepcopy(ours)
    use_plain_network(plain)
    batch = {"inputs": torch.randint(0, 7, (3, 6)), "labels": torch.randint(0, 7, (3, 6)),
             "puzzle_identifiers": torch.tensor([1, 2, 3])}
    results = []
    for head in (ours, plain):
        carry = head.initial_carry(batch)
        for _ in range(2):  # the second step starts from the first one's carry
            carry, loss, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
        results.append((loss.detach(), outputs["logits"], carry.inner_carry.z_H, grads))
    (loss_a, logits_a, z_a, grads_a), (loss_b, logits_b, z_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-4)  # float32 rounding; a wrong equation is off by 1e-1
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_b, z_a, rtol=1e-4, atol=1e-4)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) >= 5
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_plain_network_refuses_other_architectures():
    from models.recursive_reasoning.trm_singlez import TinyRecursiveReasoningModel_ACTV1 as SingleZ
    head = ACTLossHead(SingleZ(dict(batch_size=1, seq_len=4, vocab_size=5, num_puzzle_identifiers=1, H_cycles=1,
                                    L_cycles=1, L_layers=1, hidden_size=8, expansion=2, num_heads=2, pos_encodings="none",
                                    halt_max_steps=2, halt_exploration_prob=0.0, forward_dtype="float32")))
    with pytest.raises(ValueError, match="arch=trm"):
        use_plain_network(head)
