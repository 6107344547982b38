"""The recursion-versus-depth study (bench.replicate): its arithmetic, the training-time budget it relies on, and a
miniature grid run end to end."""
import csv
import json
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from bench.replicate.study import StudyConfig, compose_study, multirun_command, run_study
from bench.replicate.table import (ModelSummary, RunResult, csv_table, effective_depth, markdown_table, mean_curve,
                                   pooled_accuracy, summarise)
from tests.helpers import ENV, ROOT, build_sudoku4, read_metrics
from training.budget import TrainingClock
from training.config import validate_config
from utils.distributed import DistInfo
from utils.errors import UserError


# ------------------------------------------------------------------ arithmetic
def test_effective_depth_at_the_papers_sizes():
    assert effective_depth({"name": "recursive_reasoning.trm@X", "H_cycles": 3, "L_cycles": 6, "L_layers": 2}) == 42
    assert effective_depth({"name": "recursive_reasoning.trm@X", "H_cycles": 1, "L_cycles": 1, "L_layers": 2}) == 4
    assert effective_depth({"name": "recursive_reasoning.hrm@X", "H_cycles": 2, "L_cycles": 2,
                            "H_layers": 4, "L_layers": 4}) == 24
    assert effective_depth({"name": "recursive_reasoning.transformers_baseline@X", "H_cycles": 1, "H_layers": 8}) == 8
    assert effective_depth({"name": "recursive_reasoning.urm@URM_ACTV1", "H_cycles": 2, "L_cycles": 6,
                            "num_layers": 4}) == 48
    assert effective_depth({"name": "my_model@Mine", "H_cycles": 1}) is None


def test_pooled_accuracy_is_the_wilson_interval_of_all_seeds_puzzles():
    # 200 + 100 + 300 of 3 x 400 = 600 / 1200; Wilson: centre 0.5, half-width 1.96/(1+3.8416/1200)*sqrt(0.25/1200+3.8416/5.76e6)
    rate, low, high = pooled_accuracy([0.5, 0.25, 0.75], [400, 400, 400])
    assert rate == 0.5
    assert low == pytest.approx(0.471755, abs=1e-5) and high == pytest.approx(0.528245, abs=1e-5)
    rate, low, high = pooled_accuracy([0.0], [10])   # nothing solved: the upper end still says up to 27.8%
    assert (rate, low) == (0.0, 0.0) and high == pytest.approx(0.277533, abs=1e-5)


def test_mean_curve_averages_point_by_point_up_to_the_shortest_seed():
    assert mean_curve([[(10, 0.0), (20, 0.5), (30, 1.0)], [(12, 0.2), (22, 0.3)]]) == [(11, 0.1), (21, 0.4)]
    assert mean_curve([]) == []


def _run(model, seed, acc, **kw):
    return RunResult(task="sudoku6", model=model, seed=seed, params=1234, effective_depth=30, steps=100 + seed,
                     train_seconds=60.0, exact_accuracy=acc, count=400, cell_accuracy=0.9, **kw)


def test_summary_tables_give_one_row_per_model_with_the_pooled_interval():
    rows = summarise([_run("trm", 0, 0.5), _run("trm", 1, 0.25), _run("trm", 2, 0.75), _run("hrm", 0, 0.0)])
    assert [(r.model, r.seeds) for r in rows] == [("trm", [0, 1, 2]), ("hrm", [0])]
    assert rows[0].steps_mean == 101 and rows[0].puzzles == 1200
    md = markdown_table(rows).splitlines()
    assert md[2] == "| sudoku6 | trm | 1,234 | 30 | 50.0% [47.2, 52.8] | 50.0 / 25.0 / 75.0 | 90.0% | 101 | 60.0 |"
    parsed = list(csv.DictReader(csv_table(rows).splitlines()))
    assert parsed[0]["seed_accuracies"] == "0.5000;0.2500;0.7500" and parsed[1]["exact_accuracy"] == "0.0000"


