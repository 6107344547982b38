"""Golden test: a reference-layout state dict (`_orig_mod.` keys) loads, and one ACT training step gives the
logits, Q values, loss and gradients of the SPEC §3-§5 equations, re-implemented here in float64 from the raw
tensors without any of our layers."""
import math

import pytest
import torch

from models.checkpoint_io import load_reference_checkpoint
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1

B, SEQ, VOCAB, D, HEADS = 3, 5, 6, 16, 2


def config(**overrides):
    cfg = dict(batch_size=B, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=4, causal=False, H_cycles=2, L_cycles=2,
               H_layers=0, L_layers=2, hidden_size=D, expansion=2, num_heads=HEADS, pos_encodings="rope",
               puzzle_emb_ndim=24, puzzle_emb_len=0, halt_max_steps=4, halt_exploration_prob=0.0,
               forward_dtype="float32", mlp_t=False, no_ACT_continue=True)
    cfg.update(overrides)
    return cfg


# ---- the SPEC's equations, written out ----

def norm(h):
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)


def swiglu(h, w_gate_up, w_down):
    gate, up = (h @ w_gate_up.T).chunk(2, -1)
    return (gate * torch.sigmoid(gate) * up) @ w_down.T


def rope(t, positions):
    """t [B, S, H, hd]: pairs (j, j + hd/2) rotate by angle pos * 10000^(-2j/hd)."""
    half = t.shape[-1] // 2
    angle = positions[:, None].double() * 10000.0 ** (-2 * torch.arange(half, dtype=torch.float64) / t.shape[-1])
    c, s = (f(angle).to(t.dtype)[None, :, None] for f in (torch.cos, torch.sin))
    a, b = t[..., :half], t[..., half:]
    return torch.cat((a * c - b * s, b * c + a * s), -1)


def attention(h, w_qkv, w_o, use_rope):
    b, s, _ = h.shape
    hd = D // HEADS
    q, k, v = (t.reshape(b, s, HEADS, hd) for t in (h @ w_qkv.T).split(D, -1))
    if use_rope:
        q, k = rope(q, torch.arange(s)), rope(k, torch.arange(s))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v)
    return out.reshape(b, s, D) @ w_o.T


def reference_step(w, pz_rows, batch, cfg, plen):
    """One ACT step from a fresh carry: logits, q_halt, q_continue."""
    x = w["embed_tokens.embedding_weight"][batch["inputs"].long()]
    pz = torch.nn.functional.pad(pz_rows, (0, plen * D - pz_rows.shape[1])).reshape(B, plen, D)
    x = torch.cat((pz, x), 1)
    if cfg["pos_encodings"] == "learned":
        x = 0.707106781 * (x + w["embed_pos.embedding_weight"])
    x = math.sqrt(D) * x

    def net(h, injection):
        h = h + injection
        for i in range(cfg["L_layers"]):
            layer = f"L_level.layers.{i}."
            if cfg["mlp_t"]:  # mixes along the sequence: transpose, SwiGLU + norm over positions, transpose back
                ht = h.transpose(1, 2)
                h = norm(ht + swiglu(ht, w[layer + "mlp_t.gate_up_proj.weight"], w[layer + "mlp_t.down_proj.weight"])).transpose(1, 2)
            else:
                h = norm(h + attention(h, w[layer + "self_attn.qkv_proj.weight"], w[layer + "self_attn.o_proj.weight"],
                                       cfg["pos_encodings"] == "rope"))
            h = norm(h + swiglu(h, w[layer + "mlp.gate_up_proj.weight"], w[layer + "mlp.down_proj.weight"]))
        return h

    z_H = w["H_init"].expand(B, plen + SEQ, D)
    z_L = w["L_init"].expand(B, plen + SEQ, D)
    for cycle in range(cfg["H_cycles"]):
        with torch.set_grad_enabled(cycle == cfg["H_cycles"] - 1):
            for _ in range(cfg["L_cycles"]):
                z_L = net(z_L, z_H + x)
            z_H = net(z_H, z_L)
    logits = z_H[:, plen:] @ w["lm_head.weight"].T
    q = z_H[:, 0] @ w["q_head.weight"].T + w["q_head.bias"]
    return logits, q[:, 0], q[:, 1]


