"""Adaptive halting with continuous batching, the Python inference API, reasoning images and the demo, on a tiny
trained checkpoint."""
import math

import numpy as np
import pytest
import torch

from inference.api import Solver
from inference.encoding import arc_test_inputs, encode_maze
from evaluation.halting import AdaptiveHalting, halt_logit_threshold
from models.loading import load_checkpoint
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from utils.distributed import DistInfo
from evaluation.loop import evaluate
from utils.errors import UserError


@pytest.fixture
def head(tiny):
    return load_checkpoint(tiny["run"], torch.device("cpu")).head


def make_loader(tiny, batch_size=8):
    return PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(tiny["data"])], global_batch_size=batch_size,
                                             test_set_mode=True, epochs_per_iter=1, rank=0, num_replicas=1), split="test")


def reference_steps(head, batch, steps):
    """Each row run for `steps` steps through the ACT contract: preds [steps, B, L] and q_halt logits [steps, B]."""
    carry = head.initial_carry(batch)
    preds, q = [], []
    with torch.inference_mode():
        for _ in range(steps):
            carry, _, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["preds", "q_halt_logits"])
            preds.append(outputs["preds"])
            q.append(outputs["q_halt_logits"])
    return torch.stack(preds), torch.stack(q)


def test_halt_threshold_is_a_logit_cut():
    assert halt_logit_threshold(0.5) == 0.0
    assert halt_logit_threshold(0.8) == pytest.approx(math.log(4))
    assert halt_logit_threshold(None) == math.inf and halt_logit_threshold(1.0) == math.inf
    assert halt_logit_threshold(0.0) == -math.inf


def test_adaptive_equals_fixed_when_no_row_halts_early(tiny, head):
    with torch.no_grad():
        head.model.inner.q_head.bias[0] = -1e4  # sigmoid(q_halt) ~ 0: every row runs to halt_max_steps
    loader, metadata = make_loader(tiny), make_loader(tiny).metadata
    fixed = evaluate(head, loader, metadata.sets, [], DistInfo(), torch.device("cpu"), save_outputs=["preds", "inputs"],
                     save_dir=None)
    runner = AdaptiveHalting(0.5)
    adaptive = evaluate(head, loader, metadata.sets, [], DistInfo(), torch.device("cpu"), batch_runner=runner)
    for key in ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
        assert adaptive["all"][key] == pytest.approx(fixed["all"][key], abs=1e-6), key
    assert adaptive["all"]["steps"] == head.model.config.halt_max_steps
    assert runner.model_calls == head.model.config.halt_max_steps * math.ceil(40 / 8)


def test_a_confident_row_stops_after_one_step_and_frees_its_slot(tiny, head):
    with torch.no_grad():
        head.model.inner.q_head.bias[0] = 1e4   # sigmoid(q_halt) ~ 1 after the first step
    runner = AdaptiveHalting(0.5)
    chunks = list(runner(head, make_loader(tiny), (), torch.device("cpu")))
    rows = torch.cat([outputs["row_index"] for _, _, _, outputs in chunks])
    steps = torch.cat([outputs["steps"] for _, _, _, outputs in chunks])
    assert sorted(rows.tolist()) == list(range(40)) and (steps == 1).all()
    assert runner.model_calls == 40 // 8  # one call per 8 puzzles, not halt_max_steps calls


def test_continuous_batching_restarts_reused_slots_on_their_new_puzzle(tiny, head):
    """Mixed halting: each row halts at the first step its sigmoid(q_halt) passes the threshold, with the answer and
    Q it has when run alone from scratch, although its slot was used by other puzzles before."""
    torch.manual_seed(0)
    with torch.no_grad():  # a Q head that spreads the rows' confidences, so they halt at different steps
        q_head = head.model.inner.q_head
        q_head.weight[0] = torch.randn_like(q_head.weight[0]) * 4 / q_head.weight.shape[1] ** 0.5
        q_head.bias[0] = 0
    batches = list(make_loader(tiny))
    batch = {k: torch.cat([b[k] for _, b, _ in batches]) for k in batches[0][1]}
    max_steps = head.model.config.halt_max_steps
    ref_preds, ref_q = reference_steps(head, batch, max_steps)
    # the threshold sits in the widest gap between confidences near the middle, clear of rounding
    confidences = torch.sigmoid(ref_q).flatten().sort().values
    middle = len(confidences) // 2
    gaps = confidences[middle - 10:middle + 10].diff()
    cut = middle - 10 + int(gaps.argmax())
    threshold = float((confidences[cut] + confidences[cut + 1]) / 2)
    assert gaps.max() > 1e-4
    runner = AdaptiveHalting(threshold, record_steps=True)
    chunks = list(runner(head, batches, (), torch.device("cpu")))
    seen, step_counts = set(), set()
    for _, chunk, _, outputs in chunks:
        for j, row in enumerate(outputs["row_index"].tolist()):
            above = (torch.sigmoid(ref_q[:, row]) > threshold).nonzero().flatten()
            expected = int(above[0]) + 1 if len(above) else max_steps
            assert int(outputs["steps"][j]) == expected
            assert torch.equal(chunk["inputs"][j], batch["inputs"][row])
            assert torch.equal(outputs["preds"][j], ref_preds[expected - 1, row])
            assert torch.allclose(outputs["q_halt_logits"][j], ref_q[expected - 1, row], atol=1e-4)
            assert torch.equal(outputs["step_preds"][j, :expected], ref_preds[:expected, row])
            seen.add(row)
            step_counts.add(expected)
    assert seen == set(range(40)) and len(step_counts) > 1
    assert runner.model_calls < max_steps * 5


