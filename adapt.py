"""Adapt a trained ARC checkpoint to new tasks (test-time training), then predict, vote and write `submission.json`:
`python adapt.py checkpoint=<run dir | step_N> challenges=<..._challenges.json> output_dir=<dir> [train=puzzle_emb|all]
[epochs=N] [max_train_seconds=S]`; also under `torchrun --nproc-per-node N`.

1. The new tasks' augmented dataset is built by the ARC builder (dataset/build_arc_dataset.py) with puzzle
   identifiers starting after the checkpoint's table, into <output_dir>/data.
2. The checkpoint's weights get a table grown by exactly those identifiers (its own rows bit for bit, the new rows
   its mean row, as the reference's fine-tuning starts), <output_dir>/init/step_0.
3. pretrain.py's run (build_run, train) trains from it on the new tasks' demonstration pairs: the puzzle embeddings
   only (train=puzzle_emb, the reference's freeze_weights) or every weight (train=all), for `epochs`, cut short by
   `max_train_seconds`; checkpoints and resume as in training (rerun the same command to continue).
4. evaluate.py's pass predicts every augmented test input with the final weights, the ARC evaluator votes, and
   <output_dir>/submission.json (two attempts per test output) and arc_report.json are written."""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import hydra
import pydantic
from omegaconf import DictConfig, OmegaConf

import evaluate
import pretrain
from dataset.build_arc_dataset import build as build_arc_dataset
from evaluators.arc import submission_problems
from models.checkpoint_io import (STATE_FILE, atomic_torch_save, files_by_step, grow_puzzle_embedding, puzzle_table_rows,
                                  read_weights_file, weights_path)
from models.loading import find_weights, load_run_config
from training.config import EvaluatorConfig, format_validation_error
from utils.distributed import DistInfo, in_process_group, on_main_rank
from utils.errors import UserError, user_errors
from utils.hydra_cli import check_command_line

SUBSET = "new"  # the builder reads <output_dir>/source/tasks_new_challenges.json (and tasks_new_solutions.json)
PREFIX = "tasks"


class AdaptConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    checkpoint: str
    challenges: str
    solutions: Optional[str] = None
    output_dir: str
    train: Literal["puzzle_emb", "all"] = "puzzle_emb"
    num_aug: pydantic.NonNegativeInt = 1000
    seed: int = 0
    epochs: pydantic.PositiveInt = 100
    max_train_seconds: Optional[pydantic.PositiveFloat] = None
    checkpoint_interval: Optional[pydantic.PositiveInt] = None
    global_batch_size: Optional[pydantic.PositiveInt] = None
    lr: Optional[pydantic.PositiveFloat] = None
    puzzle_emb_lr: Optional[pydantic.PositiveFloat] = None
    lr_warmup_steps: Optional[pydantic.NonNegativeInt] = None
    ema: bool = False
    report_images: Union[pydantic.NonNegativeInt, List[str]] = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: Optional[bool] = None
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "disabled"


def parse_config(cfg: DictConfig) -> AdaptConfig:
    for key in ("checkpoint", "challenges", "output_dir"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{key} is missing: python adapt.py checkpoint=<run dir> challenges=<..._challenges.json> "
                            f"output_dir=<dir>")
    try:
        return AdaptConfig.model_validate(OmegaConf.to_container(cfg, resolve=True))
    except pydantic.ValidationError as e:
        raise UserError(format_validation_error(e).replace("cfg_pretrain", "cfg_adapt")) from None