# ------------------------------------------------------------------ time budget
class FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_clock_counts_only_training_time_and_calls_evaluations_at_multiples():
    now = FakeTime()
    clock = TrainingClock(10.0, 4.0, DistInfo(), now=now)
    clock.resume()
    now.t += 3
    assert not clock.check()
    now.t += 1.5                       # 4.5 s of training: the first evaluation
    assert clock.check() and not clock.check()
    clock.pause()
    now.t += 100                       # the evaluation itself does not count
    clock.resume()
    assert clock.elapsed == pytest.approx(4.5)
    now.t += 4                         # 8.5 s
    assert clock.check() and not clock.out_of_time
    now.t += 2                         # 10.5 s: spent, and no evaluation is called for (the run's end evaluates)
    assert not clock.check() and clock.out_of_time


def test_paused_excludes_its_time_and_restores_the_running_state():
    now = FakeTime()
    clock = TrainingClock(10.0, None, DistInfo(), now=now)
    clock.resume()
    now.t += 2
    with clock.paused():               # a checkpoint while training: not counted, then the clock runs again
        now.t += 50
    now.t += 1
    assert clock.elapsed == pytest.approx(3.0)
    clock.pause()
    with clock.paused():               # already paused (the end-of-pass evaluation): stays paused after
        now.t += 50
    now.t += 7
    assert clock.elapsed == pytest.approx(3.0)


def test_clock_without_budget_never_stops():
    now = FakeTime()
    clock = TrainingClock(None, None, DistInfo(), now=now)
    clock.resume()
    now.t += 1e9
    assert not clock.check() and not clock.out_of_time


def _config(**extra):
    return {"arch": {"name": "x@Y", "loss": {"name": "l@L"}}, "data_paths": ["d"], "global_batch_size": 8, "epochs": 2,
            "lr": 1e-4, "lr_min_ratio": 1.0, "lr_warmup_steps": 0, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1,
            "puzzle_emb_weight_decay": 0.1, "puzzle_emb_lr": 1e-2, **extra}


def test_budget_keys_are_validated():
    assert validate_config(_config(max_train_seconds=30, eval_every_seconds=10)).budget_clock == "wall"
    with pytest.raises(UserError, match="eval_every_seconds needs a time budget"):
        validate_config(_config(eval_every_seconds=10))
    with pytest.raises(UserError, match="max_train_seconds"):
        validate_config(_config(max_train_seconds=-1))
    with pytest.raises(UserError, match="budget_clock"):
        validate_config(_config(max_train_seconds=1, budget_clock="cpu"))