def test_api_solves_a_plain_list_as_the_dataset_row(tiny, head):
    solver = Solver.from_checkpoint(tiny["run"], device="cpu")
    assert solver.kind == "sudoku" and solver.seq_len == 16
    row = next(iter(make_loader(tiny)))[1]
    puzzle = (row["inputs"][0].numpy() - 1).reshape(4, 4).tolist()   # tokens -> digits, 0 blank
    result = solver.solve(puzzle, halt="fixed", return_steps=True)
    preds, q = reference_steps(head, {k: v[:1] for k, v in row.items()}, head.model.config.halt_max_steps)
    assert np.array_equal(result.tokens, preds[-1, 0].numpy())
    assert result.answer == (preds[-1, 0].numpy() - 1).reshape(4, 4).tolist()
    assert result.steps == head.model.config.halt_max_steps == len(result.step_answers)
    assert result.confidence == pytest.approx(float(torch.sigmoid(q[-1, 0])), abs=1e-5)
    assert result.step_answers[-1] == result.answer
    batch = solver.solve_batch([puzzle, [[0] * 4] * 4, puzzle])
    assert batch[0].answer == batch[2].answer and 1 <= batch[1].steps <= 4


@pytest.mark.parametrize("puzzle, message", [
    ([[0] * 9] * 9, "Sudoku is 9x9 but this checkpoint solves 4x4 boards"),
    ([[0, 0, 0, 7]] + [[0] * 4] * 3, "Sudoku digit 7 outside 0-4"),
    ([[0] * 4] * 3 + [[0, 0]], "Sudoku must be an 4x4 list"),
])
def test_api_bad_puzzles_give_one_line(tiny, puzzle, message):
    solver = Solver.from_checkpoint(tiny["run"], device="cpu")
    with pytest.raises(UserError) as e:
        solver.solve(puzzle)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_encoders_reject_bad_mazes_and_arc_colours():
    with pytest.raises(UserError, match="maze character 'x'"):
        encode_maze(["#x", "SG"], seq_len=4)
    with pytest.raises(UserError, match="maze has 3 lines"):
        encode_maze("##\nSG\n##", seq_len=4)
    with pytest.raises(UserError, match="colour 10 outside 0-9"):
        arc_test_inputs({"train": [], "test": [{"input": [[1, 10]]}]})
    assert arc_test_inputs({"test": [{"input": [[1, 2]]}, {"input": [[3]]}]})[1].tolist() == [[3]]


def test_reasoning_images_for_wandb(tiny, head):
    from evaluation.pictures import dataset_kind, reasoning_images
    loader = make_loader(tiny)
    kind = dataset_kind(loader.metadata, [str(tiny["data"])])
    images = reasoning_images(head, next(iter(loader))[1], kind, n=3)
    assert sorted(images) == ["reasoning/0", "reasoning/1", "reasoning/2"]
    assert all(image.width > image.height > 0 for image in images.values())
    assert reasoning_images(head, next(iter(loader))[1], None, n=3) == {}


def test_demo_runs_and_explains_a_missing_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    from inference import demo
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        demo.main([])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: no checkpoint under checkpoints/Sudoku6-quick-ACT-torch/: give "
                                               "checkpoint=<run dir or weights file>, or train the quickstart one with "
                                               "python pretrain.py +experiment=quickstart")
    monkeypatch.chdir(tiny["data"].parent)  # the run's config names its dataset by this path
    assert demo.main([f"checkpoint={tiny['run']}", "index=3", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "step 1" in out and "halting confidence" in out and ("solved in" in out)