# ------------------------------------------------------------------ 1-2: the new tasks' data and the grown table
def copy_source(path: str, to: Path, what: str) -> None:
    """The tasks file, copied into the adaptation's directory; a rerun with other tasks there is refused."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' not found: give the Kaggle JSON file of the new tasks")
    if to.is_file():
        if to.read_bytes() != Path(path).read_bytes():
            raise UserError(f"{to.parent.parent} holds an adaptation to other tasks than '{path}': give another output_dir")
        return
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, to)


def prepare(options: AdaptConfig, weights: Path, out: Path) -> Dict[str, Any]:
    """Build the data and the initial weights (once; a rerun finds them). Rank 0 only."""
    state = read_weights_file(str(weights))
    old_rows = puzzle_table_rows(state)
    if old_rows is None and options.train == "puzzle_emb":
        raise UserError(f"{weights} has no puzzle embedding (arch.puzzle_emb_ndim=0): adapt it with train=all")
    copy_source(options.challenges, out / "source" / f"{PREFIX}_{SUBSET}_challenges.json", "challenges")
    if options.solutions:
        copy_source(options.solutions, out / "source" / f"{PREFIX}_{SUBSET}_solutions.json", "solutions")
    data = out / "data"
    first_id = old_rows or 1
    if not (data / "identifiers.json").is_file():
        build_arc_dataset(str(out / "source" / PREFIX), str(data), [SUBSET], SUBSET, seed=options.seed,
                          num_aug=options.num_aug, puzzle_identifiers_start=first_id, progress=True)
    names = json.loads((data / "identifiers.json").read_text())
    if len(names) <= first_id or any(n != "<blank>" for n in names[1:first_id]) or names[first_id] == "<blank>":
        raise UserError(f"{data} was built for a checkpoint with another puzzle table (its ids do not start at "
                        f"{first_id}): give another output_dir")
    init = Path(weights_path(str(out / "init"), 0))
    if old_rows is not None and not init.is_file():
        atomic_torch_save(grow_puzzle_embedding(state, len(names)), str(init))
        print(f"Puzzle embedding {old_rows} -> {len(names)} rows: {len(names) - old_rows} new identifiers "
              f"({len(json.loads((data / 'test_puzzles.json').read_text()))} tasks x their augmentations), "
              f"initialised with the mean row; rows 0-{old_rows - 1} unchanged")
    return {"rows": len(names), "old_rows": old_rows, "init": str(init) if old_rows is not None else str(weights)}


# ------------------------------------------------------------------ 3: training, through pretrain.py's run
def training_config(options: AdaptConfig, run_config: Dict[str, Any], out: Path, init: str) -> Dict[str, Any]:
    raw = dict(run_config)
    raw.update(data_paths=[str(out / "data")], data_paths_test=[], data_build=None, evaluators=[], resume=None,
               load_checkpoint=init, freeze_weights=options.train == "puzzle_emb", epochs=options.epochs,
               eval_interval=None, min_eval_interval=0, eval_every_seconds=None, eval_max_batches=None,
               eval_save_outputs=[], max_train_seconds=options.max_train_seconds, checkpoint_every_eval=True,
               checkpoint_interval=options.checkpoint_interval, ema=options.ema, seed=options.seed,
               device=options.device, compile=options.compile, checkpoint_path=str(out / "train"),
               project_name=f"{run_config.get('project_name') or 'ARC'}-adapt", run_name=out.name,
               wandb={**(run_config.get("wandb") or {}), "mode": options.wandb_mode})
    for key in ("global_batch_size", "lr", "puzzle_emb_lr", "lr_warmup_steps"):
        if getattr(options, key) is not None:
            raw[key] = getattr(options, key)
    if files_by_step(out / "train", STATE_FILE):  # an earlier invocation's run: continue it
        raw.update(resume=str(out / "train"), load_checkpoint=None)
    return raw


def adapt_training(raw: Dict[str, Any], dist_info: DistInfo) -> None:
    """pretrain.py's run on the new tasks, without its evaluations (the test inputs have no labels to score; the
    prediction pass follows). A resumed run keeps its saved settings; only the time budget may change."""
    overrides = [f"max_train_seconds={raw['max_train_seconds']}"] if raw["max_train_seconds"] else []
    pretrain.claim_and_train(raw, overrides, dist_info, evaluations=False)


# ------------------------------------------------------------------ 4: predict, vote, submit
def predict(options: AdaptConfig, out: Path, global_batch_size: int, dist_info: DistInfo) -> Optional[Dict[str, Any]]:
    arc = EvaluatorConfig(name="arc@ARC", labelled=bool(options.solutions), report_images=options.report_images)
    eval_options = evaluate.EvaluateConfig(checkpoint=str(out / "train"), data_paths=[str(out / "data")],
                                           evaluators=[arc], global_batch_size=global_batch_size,
                                           output_dir=str(out / "predict"), device=options.device,
                                           compile=options.compile)
    report = evaluate.run(eval_options, dist_info)
    if not dist_info.is_main:
        return None
    evaluator_dir = out / "predict" / "fixed" / f"evaluator_ARC_step_{report['step']}"
    for name in ("submission.json", "arc_report.json"):
        shutil.copyfile(evaluator_dir / name, out / name)
    submission = json.loads((out / "submission.json").read_text())
    challenges = json.loads((out / "source" / f"{PREFIX}_{SUBSET}_challenges.json").read_text())
    problems = submission_problems(submission, challenges)
    if problems:
        raise UserError(f"{out / 'submission.json'} does not follow the ARC Prize format: {problems[0]}")
    outputs = sum(len(v) for v in submission.values())
    if not options.solutions:
        print("(no solutions given: the accuracy columns above compare with placeholder outputs and mean nothing)")
    print(f"Submission written to {out / 'submission.json'}: {len(submission)} tasks, {outputs} test outputs, "
          f"2 attempts each; per-task report {out / 'arc_report.json'}")
    return report


def run(options: AdaptConfig, dist_info: DistInfo) -> Optional[Dict[str, Any]]:
    out = Path(options.output_dir)
    weights = find_weights(options.checkpoint)
    run_config = load_run_config(weights)
    if not run_config or "arch" not in run_config:
        raise UserError(f"no all_config.yaml beside '{weights}': adapt needs the run's config (written by pretrain.py)")
    prepared = on_main_rank(lambda: prepare(options, weights, out), dist_info)
    raw = training_config(options, run_config, out, prepared["init"])
    adapt_training(raw, dist_info)
    saved = load_run_config(find_weights(out / "train")) or raw
    return predict(options, out, saved["global_batch_size"], dist_info)


def launch(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    options = parse_config(cfg)
    return in_process_group(options.device, lambda dist_info: run(options, dist_info))


@hydra.main(config_path="config", config_name="cfg_adapt", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    launch(cfg)


if __name__ == "__main__":
    check_command_line("cfg_adapt")
    main()
