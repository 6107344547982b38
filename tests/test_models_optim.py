"""AdamATan2, puzzle-embedding sign-SGD and EMA (docs/network.md#training), step by step against numpy."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from models.adam_atan2 import AdamATan2
from models.ema import EMAHelper
from models.sparse_embedding import CastedSparseEmbedding, CastedSparseEmbeddingSignSGD_Distributed


def numpy_adam_atan2(p, grads, lr, b1, b2, wd):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = m + (1 - b1) * (g - m)
        v = v + (1 - b2) * (g * g - v)
        p = p - (lr / (1 - b1 ** t)) * np.arctan2(m, np.sqrt(v) / np.sqrt(1 - b2 ** t))
    return p, m, v


def test_adam_atan2_matches_numpy_over_several_steps():
    rng = np.random.default_rng(0)
    p0 = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    grads = [[rng.normal(size=p.shape) * s for s in (1.0, 0.01, 3.0, 0.0)] for p in p0]
    lr, b1, b2, wd = 0.05, 0.9, 0.95, 0.1
    params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in p0]
    opt = AdamATan2(params, lr=lr, betas=(b1, b2), weight_decay=wd)
    for step in range(4):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[step])
        opt.step()
    for p, p_init, g in zip(params, p0, grads):
        expected, m, v = numpy_adam_atan2(p_init, g, lr, b1, b2, wd)
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), m, rtol=1e-12)
        np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), v, rtol=1e-12)
        assert opt.state[p]["step"].item() == 4


def test_adam_atan2_state_dict_round_trip_and_skips_params_without_grad():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = AdamATan2([a, b], lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    a.grad = torch.tensor([1.0, -1.0, 0.0])
    opt.step()
    assert b.eq(1).all() and b not in opt.state
    # first step: m = 0.1 g, sqrt(v / (1 - b2)) = |g|, so p -= (lr / 0.1) * atan2(0.1 g, |g|) = +-atan(0.1)
    torch.testing.assert_close(a.detach(), torch.tensor([1 - np.arctan(0.1), 1 + np.arctan(0.1), 1.0], dtype=torch.float32))
    clone = AdamATan2([torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())], lr=0.1)
    clone.load_state_dict(opt.state_dict())
    assert clone.param_groups[0]["betas"] == (0.9, 0.95)
    torch.testing.assert_close(clone.state[clone.param_groups[0]["params"][0]]["exp_avg"], opt.state[a]["exp_avg"])


def numpy_sign_sgd(table, ids, grads, lr, wd):
    table = table.copy()
    summed = {}
    for i, g in zip(ids, grads):
        summed[i] = summed.get(i, 0) + g
    for i, g in summed.items():
        table[i] = table[i] * (1 - lr * wd) - lr * np.sign(g)
    return table


def test_puzzle_embedding_sign_sgd_trains_only_batch_rows_and_sums_duplicates():
    torch.manual_seed(0)
    emb = CastedSparseEmbedding(6, 3, batch_size=4, init_std=1.0, cast_to=torch.float32)
    assert {n for n, _ in emb.named_buffers()} == {"weights", "local_weights", "local_ids"}
    assert set(emb.state_dict()) == {"weights"}  # local rows are scratch space, not saved
    opt = CastedSparseEmbeddingSignSGD_Distributed(emb.buffers(), world_size=1, lr=0.1, weight_decay=0.5)
    table = emb.weights.numpy().copy()
    rng = np.random.default_rng(1)
    for ids in ([1, 3, 1, 5], [0, 0, 2, 3]):
        coeffs = rng.normal(size=(4, 3))
        out = emb(torch.tensor(ids, dtype=torch.int32))
        (out * torch.tensor(coeffs, dtype=torch.float32)).sum().backward()  # d/d row = coeffs
        opt.step()
        opt.zero_grad(set_to_none=True)
        table = numpy_sign_sgd(table, ids, coeffs, 0.1, 0.5)
        np.testing.assert_allclose(emb.weights.numpy(), table, rtol=1e-6)
    assert np.array_equal(emb.weights[4].numpy(), table[4])  # never used: untouched
    emb.eval()
    torch.testing.assert_close(emb(torch.tensor([2])), emb.weights[2:3])


def _gather_worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        emb = CastedSparseEmbedding(4, 2, batch_size=2, init_std=0, cast_to=torch.float32)
        opt = CastedSparseEmbeddingSignSGD_Distributed(emb.buffers(), world_size=world_size, lr=1.0, weight_decay=0.0)
        ids = torch.tensor([[1, 2], [2, 3]][rank], dtype=torch.int32)
        coeffs = torch.tensor([[[1.0, -1.0], [1.0, 1.0]], [[-3.0, 2.0], [1.0, 0.0]]][rank])
        (emb(ids) * coeffs).sum().backward()
        opt.step()
        results[rank] = emb.weights.clone()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_puzzle_embedding_gathers_gradients_from_every_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, port, results), nprocs=2, join=True)
    # id 2 appears on both ranks: (1, 1) + (-3, 2) = (-2, 3) -> sign (-1, 1) -> p = (1, -1)
    expected = torch.tensor([[0.0, 0.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 0.0]])
    for rank in range(2):
        torch.testing.assert_close(results[rank], expected)


def test_ema_shadow_update_and_copy():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMAHelper(mu=0.9)
    ema.register(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.1 * 3 + 0.9 * 1
    ema.update(model)  # 0.1 * 3 + 0.9 * 1.2
    copy = ema.ema_copy(model)
    torch.testing.assert_close(copy.weight, torch.full((1, 2), 1.38))
    assert model.weight.eq(3.0).all()
    restored = EMAHelper(mu=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.shadow["weight"], torch.full((1, 2), 1.38))


@pytest.mark.device
def test_adam_atan2_reads_nothing_back_to_the_host_and_keeps_each_tensors_step_count(device, monkeypatch):
    """The second tensor gets gradients from the second step on, so its bias corrections use its own count; the
    step never reads a value back to the host (on CUDA the sync debug mode would raise too)."""
    rng = np.random.default_rng(2)
    p0 = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    grads = [[rng.normal(size=p.shape) for _ in range(4)] for p in p0]
    lr, b1, b2, wd = 0.05, 0.9, 0.95, 0.1
    dtype = torch.float64 if device.type == "cpu" else torch.float32  # MPS has no float64
    params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype, device=device)) for p in p0]
    opt = AdamATan2(params, lr=lr, betas=(b1, b2), weight_decay=wd)
    opt._fused = None  # the pure-PyTorch path, also where the fused package is installed

    def host_read(*args, **kwargs):
        raise AssertionError("the optimizer step read a tensor's value on the host")

    for name in ("item", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    on_device = [[torch.tensor(g, dtype=dtype, device=device) for g in per_param] for per_param in grads]
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4):
            params[0].grad = on_device[0][step]
            params[1].grad = on_device[1][step] if step else None
            opt.step()
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for p, p_init, g, steps in zip(params, p0, (grads[0], grads[1][1:]), (4, 3)):
        expected, _, _ = numpy_adam_atan2(p_init, g, lr, b1, b2, wd)
        np.testing.assert_allclose(p.detach().cpu().numpy(), expected, rtol=tolerance, atol=tolerance)
        assert opt.state[p]["step"].item() == steps
