"""Score a checkpoint on a test split: `python evaluate.py checkpoint=<file or dir> [data_paths=...] [evaluators=...]
[halt=fixed|adaptive|both] [halt_threshold=0.5] [halt_max_steps=N | depths=[8,16,...]] [votes=N vote=majority|confidence|verifier] [visualize=N]`; also under `torchrun --nproc-per-node N`.
`checkpoint=[a,b,...]` is an explicit ensemble: each member is scored on its own, then the ARC votes of all members
are pooled and scored (each member's score printed beside the ensemble's).

Writes eval_results.json (per set and mode: accuracy, exact accuracy with its Wilson interval, mean steps, the
evaluators' results such as pass@K) into output_dir, and with visualize=N the reasoning of N puzzles as PNG/GIF.
Language-model runs (arch=trm_lm) also get the held-out mean token loss and perplexity, both token-weighted."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import hydra
import pydantic
from omegaconf import DictConfig, OmegaConf

from evaluation.depth import depth_rows, format_depth_table, plot_depths, set_halt_max_steps
from evaluation.halting import AdaptiveHalting
from evaluation.width import format_width_table, width_report
from evaluation.loop import SizedLoader, count_test_batches, evaluate
from evaluation.pictures import first_test_rows, save_reasoning
from evaluators.stats import add_wilson_intervals
from models.checkpoint_io import step_of
from models.loading import find_weights, load_checkpoint, load_run_config, test_split_paths
from dataset.kinds import guess_kind, run_hints
from dataset.validate import check_dataset
from models.lm import ARCH_NAME as LM_ARCH_NAME
from training.builders import create_dataloader, create_evaluators, fit_evaluators
from training.config import EvaluatorConfig, format_validation_error
from utils.device import (compile_failures_stop_the_run, describe_precision, describe_threads, maybe_compile,
                          setup_device)
from utils.distributed import DistInfo, in_process_group
from utils.errors import UserError, user_errors
from utils.hydra_cli import check_command_line

MODES = {"fixed": ["fixed"], "adaptive": ["adaptive"], "both": ["fixed", "adaptive"]}


class EvaluateConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    checkpoint: Union[str, List[str]]   # a list: an explicit ensemble of these checkpoints
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
    halt_max_steps: Optional[pydantic.PositiveInt] = None   # test-time depth: this step limit instead of the run's
    depths: Optional[List[pydantic.PositiveInt]] = None     # one evaluation per step limit: a table and depths.png
    votes: pydantic.PositiveInt = 1                          # test-time width: symmetric variants per puzzle, voted
    vote: Literal["majority", "confidence", "verifier"] = "majority"
    latent_noise: pydantic.NonNegativeFloat = 0.0            # votes: variants after the first start from a noisy latent


def parse_config(cfg: DictConfig) -> EvaluateConfig:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError("checkpoint is missing: python evaluate.py checkpoint=<weights file or run directory>")
    try:
        return EvaluateConfig.model_validate(OmegaConf.to_container(cfg, resolve=True))
    except pydantic.ValidationError as e:
        raise UserError(format_validation_error(e).replace("cfg_pretrain", "cfg_evaluate")) from None


# Options that change the results: a run with other values writes beside the default one, not over it.
RESULT_OPTIONS = ("data_paths", "evaluators", "global_batch_size", "halt", "halt_threshold", "max_batches", "forward_dtype",
                  "halt_max_steps", "depths", "votes", "vote", "latent_noise")


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
    """Wilson 95% intervals beside exact accuracy (n = the set's rows), the ARC task means (n = tasks) and the ARC
    per-test-output scores (n = test outputs)."""
    out = {}
    for key, value in results.items():
        out[key] = add_wilson_intervals(value, value["count"], keys=["exact_accuracy"]) if isinstance(value, dict) else value
    for prefixes, count_key in ((("ARC/pass@", "ARC/task_mean_pass@"), "ARC/task_count"),
                                (("ARC/test_output_pass@",), "ARC/test_output_count")):
        keys = [k for k in out if k.startswith(prefixes) and not k.endswith(("_ci_low", "_ci_high"))]
        if keys and out.get(count_key):
            out.update(add_wilson_intervals({k: out[k] for k in keys}, out[count_key]))
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
            if name.startswith("ARC/pass@"):
                continue  # the reference's name for ARC/task_mean_pass@K (both in eval_results.json)
            if not isinstance(value, dict) and not name.endswith(("_ci_low", "_ci_high")) and not name.startswith("_"):
                ci = f" [{per_mode[name + '_ci_low']:.4f}, {per_mode[name + '_ci_high']:.4f}]" if name + "_ci_low" in per_mode else ""
                lines.append(f"{name} ({mode}): {int(value) if name.endswith('count') else f'{value:.4f}'}{ci}")
    return "\n".join(lines)


@compile_failures_stop_the_run()
def checkpoint_and_config(options: EvaluateConfig, dist_info: DistInfo, in_ensemble: bool):
    """The weights file, its run's config and the arch to build (None: the run's own), after the checks that need
    no data."""
    weights = find_weights(options.checkpoint)
    run_config = load_run_config(weights) or {}
    arch = None
    if not run_config:
        if options.arch is None:
            raise UserError(f"no all_config.yaml beside '{weights}': give the architecture (arch=trm arch.hidden_size=...) "
                            f"and data_paths=[...]")
        arch = options.arch
    elif options.arch is not None and dist_info.is_main:
        print(f"note: using the arch saved in {weights.parent / 'all_config.yaml'}; arch=... is for bare weights files")
    if (options.depths or options.votes > 1) and in_ensemble:
        raise UserError("depths=[...] and votes=N evaluate one checkpoint: give checkpoint=<one run> (not an ensemble)")
    if options.votes > 1 and dist_info.world_size > 1:
        raise UserError("votes=N runs in one process: evaluate without torchrun")
    if (arch or run_config.get("arch") or {}).get("name") == LM_ARCH_NAME and (
            options.halt != "fixed" or options.visualize or options.halt_max_steps or options.depths or options.votes > 1):
        raise UserError("halt=adaptive/both, halt_max_steps, depths, votes and visualize are for puzzle models with a "
                        "Q-head: evaluate a trm_lm run with the defaults (it reports held-out perplexity)")
    return weights, run_config, arch


def run(options: EvaluateConfig, dist_info: DistInfo, pool: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """Evaluate one checkpoint. `pool` (an ensemble member): receives, per halting mode, the evaluators after the
    pass (this rank's votes), and under "context" what it takes to build the ensemble's own."""
    if isinstance(options.checkpoint, list):
        if len(options.checkpoint) != 1:
            return run_ensemble(options, dist_info)
        options = options.model_copy(update={"checkpoint": options.checkpoint[0]})
    device = setup_device(options.device)
    weights, run_config, arch = checkpoint_and_config(options, dist_info, in_ensemble=pool is not None)
    data_paths = options.data_paths or test_split_paths(run_config)
    if not data_paths:
        raise UserError("no dataset: give data_paths=[<dataset directory>]")
    global_batch_size = options.global_batch_size or run_config.get("global_batch_size")
    if not global_batch_size:
        raise UserError("no batch size: give global_batch_size=...")
    for path in data_paths:  # before any heavy work, as dataset.validate checks it
        check_dataset(path, ("test",), identifiers_required=False)
    dataset, metadata = create_dataloader(data_paths, "test", global_batch_size, dist_info)
    evaluator_configs = options.evaluators if options.evaluators is not None else fit_evaluators(
        [EvaluatorConfig.model_validate(e) for e in run_config.get("evaluators") or []], metadata, data_paths, chosen=False)
    loaded = load_checkpoint(weights, device, metadata=metadata, arch=arch, batch_size=global_batch_size // dist_info.world_size,
                             data_name=",".join(data_paths), forward_dtype=options.forward_dtype)
    checked = create_evaluators(evaluator_configs, metadata, data_paths)  # bad evaluator options fail before any model work
    if options.halt_max_steps:
        set_halt_max_steps(loaded.head, options.halt_max_steps)
    if pool is not None:
        if not any(hasattr(e, "absorb") for e in checked):
            raise UserError("an ensemble (checkpoint=[a,b,...]) pools ARC votes: give evaluators=[{name: arc@ARC}] and "
                            "an ARC dataset, or evaluate the checkpoints one by one")
        pool["context"] = (evaluator_configs, metadata, data_paths)
    model = maybe_compile(loaded.head, options.compile, device)  # by default on CUDA, as training
    step = step_of(weights) or 0
    output_dir = Path(options.output_dir or weights.parent / results_dir_name(options, step))
    loader = SizedLoader(dataset, count_test_batches(data_paths, metadata.sets, global_batch_size))
    if dist_info.is_main:
        print(f"Evaluating {weights} ({loaded.arch['name'].split('@')[-1]}, "
              f"dtype {describe_precision(loaded.forward_dtype, device)}, device {device}, {describe_threads()}"
              f"{', compiled' if model is not loaded.head else ''}) "
              f"on {', '.join(data_paths)}: {len(loader)} batches of {global_batch_size}, halt={options.halt}")

    kind = guess_kind(metadata, run_hints(run_config, data_paths))
    passes = Passes(options, dist_info, device, model, loaded, loader, metadata, evaluator_configs, data_paths, step,
                    output_dir)
    results, calls = passes.run_all(pool)
    width = None
    if options.votes > 1:  # test-time width (evaluation/width.py): fixed halting unless halt=adaptive
        width = width_report(loaded.head, loader, metadata, kind, options.votes, options.vote, device,
                             options.halt_threshold if options.halt == "adaptive" else None, options.max_batches,
                             latent_noise=options.latent_noise)
    if not dist_info.is_main:
        return None
    report = {"checkpoint": str(weights), "step": step, "data_paths": data_paths, "global_batch_size": global_batch_size,
              "halt_threshold": options.halt_threshold,
              "halt_max_steps": options.halt_max_steps or loaded.arch.get("halt_max_steps"),
              "trained_halt_max_steps": loaded.arch.get("halt_max_steps"), "results": results}
    if calls:
        report["adaptive_model_calls_rank0"] = calls["adaptive"] if "adaptive" in calls else calls
    if width is not None:
        report["width"] = width
    if options.depths:
        report["halt_max_steps"] = options.depths
        report["depths"] = depth_rows(results, options.depths, MODES[options.halt])
    write_report(report, options, output_dir, f"{weights.parent.name} step {step}")
    if options.visualize:
        threshold = options.halt_threshold if options.halt != "fixed" else None
        single, _ = create_dataloader(data_paths, "test", global_batch_size, DistInfo())  # rank 0 draws them all
        written = save_reasoning(loaded.head, first_test_rows(single, options.visualize), kind, threshold, output_dir)
        if written:
            print(f"Reasoning pictures: {len(written)} files in {output_dir / 'reasoning'}")
    return report


@dataclass
class Passes:
    """The evaluation passes of one checkpoint: one per halting mode, and per depth with depths=[...]."""
    options: EvaluateConfig
    dist_info: DistInfo
    device: Any
    model: Any
    loaded: Any
    loader: Any
    metadata: Any
    evaluator_configs: List[EvaluatorConfig]
    data_paths: List[str]
    step: int
    output_dir: Path

    def run_all(self, pool: Optional[Dict[str, Any]]):
        results: Dict[str, Dict[str, Any]] = {}
        calls: Dict[str, int] = {}
        for depth in self.options.depths or [None]:
            if depth is not None:  # test-time depth: results keyed <mode>@<depth>
                set_halt_max_steps(self.loaded.head, depth)
            for mode in MODES[self.options.halt]:
                key = mode if depth is None else f"{mode}@{depth}"
                # fresh evaluators: ARC votes must not carry over
                evaluators = create_evaluators(self.evaluator_configs, self.metadata, self.data_paths)
                runner = AdaptiveHalting(self.options.halt_threshold) if mode == "adaptive" else None
                metrics = evaluate(self.model, self.loader, self.metadata.sets, evaluators, self.dist_info, self.device,
                                   save_dir=str(self.output_dir / key), step=self.step,
                                   max_batches=self.options.max_batches, progress=True, batch_runner=runner)
                if pool is not None:
                    pool[mode] = evaluators
                if self.dist_info.is_main:
                    results[key] = with_intervals(metrics, evaluators)
                    if runner is not None:
                        calls[key] = runner.model_calls
        return results, calls


def write_report(report: Dict[str, Any], options: EvaluateConfig, output_dir: Path, title: str) -> None:
    """eval_results.json, and the tables (and the depth plot) on stdout."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "eval_results.json", "w") as f:
        json.dump(report, f, indent=2)
    print(format_results(report["results"]))
    if "width" in report:
        print(f"Test-time width ({report['width']['halt']} halting), exact accuracy against votes:\n"
              + format_width_table(report["width"]["results"]))
    if options.depths:
        print(format_depth_table(report["depths"]))
        print(f"Accuracy against depth: {plot_depths(report['depths'], output_dir / 'depths.png', title=title)}")
    print(f"Results written to {output_dir / 'eval_results.json'}")


ENSEMBLE_COLUMNS = ("ARC/test_output_pass@1", "ARC/test_output_pass@2", "ARC/task_mean_pass@1", "ARC/task_mean_pass@2")


def run_ensemble(options: EvaluateConfig, dist_info: DistInfo) -> Optional[Dict[str, Any]]:
    """Each member evaluated as on its own (its votes only), then the members' ARC votes pooled and scored.
    All members are scored on the first member's test data unless data_paths= is given."""
    members = list(options.checkpoint)
    first = find_weights(members[0])
    data_paths = options.data_paths or test_split_paths(load_run_config(first) or {}) or None
    output_dir = Path(options.output_dir or first.parent / f"ensemble_of_{len(members)}_step_{step_of(first) or 0}")
    pools, reports = [], []
    for i, member in enumerate(members):
        pool: Dict[str, Any] = {}
        member_options = options.model_copy(update={"checkpoint": member, "data_paths": data_paths, "visualize": 0,
                                                    "output_dir": str(output_dir / f"member_{i}")})
        reports.append(run(member_options, dist_info, pool=pool))
        pools.append(pool)
    configs, metadata, paths = pools[0]["context"]
    results: Dict[str, Dict[str, Any]] = {}
    for mode in MODES[options.halt]:
        ensemble = [e for e in create_evaluators(configs, metadata, paths) if hasattr(e, "absorb")]
        metrics: Dict[str, Any] = {}
        for j, evaluator in enumerate(ensemble):
            for pool in pools:
                evaluator.absorb([e for e in pool[mode] if hasattr(e, "absorb")][j])
            result = evaluator.result(str(output_dir / mode / f"evaluator_{type(evaluator).__name__}_ensemble"),
                                      rank=dist_info.rank, world_size=dist_info.world_size, group=dist_info.cpu_group)
            if dist_info.is_main and result is not None:
                metrics.update(result)
        if dist_info.is_main:
            results[mode] = with_intervals(metrics, ensemble)
    if not dist_info.is_main:
        return None
    report = {"ensemble": [r["checkpoint"] for r in reports], "data_paths": paths,
              "members": [{"checkpoint": r["checkpoint"], "step": r["step"], "results": r["results"]} for r in reports],
              "results": results}
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "eval_results.json", "w") as f:
        json.dump(report, f, indent=2)
    print(format_ensemble(report))
    print(f"Ensemble results written to {output_dir / 'eval_results.json'}")
    return report


def format_ensemble(report: Dict[str, Any]) -> str:
    """Each member's ARC scores beside the ensemble's."""
    lines = [f"{'':<10} {'halt':<9} " + " ".join(f"{c.removeprefix('ARC/'):>20}" for c in ENSEMBLE_COLUMNS) + "  checkpoint"]
    rows = [(f"member {i}", m["results"], m["checkpoint"]) for i, m in enumerate(report["members"])]
    rows.append(("ensemble", report["results"], f"{len(report['members'])} members pooled"))
    for title, results, name in rows:
        for mode, metrics in results.items():
            cells = " ".join(f"{metrics[c]:>20.4f}" if c in metrics else f"{'-':>20}" for c in ENSEMBLE_COLUMNS)
            lines.append(f"{title:<10} {mode:<9} {cells}  {name}")
    return "\n".join(lines)


def launch(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    options = parse_config(cfg)
    return in_process_group(options.device, lambda dist_info: run(options, dist_info))


@hydra.main(config_path="config", config_name="cfg_evaluate", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    launch(cfg)


if __name__ == "__main__":
    check_command_line("cfg_evaluate")
    main()
