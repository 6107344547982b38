"""Score a checkpoint on a test split: `python evaluate.py checkpoint=<file or dir> [data_paths=...] [evaluators=...]
[halt=fixed|adaptive|both] [halt_threshold=0.5] [visualize=N]`; also under `torchrun --nproc-per-node N`.

Writes eval_results.json (per set and mode: accuracy, exact accuracy with its Wilson interval, mean steps, the
evaluators' results such as pass@K) into output_dir, and with visualize=N the reasoning of N puzzles as PNG/GIF.
Language-model runs (arch=trm_lm) also get the held-out mean token loss and perplexity, both token-weighted."""
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Literal, Optional

import hydra
import numpy as np
import pydantic
import torch
from omegaconf import DictConfig, OmegaConf

from evaluators.stats import add_wilson_intervals
from evaluation.halting import AdaptiveHalting
from models.loading import InputError, LoadedCheckpoint, find_weights, load_checkpoint, load_run_config, step_of, test_split_paths
from dataset.format import IGNORE_LABEL_ID, set_array_path
from dataset.kinds import guess_kind, run_hints
from dataset.validate import check_dataset
from models.lm import ARCH_NAME as LM_ARCH_NAME
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from training.builders import create_evaluators, fit_evaluators
from training.config import ConfigError, EvaluatorConfig, format_validation_error
from utils.device import (compile_failures_stop_the_run, describe_precision, describe_threads, maybe_compile,
                             set_intra_op_threads, setup_device)
from utils.distributed import DistInfo, init_distributed, shutdown_distributed
from training.loop import evaluate
from utils.errors import user_errors
from utils.hydra_cli import check_command_line

MODES = {"fixed": ["fixed"], "adaptive": ["adaptive"], "both": ["fixed", "adaptive"]}


class EvaluateConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    checkpoint: str
    arch: Optional[Dict[str, Any]] = None
    data_paths: Optional[List[str]] = None
    evaluators: Optional[List[EvaluatorConfig]] = None
    global_batch_size: Optional[pydantic.PositiveInt] = None
    halt: Literal["fixed", "adaptive", "both"] = "fixed"
    halt_threshold: pydantic.confloat(gt=0.0, lt=1.0) = 0.5
    visualize: pydantic.NonNegativeInt = 0
    output_dir: Optional[str] = None
    max_batches: Optional[pydantic.PositiveInt] = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: Optional[bool] = None
    forward_dtype: Optional[Literal["bfloat16", "float32", "float16"]] = None


def parse_config(cfg: DictConfig) -> EvaluateConfig:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint is missing: python evaluate.py checkpoint=<weights file or run directory>")
    try:
        return EvaluateConfig.model_validate(OmegaConf.to_container(cfg, resolve=True))
    except pydantic.ValidationError as e:
        raise ConfigError(format_validation_error(e).replace("cfg_pretrain", "cfg_evaluate")) from None


class SizedLoader:
    """The test loader with a length, so the progress bar shows how far the evaluation is."""

    def __init__(self, dataset: PuzzleDataset, batches: int):
        self.dataset, self.batches = dataset, batches

    def __iter__(self):
        return iter(self.dataset)

    def __len__(self):
        return self.batches


def count_test_batches(data_paths: List[str], sets: List[str], global_batch_size: int) -> int:
    total = 0
    for path in data_paths:
        for set_name in sets:
            rows = np.load(set_array_path(os.path.join(path, "test"), set_name, "inputs"), mmap_mode="r").shape[0]
            total += math.ceil(rows / global_batch_size)
    return total


def make_loader(data_paths: List[str], global_batch_size: int, dist_info: DistInfo) -> PuzzleDataset:
    for path in data_paths:
        if not os.path.isfile(os.path.join(path, "test", "dataset.json")):
            raise InputError(f"dataset '{path}' has no test split (test/dataset.json): build it or fix data_paths")
    try:
        return PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=data_paths, global_batch_size=global_batch_size,
                                                 test_set_mode=True, epochs_per_iter=1, rank=dist_info.rank,
                                                 num_replicas=dist_info.world_size), split="test")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_evaluators(configs: List[EvaluatorConfig], metadata, data_paths: List[str]) -> List[Any]:
    return create_evaluators(SimpleNamespace(evaluators=configs), metadata, data_paths)


# Options that change the results: a run with other values writes beside the default one, not over it.
RESULT_OPTIONS = ("data_paths", "evaluators", "global_batch_size", "halt", "halt_threshold", "max_batches", "forward_dtype")


