"""Run the study's grid (one Hydra multirun of pretrain.py per task), score every final checkpoint per supervision
step, and write the tables and plots."""
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import pydantic
import torch
from tqdm import tqdm

from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from bench.replicate.table import RunResult, csv_table, effective_depth, markdown_table, summarise
from training.tracking import METRICS_FILE
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config" / "replicate"


class StudyConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    tasks: List[str]
    models: List[str]
    seeds: List[int]
    max_train_seconds: pydantic.PositiveFloat
    eval_every_seconds: Optional[pydantic.PositiveFloat] = None
    budget_clock: Literal["wall", "process"] = "process"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    runs_dir: str
    output_dir: str
    data_dir: Optional[str] = None
    overrides: List[str] = []

    @pydantic.model_validator(mode="after")
    def _check(self):
        for group, names in (("task", self.tasks), ("model", self.models)):
            if not names:
                raise ValueError(f"{group}s is empty: name at least one file of config/replicate/{group}/")
            missing = [n for n in names if not (CONFIG_DIR / group / f"{n}.yaml").is_file()]
            if missing:
                known = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
                raise ValueError(f"unknown {group} {missing[0]!r}: choose from {known} (config/replicate/{group}/)")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one, e.g. seeds=[0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed: each run needs its own")
        return self


def validate_study(raw: Dict[str, Any]) -> StudyConfig:
    from training.config import format_validation_error
    try:
        return StudyConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise UserError(format_validation_error(e).replace("config/cfg_pretrain.yaml", "config/replicate/study.yaml")) from None


def run_dir(study: StudyConfig, task: str, model: str, seed: int) -> Path:
    return Path(study.runs_dir) / task / f"{model}-seed{seed}"


def multirun_command(study: StudyConfig, task: str) -> List[str]:
    """`python pretrain.py -m` over models x seeds of one task; every run in <runs_dir>/<task>/<run_name>."""
    runs = Path(study.runs_dir) / task
    return [sys.executable, str(ROOT / "pretrain.py"), "-m", f"+replicate/task={task}",
            f"+replicate/model={','.join(study.models)}", f"seed={','.join(map(str, study.seeds))}",
            f"max_train_seconds={study.max_train_seconds}",
            f"eval_every_seconds={'null' if study.eval_every_seconds is None else study.eval_every_seconds}",
            f"budget_clock={study.budget_clock}", f"device={study.device}", f"wandb.mode={study.wandb_mode}",
            f"+checkpoint_path={runs.resolve()}/${{run_name}}", f"hydra.sweep.dir={(runs / ('multirun-' + '-'.join(study.models))).resolve()}",
            *([f"data_paths=[{Path(study.data_dir).resolve()}/${{project_name}}]"] if study.data_dir else []),
            *study.overrides]


def train_grid(study: StudyConfig, quiet: bool = False) -> None:
    for task in study.tasks:
        for model in study.models:
            for seed in study.seeds:
                # a run directory left by an earlier study would get these metrics appended to its own
                shutil.rmtree(run_dir(study, task, model, seed), ignore_errors=True)
        cmd = multirun_command(study, task)
        print(f"[{task}] {len(study.models) * len(study.seeds)} runs of {study.max_train_seconds:g} s: {' '.join(cmd[1:])}")
        done = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise UserError(f"the {task} multirun failed (exit {done.returncode}){': ' + tail[0] if tail else ''}; "
                            f"its runs are in {Path(study.runs_dir) / task}")


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect_run(study: StudyConfig, task: str, model: str, seed: int, device: torch.device) -> RunResult:
    from models.loading import find_weights, load_checkpoint, load_run_config
    from bench.replicate.curve import accuracy_per_step

    directory = run_dir(study, task, model, seed)
    if not (directory / METRICS_FILE).is_file():
        raise UserError(f"run {directory} has no metrics.jsonl: it did not train (see the multirun's output)")
    lines = read_metrics(directory / METRICS_FILE)
    evals = [line for line in lines if line.get("all/count") is not None]
    if not evals:
        raise UserError(f"run {directory} logged no held-out evaluation: does its dataset have a test split?")
    weights = find_weights(directory)
    config = load_run_config(weights)
    arch = config["arch"]
    loaded = load_checkpoint(weights, device, batch_size=config["global_batch_size"])
    loader = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=config["data_paths"], test_set_mode=True,
                                               global_batch_size=config["global_batch_size"], epochs_per_iter=1,
                                               rank=0, num_replicas=1), split="test")
    final = evals[-1]
    step_exact, step_cell = accuracy_per_step(loaded.head, loader, int(arch["halt_max_steps"]), device)
    return RunResult(
        task=task, model=model, seed=seed,
        params=int(next(line["num_params"] for line in lines if "num_params" in line)),
        effective_depth=effective_depth(arch), steps=int(final["step"]),
        train_seconds=float(final["time/train_seconds"]), exact_accuracy=float(final["all/exact_accuracy"]),
        count=int(final["all/count"]), cell_accuracy=float(final["all/accuracy"]),
        time_curve=[(float(e["time/train_seconds"]), float(e["all/exact_accuracy"]), float(e["all/accuracy"]))
                    for e in evals],
        step_curve=step_exact, step_cell_curve=step_cell)


def write_results(runs: List[RunResult], output_dir: Path, study: StudyConfig) -> List[Path]:
    from bench.replicate.plots import plot_accuracy_vs_steps, plot_accuracy_vs_time

    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs)
    budget = (f"Budget: {study.max_train_seconds:g} s of training per run ({study.budget_clock} clock), "
              f"seeds {study.seeds}, device {study.device}.\n\n")
    (output_dir / "results.md").write_text(budget + markdown_table(rows))
    (output_dir / "results.csv").write_text(csv_table(rows))
    with open(output_dir / "runs.json", "w") as f:
        json.dump([asdict(r) for r in runs], f, indent=1)
    return [output_dir / "results.md", output_dir / "results.csv", output_dir / "runs.json",
            plot_accuracy_vs_time(runs, output_dir / "accuracy_vs_time.png"),
            plot_accuracy_vs_steps(runs, output_dir / "accuracy_vs_supervision_steps.png")]


def run_study(study: StudyConfig, train: bool = True, quiet: bool = False) -> List[Path]:
    """Train the grid (unless `train` is False: re-score existing runs), then write the results; their paths."""
    from utils.device import pick_device

    if train:
        train_grid(study, quiet=quiet)
    device = pick_device(study.device)
    grid = [(t, m, s) for t in study.tasks for m in study.models for s in study.seeds]
    runs = [collect_run(study, t, m, s, device) for t, m, s in tqdm(grid, desc="score per supervision step", disable=quiet)]
    written = write_results(runs, Path(study.output_dir), study)
    if not quiet:
        print((Path(study.output_dir) / "results.md").read_text())
        print("Wrote", ", ".join(map(str, written)))
    return written


def compose_study(overrides: List[str]) -> StudyConfig:
    """config/replicate/study.yaml with command-line `key=value` overrides (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="study", overrides=overrides)
    except HydraException as e:
        raise UserError(f"{str(e).splitlines()[0]} (keys are those of config/replicate/study.yaml)") from None
    return validate_study(OmegaConf.to_container(cfg, resolve=True))