def reference_loss(logits, q_halt, labels):
    mask = labels != -100
    s = torch.where(logits < 0, 1 / (1 - logits), logits + 1)
    logp = torch.log(s / s.sum(-1, keepdim=True))
    token_loss = -torch.where(mask, logp.gather(-1, torch.where(mask, labels, 0).long()[..., None])[..., 0], 0)
    lm = (token_loss.sum(-1) / mask.sum(-1).clamp_min(1)).sum()
    exact = ((logits.argmax(-1) == labels) | ~mask).all(-1).double()
    q_loss = -(exact * torch.nn.functional.logsigmoid(q_halt) + (1 - exact) * torch.nn.functional.logsigmoid(-q_halt)).sum()
    return lm + 0.5 * q_loss


@pytest.mark.parametrize("overrides", [dict(), dict(mlp_t=True, pos_encodings="none", puzzle_emb_ndim=16, puzzle_emb_len=3),
                                       dict(pos_encodings="learned")])
def test_reference_checkpoint_step_matches_the_spec_equations(overrides):
    cfg = config(**overrides)
    torch.manual_seed(0)
    # A reference-layout file: every tensor random at its init scale (non-zero Q head and puzzle table), `_orig_mod.` keys.
    layout = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(cfg)).state_dict()
    reference = {"_orig_mod." + k: torch.randn_like(v) / (math.sqrt(v.shape[1]) if v.ndim > 1 else 1.0) for k, v in layout.items()}

    torch.manual_seed(1)
    head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(cfg), loss_type="stablemax_cross_entropy")
    load_reference_checkpoint(head, reference)
    for k, v in head.state_dict().items():
        assert torch.equal(v, reference["_orig_mod." + k])

    g = torch.Generator().manual_seed(2)
    batch = {"inputs": torch.randint(0, VOCAB, (B, SEQ), dtype=torch.int32, generator=g),
             "labels": torch.randint(0, VOCAB, (B, SEQ), dtype=torch.int32, generator=g),
             "puzzle_identifiers": torch.tensor([2, 0, 2], dtype=torch.int32)}
    batch["labels"][1, 1:3] = -100

    w = {k.removeprefix("_orig_mod.model.inner."): v.double().requires_grad_() for k, v in reference.items()}
    pz_rows = w["puzzle_emb.weights"].detach()[batch["puzzle_identifiers"].long()].clone().requires_grad_()
    plen = head.model.inner.puzzle_emb_len
    assert plen == (cfg["puzzle_emb_len"] or math.ceil(cfg["puzzle_emb_ndim"] / D))
    ref_logits, ref_q_halt, ref_q_continue = reference_step(w, pz_rows, batch, cfg, plen)
    # Row 0's labels become the prediction so that one row is exactly right (q_halt target 1).
    batch["labels"][0] = ref_logits[0].argmax(-1).int()
    ref_loss = reference_loss(ref_logits, ref_q_halt, batch["labels"])
    ref_loss.backward()

    head.train()
    carry, loss, metrics, outputs, _ = head(carry=head.initial_carry(batch), batch=batch,
                                            return_keys=["logits", "q_halt_logits", "q_continue_logits"])
    loss.backward()

    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["logits"].double(), ref_logits.detach(), **close)
    torch.testing.assert_close(outputs["q_halt_logits"].double(), ref_q_halt.detach(), **close)
    torch.testing.assert_close(outputs["q_continue_logits"].double(), ref_q_continue.detach(), **close)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **close)
    assert torch.equal(carry.halted, ref_q_halt.detach() > 0)  # training, no exploration: halt where q_halt > 0
    for name, param in head.model.inner.named_parameters():
        torch.testing.assert_close(param.grad.double(), w[name].grad, **close, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(head.model.inner.puzzle_emb.local_weights.grad.double(), pz_rows.grad, **close)
