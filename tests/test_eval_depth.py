"""Test-time depth (docs/evaluation.md#test-time-depth): evaluation with a step limit beyond training runs exactly
that many steps; evaluate.py depths=[...] scores each limit under fixed and adaptive halting, with a table and plot."""

import pytest
import torch
from torch import nn

from evaluation.depth import depth_rows, format_depth_table, plot_depths, set_halt_max_steps
from evaluation.halting import run_to_max_steps
from tests.helpers import evaluate_report, tiny_head
from utils.errors import UserError


def tiny_batches(n=1):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield "all", {"inputs": torch.randint(1, 5, (3, 4), generator=g), "labels": torch.randint(1, 5, (3, 4), generator=g),
                      "puzzle_identifiers": torch.tensor([1, 2, 3])}, 3


@pytest.mark.parametrize("steps", [2, 4, 9, 33])
def test_a_step_limit_beyond_training_runs_exactly_that_many_steps(steps):
    torch.manual_seed(0)
    head = tiny_head().eval()
    assert head.model.config.halt_max_steps == 4  # as trained
    weights = {k: v.clone() for k, v in head.state_dict().items()}
    set_halt_max_steps(head, steps)
    calls = []
    original = head.model.forward
    head.model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.no_grad():
        for _, _, metrics, _ in run_to_max_steps(head, tiny_batches(2), [], torch.device("cpu")):
            assert metrics["steps"].item() == 3 * steps  # summed over the 3 halted rows
    assert len(calls) == 2 * steps
    assert head.model.config.halt_max_steps == steps and head.model.inner.config is head.model.config
    assert all(torch.equal(v, weights[k]) for k, v in head.state_dict().items())


def test_a_model_without_act_is_refused_in_one_line():
    with pytest.raises(UserError, match="no ACT halting"):
        set_halt_max_steps(nn.Linear(2, 2), 8)


def test_depth_rows_table_and_plot(tmp_path):
    def result(acc, steps):
        return {"all": {"exact_accuracy": acc, "exact_accuracy_ci_low": acc / 2, "exact_accuracy_ci_high": (1 + acc) / 2,
                        "steps": steps, "count": 40, "accuracy": 0.9}, "Sudoku/exact_accuracy": acc}
    results = {"fixed@4": result(0.25, 4), "fixed@16": result(0.5, 16), "adaptive@4": result(0.2, 2.5),
               "adaptive@16": result(0.45, 6.0)}
    rows = depth_rows(results, [4, 16], ["fixed", "adaptive"])
    assert [(r["depth"], r["halt"], r["exact_accuracy"]) for r in rows] == [
        (4, "fixed", 0.25), (4, "adaptive", 0.2), (16, "fixed", 0.5), (16, "adaptive", 0.45)]
    table = format_depth_table(rows)
    assert len(table.splitlines()) == 5 and "0.5000 [0.2500, 0.7500]" in table
    assert plot_depths(rows, tmp_path / "d.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_beyond_training_depth_and_a_depth_sweep(tiny, tmp_path):
    out = tmp_path / "deep"
    result, report = evaluate_report([f"checkpoint={tiny['run']}", "halt_max_steps=9"], tmp_path, out)
    assert report["halt_max_steps"] == 9 and report["trained_halt_max_steps"] == 4
    assert report["results"]["fixed"]["all"]["steps"] == 9

    out = tmp_path / "sweep"
    result, report = evaluate_report([f"checkpoint={tiny['run']}", "depths=[2,6]", "halt=both"], tmp_path, out)
    assert set(report["results"]) == {"fixed@2", "adaptive@2", "fixed@6", "adaptive@6"}
    assert report["results"]["fixed@6"]["all"]["steps"] == 6 and report["results"]["fixed@2"]["all"]["steps"] == 2
    assert 1 <= report["results"]["adaptive@6"]["all"]["steps"] <= 6
    assert {(r["depth"], r["halt"]) for r in report["depths"] if r["set"] == "all"} == {
        (2, "fixed"), (2, "adaptive"), (6, "fixed"), (6, "adaptive")}
    assert (out / "depths.png").stat().st_size > 0 and "max steps" in result.stdout
