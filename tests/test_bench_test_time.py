"""bench.test_time: the depth and width study over trained runs. Its tables come from evaluate.py's own reports, so
the end-to-end test checks that the figures are carried over unchanged, and the unit test the table layout."""
import json
import subprocess
import sys

import pytest

from bench.test_time import markdown, parse_args
from tests.helpers import ENV, ROOT
from utils.errors import UserError


def _depth_row(depth, halt, rate, low, high, steps):
    return {"depth": depth, "halt": halt, "set": "all", "exact_accuracy": rate, "ci_low": low, "ci_high": high,
            "mean_steps": steps, "count": 1000}


def test_markdown_lays_out_depth_and_width_per_run():
    cell = {"exact_accuracy": 0.25, "exact_accuracy_ci_low": 0.2, "exact_accuracy_ci_high": 0.3, "count": 1000}
    collected = {"trm-seed0": {"step": 10, "trained_halt_max_steps": 16,
                               "depth": [_depth_row(8, "fixed", 0.1, 0.05, 0.15, 8.0),
                                         _depth_row(16, "fixed", 0.5, 0.45, 0.55, 16.0),
                                         _depth_row(8, "adaptive", 0.2, 0.1, 0.3, 3.25)],
                               "width": {"majority": {1: cell, 4: dict(cell, exact_accuracy=0.5)}}}}
    lines = markdown(collected).splitlines()
    assert "| run | trained with | halting | 8 steps | 16 steps |" in lines
    assert "| trm-seed0 | 16 steps | fixed | 10.0% [5.0, 15.0] | 50.0% [45.0, 55.0] |" in lines
    assert "| trm-seed0 | 16 steps | adaptive | 20.0% [10.0, 30.0] (3.2 steps) |  |" in lines
    assert "| trm-seed0 | majority | 25.0% [20.0, 30.0] | 50.0% [20.0, 30.0] |" in lines
    assert lines[-1] == "Held-out puzzles per cell: 1000."


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        parse_args([str(tmp_path / "nothing")])
    (tmp_path / "a" / "run").mkdir(parents=True)
    (tmp_path / "b" / "run").mkdir(parents=True)
    with pytest.raises(UserError, match="share a directory name"):
        parse_args([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")])
    with pytest.raises(UserError, match="--votes at least 2"):
        parse_args([str(tmp_path / "a" / "run"), "--votes", "1"])


def test_study_carries_evaluate_reports_into_its_tables_and_plot(tiny, tmp_path):
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, "-m", "bench.test_time", str(tiny["run"]), "--depths", "1", "3",
                           "--votes", "4", "--latent-noise", "0.5", "--jobs", "2", "--output-dir", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    name = tiny["run"].name
    depth = json.loads((out / "runs" / name / "depth" / "eval_results.json").read_text())
    width = json.loads((out / "runs" / name / "width" / "eval_results.json").read_text())
    collected = json.loads((out / "results.json").read_text())[name]
    assert [(r["depth"], r["halt"]) for r in collected["depth"]] == [(1, "fixed"), (1, "adaptive"), (3, "fixed"), (3, "adaptive")]
    assert collected["depth"] == [r for r in depth["depths"] if r["set"] == "all"]
    assert collected["width"] == width["width"]["results"]   # every rule, N = 1, 2, 4
    assert sorted(collected["width"]) == ["confidence", "majority", "verifier"] and collected["latent_noise"] == 0.5
    fixed_at_3 = next(r for r in collected["depth"] if (r["depth"], r["halt"]) == (3, "fixed"))
    assert f"{100 * fixed_at_3['exact_accuracy']:.1f}%" in (out / "results.md").read_text()
    assert (out / "test_time.png").stat().st_size > 0
    assert "Results written to" in (out / "runs" / name / "width_noise.log").read_text()   # each pass's own output
    # --report-only rewrites the same tables from the evaluations on disk, without evaluating
    before = (out / "results.md").read_text()
    (out / "results.md").unlink()
    again = subprocess.run([sys.executable, "-m", "bench.test_time", str(tiny["run"]), "--report-only",
                            "--output-dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.md").read_text() == before and "evaluations" not in again.stderr
