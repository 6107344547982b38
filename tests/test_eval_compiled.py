"""Evaluation as pretrain.py runs it: one EMA copy, compiled once and refreshed in place before each evaluation,
gives the eager metrics and reuses its graphs."""

import pytest
import torch
from torch._dynamo.utils import counters

from models.ema import EMAHelper
from utils.device import maybe_compile
from utils.distributed import DistInfo
from evaluation.loop import evaluate
from tests.helpers import tiny_head


def test_the_ema_copy_shares_every_tensor_but_the_shadowed_weights():
    head = tiny_head()
    ema = EMAHelper(mu=0.5)
    ema.register(head)
    copy = ema.ema_copy(head)
    own = dict(head.named_parameters())
    for name, p in copy.named_parameters():
        assert (p is own[name]) == (name not in ema.shadow) and torch.equal(p, ema.shadow.get(name, p))
    assert copy.model.inner.puzzle_emb.weights is head.model.inner.puzzle_emb.weights  # the table is not copied


def eval_batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [("all", {"inputs": torch.randint(0, 5, (3, 4), dtype=torch.int32, generator=g),
                     "labels": torch.randint(0, 5, (3, 4), dtype=torch.int32, generator=g),
                     "puzzle_identifiers": torch.randint(0, 4, (3,), dtype=torch.int32, generator=g)}, 3)
            for _ in range(n)]


@pytest.mark.slow
@pytest.mark.device
def test_compiled_evaluation_gives_the_eager_metrics_and_reuses_its_graph_after_a_refresh(device):
    torch.manual_seed(0)
    with torch.device(device):
        head = tiny_head()
    ema = EMAHelper(mu=0.5)
    ema.register(head)
    batches, sets = eval_batches(), ["all"]

    def train_a_little():
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p))
        ema.update(head)

    def metrics(model):
        return evaluate(model.eval(), batches, sets, [], DistInfo(), device)["all"]

    def assert_same(a, b):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key

    train_a_little()
    eval_head = ema.ema_copy(head)
    compiled = maybe_compile(eval_head, True, device)
    assert compiled is not eval_head, "compilation is on (DISABLE_COMPILE unset)"
    first = metrics(compiled)
    assert_same(first, metrics(ema.ema_copy(head)))
    graphs = counters["stats"]["unique_graphs"]

    train_a_little()
    ema.ema(eval_head)  # what pretrain.py does before each evaluation
    second = metrics(compiled)
    assert counters["stats"]["unique_graphs"] == graphs, "the refreshed copy recompiled"
    assert second["lm_loss"] != first["lm_loss"], "the compiled graph used the new weights"
    assert_same(second, metrics(ema.ema_copy(head)))