def option_text(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(option_text(v) for v in value)
    if isinstance(value, EvaluatorConfig):
        return value.name.split("@")[-1]
    return os.path.basename(os.path.normpath(value)) if isinstance(value, str) and os.sep in value else str(value)


def results_dir_name(options: EvaluateConfig, step: int) -> str:
    """`eval_step_<N>`, plus `_<key>=<value>` for every result option given, e.g. eval_step_80_halt=both."""
    defaults = EvaluateConfig(checkpoint=options.checkpoint)
    parts = [f"{key}={option_text(getattr(options, key))}" for key in RESULT_OPTIONS
             if getattr(options, key) != getattr(defaults, key)]
    return "_".join([f"eval_step_{step}", *parts]).replace(" ", "")


def with_intervals(results: Dict[str, Any], evaluators: List[Any]) -> Dict[str, Any]:
    """Wilson 95% intervals beside exact accuracy (n = the set's rows) and ARC pass@K (n = test puzzles)."""
    out = {}
    for key, value in results.items():
        out[key] = add_wilson_intervals(value, value["count"], keys=["exact_accuracy"]) if isinstance(value, dict) else value
    arc_puzzles = sum(len(e.test_puzzles) for e in evaluators if hasattr(e, "test_puzzles"))
    pass_keys = [k for k in out if k.startswith("ARC/pass@")]
    if arc_puzzles and pass_keys:
        out.update(add_wilson_intervals({k: out[k] for k in pass_keys}, arc_puzzles))
    return out


def format_lm_results(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """Language-model sets: held-out mean token loss and perplexity (token-weighted)."""
    lines = [f"{'set':<12} {'mean token loss':>15} {'perplexity':>12} {'token acc':>9} {'tokens':>10}"]
    for per_mode in results.values():
        for name, value in per_mode.items():
            if isinstance(value, dict) and "perplexity" in value:
                lines.append(f"{name:<12} {value['token_loss']:>15.4f} {value['perplexity']:>12.2f} {value['accuracy']:>9.4f} "
                             f"{int(value['tokens']):>10}")
    return lines if len(lines) > 1 else []


def format_results(results: Dict[str, Dict[str, Any]]) -> str:
    lm_lines = format_lm_results(results)
    if lm_lines:
        return "\n".join(lm_lines)
    lines = [f"{'set':<12} {'halt':<9} {'exact accuracy [95% CI]':<27} {'token acc':>9} {'mean steps':>10} {'puzzles':>8}"]
    for mode, per_mode in results.items():
        for name, value in per_mode.items():
            if isinstance(value, dict):
                exact = f"{value['exact_accuracy']:.4f} [{value['exact_accuracy_ci_low']:.4f}, {value['exact_accuracy_ci_high']:.4f}]"
                lines.append(f"{name:<12} {mode:<9} {exact:<27} {value['accuracy']:>9.4f} {value['steps']:>10.2f} {int(value['count']):>8}")
    for mode, per_mode in results.items():
        for name, value in per_mode.items():
            if not isinstance(value, dict) and not name.endswith(("_ci_low", "_ci_high")) and not name.startswith("_"):
                ci = f" [{per_mode[name + '_ci_low']:.4f}, {per_mode[name + '_ci_high']:.4f}]" if name + "_ci_low" in per_mode else ""
                lines.append(f"{name} ({mode}): {int(value) if name.endswith('count') else f'{value:.4f}'}{ci}")
    return "\n".join(lines)


def first_test_rows(dataset: PuzzleDataset, n: int) -> Dict[str, torch.Tensor]:
    """The first n labelled rows of the test split (rank 0's slice)."""
    parts, have = [], 0
    for _, batch, _ in dataset:
        keep = (batch["labels"] != IGNORE_LABEL_ID).any(-1)
        parts.append({k: v[keep] for k, v in batch.items()})
        have += int(keep.sum())
        if have >= n:
            break
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


def write_visuals(loaded: LoadedCheckpoint, dataset: PuzzleDataset, kind: Optional[str], n: int, threshold: Optional[float],
                  device: torch.device, output_dir: Path) -> List[Path]:
    """PNG (all steps side by side) and GIF (one frame per step) per puzzle, and the terminal view of the answers."""
    from visualize.images import save_steps_gif, save_steps_png
    from visualize.terminal import render_puzzle_answer
    if kind is None:
        print("visualize: cannot tell whether the dataset holds sudoku, maze or arc puzzles; skipped")
        return []
    rows = first_test_rows(dataset, n)
    runner = AdaptiveHalting(threshold, record_steps=True)
    written = []
    with torch.inference_mode():
        chunks = list(runner(loaded.head, [("all", rows, n)], (), device))
    for _, chunk, _, outputs in chunks:
        order = sorted(range(len(outputs["row_index"])), key=lambda j: int(outputs["row_index"][j]))
        for j in order:
            index, steps = int(outputs["row_index"][j]), int(outputs["steps"][j])
            puzzle = chunk["inputs"][j].cpu().numpy()
            label = chunk["labels"][j].cpu().numpy()
            label = np.where(label == IGNORE_LABEL_ID, 0, label)  # ignored cells are pad, token 0
            step_preds = list(outputs["step_preds"][j, :steps].numpy())
            stem = output_dir / "reasoning" / f"puzzle_{index:03d}"
            written += [save_steps_png(stem.with_suffix(".png"), puzzle, step_preds, kind, label),
                        save_steps_gif(stem.with_suffix(".gif"), puzzle, step_preds, kind, label)]
            confidence = float(torch.sigmoid(outputs["q_halt_logits"][j].float()))
            print(f"\npuzzle {index}: {steps} steps, halting confidence {confidence:.3f}, "
                  f"{'solved' if (step_preds[-1] == label).all() else 'not solved'}")
            print(render_puzzle_answer(puzzle, step_preds[-1], kind, label=label, step=steps))
    return written


@compile_failures_stop_the_run()
def run(options: EvaluateConfig, dist_info: DistInfo) -> Optional[Dict[str, Any]]:
    device = setup_device(options.device)
    weights = find_weights(options.checkpoint)
    run_config = load_run_config(weights) or {}
    arch = None
    if not run_config:
        if options.arch is None:
            raise InputError(f"no all_config.yaml beside '{weights}': give the architecture (arch=trm arch.hidden_size=...) "
                             f"and data_paths=[...]")
        arch = options.arch
    elif options.arch is not None and dist_info.is_main:
        print(f"note: using the arch saved in {weights.parent / 'all_config.yaml'}; arch=... is for bare weights files")
    if (arch or run_config.get("arch") or {}).get("name") == LM_ARCH_NAME and (options.halt != "fixed" or options.visualize):
        raise ConfigError("halt=adaptive/both and visualize are for puzzle models with a Q-head: evaluate a trm_lm run "
                          "with the defaults (it reports held-out perplexity)")
    data_paths = options.data_paths or test_split_paths(run_config)
    if not data_paths:
        raise InputError("no dataset: give data_paths=[<dataset directory>]")
    global_batch_size = options.global_batch_size or run_config.get("global_batch_size")
    if not global_batch_size:
        raise InputError("no batch size: give global_batch_size=...")
    for path in data_paths:  # before any heavy work, as dataset.validate checks it
        check_dataset(path, ("test",), identifiers_required=False)
    dataset = make_loader(data_paths, global_batch_size, dist_info)
    metadata = dataset.metadata
    evaluator_configs = options.evaluators if options.evaluators is not None else fit_evaluators(
        [EvaluatorConfig.model_validate(e) for e in run_config.get("evaluators") or []], metadata, data_paths, chosen=False)
    loaded = load_checkpoint(weights, device, metadata=metadata, arch=arch, batch_size=global_batch_size // dist_info.world_size,
                             data_name=",".join(data_paths), forward_dtype=options.forward_dtype)
    make_evaluators(evaluator_configs, metadata, data_paths)  # bad evaluator options fail before any model work
    model = maybe_compile(loaded.head, options.compile, device)  # by default on CUDA, as training
    step = step_of(weights) or 0
    output_dir = Path(options.output_dir or weights.parent / results_dir_name(options, step))
    loader = SizedLoader(dataset, count_test_batches(data_paths, metadata.sets, global_batch_size))
    if dist_info.is_main:
        print(f"Evaluating {weights} ({loaded.arch['name'].split('@')[-1]}, "
              f"dtype {describe_precision(loaded.forward_dtype, device)}, device {device}, {describe_threads()}"
              f"{', compiled' if model is not loaded.head else ''}) "
              f"on {', '.join(data_paths)}: {len(loader)} batches of {global_batch_size}, halt={options.halt}")

    results: Dict[str, Dict[str, Any]] = {}
    calls: Dict[str, int] = {}
    for mode in MODES[options.halt]:
        evaluators = make_evaluators(evaluator_configs, metadata, data_paths)  # fresh: ARC votes must not carry over
        runner = AdaptiveHalting(options.halt_threshold) if mode == "adaptive" else None
        metrics = evaluate(model, loader, metadata, evaluators, dist_info, device, save_dir=str(output_dir / mode),
                           step=step, max_batches=options.max_batches, progress=True, batch_runner=runner)
        if dist_info.is_main:
            results[mode] = with_intervals(metrics, evaluators)
            if runner is not None:
                calls[mode] = runner.model_calls

    if not dist_info.is_main:
        return None
    report = {"checkpoint": str(weights), "step": step, "data_paths": data_paths, "global_batch_size": global_batch_size,
              "halt_threshold": options.halt_threshold, "halt_max_steps": loaded.arch.get("halt_max_steps"),
              "results": results}
    if calls:
        report["adaptive_model_calls_rank0"] = calls["adaptive"]
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "eval_results.json", "w") as f:
        json.dump(report, f, indent=2)
    print(format_results(results))
    print(f"Results written to {output_dir / 'eval_results.json'}")

    if options.visualize:
        kind = guess_kind(metadata, run_hints(run_config, data_paths))
        threshold = options.halt_threshold if options.halt != "fixed" else None
        single = make_loader(data_paths, global_batch_size, DistInfo())
        written = write_visuals(loaded, single, kind, options.visualize, threshold, device, output_dir)
        if written:
            print(f"Reasoning pictures: {len(written)} files in {output_dir / 'reasoning'}")
    return report


def launch(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    options = parse_config(cfg)
    set_intra_op_threads()
    dist_info = init_distributed(options.device)
    try:
        return run(options, dist_info)
    finally:
        shutdown_distributed()


@hydra.main(config_path="config", config_name="cfg_evaluate", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    launch(cfg)


if __name__ == "__main__":
    check_command_line("cfg_evaluate")
    main()