@pytest.mark.slow
def test_spent_budget_ends_the_run_like_its_last_pass(tmp_path):
    """Any budget is spent after one step: the run evaluates, keeps its weights and leaves nothing to resume."""
    data = build_sudoku4(tmp_path / "s4", n_train=40, n_test=8, num_aug=1)
    run = tmp_path / "run"
    common = ["arch.hidden_size=16", "arch.num_heads=2", "arch.halt_max_steps=2", "arch.puzzle_emb_ndim=0",
              "arch.forward_dtype=float32", "global_batch_size=8", "epochs=4", "eval_interval=2", "evaluators=[]",
              f"data_paths=[{data}]", f"+checkpoint_path={run}"]
    out = subprocess.run([sys.executable, "pretrain.py", *common, "max_train_seconds=1e-9"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Done: 1 steps" in out.stdout and "time budget of 1e-09 s reached" in out.stdout
    assert (run / "step_1").is_file() and (run / "state_1.pt").is_file()
    evals = [record for record in read_metrics(run) if "all/count" in record]
    assert [e["step"] for e in evals] == [1] and evals[0]["time/train_seconds"] > 0
    again = subprocess.run([sys.executable, "pretrain.py", f"resume={run}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "Done: 1 steps" in again.stdout, again.stderr[-2000:]


# ------------------------------------------------------------------ the study
def test_study_config_errors_name_the_choices():
    with pytest.raises(UserError, match=r"unknown model 'trn': choose from \['hrm', 'transformer', 'trm', 'trm_norec', 'urm'\]"):
        compose_study(["models=[trm,trn]"])
    with pytest.raises(UserError, match="seeds"):
        compose_study(["seeds=[]"])
    with pytest.raises(UserError, match="unknown config key 'budget'"):
        compose_study(["+budget=3"])


def test_multirun_command_sweeps_models_and_seeds_of_one_task():
    study = compose_study(["seeds=[0,1]", "models=[trm,hrm]", "data_dir=/data", "overrides=[\"global_batch_size=32\"]"])
    cmd = multirun_command(study, "maze7")
    assert cmd[2:6] == ["-m", "+replicate/task=maze7", "+replicate/model=trm,hrm", "seed=0,1"]
    assert "max_train_seconds=60.0" in cmd and "budget_clock=process" in cmd
    assert "data_paths=[/data/${project_name}]" in cmd and cmd[-1] == "global_batch_size=32"


def test_task_and_model_files_compose_into_the_advertised_runs():
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        norec = compose("cfg_pretrain", ["+replicate/task=maze7", "+replicate/model=trm_norec", "seed=2"])
        tf = compose("cfg_pretrain", ["+replicate/task=sudoku6", "+replicate/model=transformer"])
    assert norec.run_name == "trm_norec-seed2" and norec.wandb.group == "replicate-maze7-trm_norec"
    assert (norec.arch.H_cycles, norec.arch.L_cycles, norec.arch.mlp_t, norec.arch.hidden_size) == (1, 1, True, 64)
    assert norec.data_paths == ["data/replicate-maze7"] and norec.global_batch_size == 64
    assert tf.arch.name.startswith("recursive_reasoning.transformers_baseline") and tf.arch.H_layers == 4


def test_tracker_puts_the_run_in_its_wandb_group_and_says_where_an_offline_run_is(tmp_path, monkeypatch, capsys):
    import wandb
    from training.tracking import Tracker
    seen = {}
    files = tmp_path / "wandb" / "offline-run-x" / "files"
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or SimpleNamespace(id="x", dir=str(files), finish=lambda: None))
    config = validate_config(_config(wandb={"mode": "offline", "group": "replicate-sudoku6-trm"}, project_name="p",
                                     run_name="r"))
    Tracker(config, str(tmp_path))
    assert seen["group"] == "replicate-sudoku6-trm"
    assert f"upload it later with: wandb sync {shlex.quote(str(files.parent))}" in capsys.readouterr().out


@pytest.mark.slow
def test_miniature_grid_writes_the_table_and_plots(tmp_path):
    from PIL import Image
    data = tmp_path / "data"
    for module, args in (("dataset.build_sudoku_dataset", ["--size", "6", "--generate", "40", "--generate-test", "8",
                                                           "--num-aug", "1", "--workers", "1"]),
                         ("dataset.build_maze_dataset", ["--size", "7", "--generate", "40", "--generate-test", "8"])):
        name = "replicate-sudoku6" if "sudoku" in module else "replicate-maze7"
        subprocess.run([sys.executable, "-m", module, "--output-dir", str(data / name), *args], cwd=ROOT, env=ENV,
                       check=True, capture_output=True)
    study = StudyConfig(tasks=["sudoku6", "maze7"], models=["trm", "trm_norec", "transformer", "hrm"], seeds=[0],
                        max_train_seconds=0.3, eval_every_seconds=0.1, device="cpu", wandb_mode="disabled",
                        runs_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "out"), data_dir=str(data),
                        overrides=["arch.hidden_size=16", "arch.num_heads=2", "arch.halt_max_steps=3",
                                   "global_batch_size=8", "arch.forward_dtype=float32"])
    written = run_study(study, quiet=True)
    assert sorted(p.name for p in written) == ["accuracy_vs_supervision_steps.png", "accuracy_vs_time.png",
                                              "results.csv", "results.md", "runs.json"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [(r["task"], r["model"]) for r in rows] == [(t, m) for t in study.tasks for m in study.models]
    depth = {r["model"]: int(r["effective_depth"]) for r in rows}
    assert depth == {"trm": 30, "trm_norec": 4, "transformer": 4, "hrm": 12}
    assert all(int(r["puzzles"]) == 8 and float(r["steps_mean"]) >= 1 for r in rows)
    runs = json.load(open(tmp_path / "out" / "runs.json"))
    for run in runs:
        # the per-step pass at k = halt_max_steps is the run's own final evaluation
        assert len(run["step_curve"]) == 3 and run["step_curve"][-1] == pytest.approx(run["exact_accuracy"])
        assert run["step_cell_curve"][-1] == pytest.approx(run["cell_accuracy"])
        assert run["time_curve"][-1][0] == pytest.approx(run["train_seconds"]) and len(run["time_curve"]) >= 1
    for name in ("accuracy_vs_time.png", "accuracy_vs_supervision_steps.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.size[0] > image.size[1] > 100
