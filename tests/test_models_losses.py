"""Stablemax / softmax cross-entropy and the loss head's sums (docs/network.md#loss-head), against hand-computed values."""
import math

import pytest
import torch

from dataset.format import IGNORE_LABEL_ID
from models.losses import ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy
from models.recursive_reasoning.act import ACTCarry


def test_stablemax_cross_entropy_hand_values():
    logits = torch.tensor([[[0.0, 1.0, -1.0], [2.0, -3.0, 0.5]]])
    labels = torch.tensor([[1, 2]])
    # s = [1, 2, 1/2] -> -log(2 / 3.5);  s = [3, 1/4, 1.5] -> -log(1.5 / 4.75)
    expected = torch.tensor([[math.log(3.5 / 2), math.log(4.75 / 1.5)]], dtype=torch.float64)
    out = stablemax_cross_entropy(logits, labels)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
    ignored = stablemax_cross_entropy(logits, torch.tensor([[1, IGNORE_LABEL_ID]]))
    assert ignored[0, 1].item() == 0 and ignored[0, 0].item() == pytest.approx(math.log(1.75))


def test_softmax_cross_entropy_hand_values():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    out = softmax_cross_entropy(logits, torch.tensor([[1]]))
    assert out.item() == pytest.approx(math.log(4 / 3))
    assert softmax_cross_entropy(logits, torch.tensor([[IGNORE_LABEL_ID]])).item() == 0


class FixedOutputs(torch.nn.Module):
    """An ACT model stand-in that returns fixed logits, so the head's arithmetic can be checked by hand."""

    def __init__(self, logits, q_halt, halted, steps, labels):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)
        self.q_halt, self.halted, self.steps, self.labels = q_halt, halted, steps, labels

    def forward(self, carry, batch):
        out = {"logits": self.logits, "q_halt_logits": self.q_halt, "q_continue_logits": torch.zeros_like(self.q_halt)}
        return ACTCarry(None, self.steps, self.halted, {"labels": self.labels}), out


def test_loss_head_sums_and_metrics_by_hand():
    # 3 rows x 2 tokens, vocab 2. Logits (0, 1) predict token 1 with stablemax loss log(3/2); (1, 0) predict 0.
    p1, p0 = [0.0, 1.0], [1.0, 0.0]
    logits = torch.tensor([[p1, p1], [p1, p0], [p0, p0]])
    labels = torch.tensor([[1, IGNORE_LABEL_ID], [1, 1], [IGNORE_LABEL_ID, IGNORE_LABEL_ID]])
    q_halt = torch.tensor([2.0, -1.0, 0.5])
    halted = torch.tensor([True, True, False])
    steps = torch.tensor([3, 5, 1], dtype=torch.int32)
    head = ACTLossHead(FixedOutputs(logits, q_halt, halted, steps, labels), loss_type="stablemax_cross_entropy")
    _, loss, metrics, outputs, all_halted = head(carry=None, batch={}, return_keys=["preds", "logits"])

    right, wrong = math.log(3 / 2), math.log(3 / 1)  # s = (1, 2): -log(2/3) for the predicted token, -log(1/3) otherwise
    lm = right / 1 + (right + wrong) / 2 + 0.0      # row 0: one token, exact; row 1: one of two right; row 2: no labels
    def bce(x, y): return math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x))
    q = bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 1)   # row 2 has no labels: "all tokens right" is vacuously true
    assert metrics["lm_loss"].item() == pytest.approx(lm)
    assert metrics["q_halt_loss"].item() == pytest.approx(q, rel=1e-6)
    assert loss.item() == pytest.approx(lm + 0.5 * q, rel=1e-6)
    assert metrics["count"].item() == 2                    # halted rows with labels
    assert metrics["accuracy"].item() == pytest.approx(1.0 + 0.5)
    assert metrics["exact_accuracy"].item() == 1
    assert metrics["q_halt_accuracy"].item() == 2          # row 0: q>=0 and exact; row 1: q<0 and not exact
    assert metrics["steps"].item() == 8
    assert "q_continue_loss" not in metrics
    assert outputs["preds"].tolist() == [[1, 1], [1, 0], [0, 0]] and not outputs["logits"].requires_grad
    assert not bool(all_halted)
    loss.backward()
    assert head.model.logits.grad is not None


def test_unknown_loss_type_is_one_clear_line():
    with pytest.raises(ValueError, match="loss_type='cross_entropy' is unknown; use one of stablemax_cross_entropy, softmax_cross_entropy"):
        ACTLossHead(torch.nn.Identity(), loss_type="cross_entropy")
