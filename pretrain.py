"""Train a recursive reasoning model: `python pretrain.py arch=trm data_paths="[...]" ...` (docs/command_lines.md).

Single process, or `torchrun --nproc-per-node N pretrain.py ...` for several. Read top-down: the config is
validated and the run directory claimed (`launch`), the run is built once (`build_run`), then `train` runs one
loop over the training batches until the single stop condition (`Run.finished`) holds."""
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import hydra
import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from evaluation.loop import eval_summary_line, evaluate
from evaluation.pictures import dataset_kind, reasoning_images
from models.build import build_loss_head
from models.ema import EMAHelper
from models.lm import ARCH_NAME as LM_ARCH_NAME
from models.lm.core import describe_parameters
from training.budget import CLOCKS, TrainingClock
from training.builders import (copy_run_files, create_dataloader, create_evaluators, create_optimizers, ensure_dataset,
                               fit_evaluators)
from training.checkpoint import Checkpointer, load_weights_file, read_training_state
from training.config import PretrainConfig, override_keys, prepare_resume, sweep_run_name, validate_config
from training.curriculum import model_cycles, scheduled_cycles, set_cycles
from training.data_checks import check_run_data, planned_steps, test_paths_of
from training.loop import TrainState, final_summary_line, progress_postfix, train_batch
from training.preemption import GracefulStop
from training.prefetch import prefetch_depth, prefetched
from training.run_dir import claim_run_dir
from training.schedule import Schedule, total_training_steps
from training.tracking import Tracker, rewind_metrics
from utils.device import (compile_failures_stop_the_run, describe_precision, describe_threads, maybe_compile,
                          resolve_forward_dtype, setup_device)
from utils.distributed import DistInfo, in_process_group, on_main_rank
from utils.errors import user_errors
from utils.hydra_cli import check_command_line

PICTURES_PER_EVAL = 4  # reasoning pictures logged to W&B at each evaluation


# ------------------------------------------------------------------ the config and the run directory
def command_line_overrides() -> list:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def decide_config(raw: Dict[str, Any], overrides: List[str], run_dir: contextlib.ExitStack
                  ) -> Tuple[PretrainConfig, Optional[Dict[str, Any]]]:
    """The validated config and, with `resume=`, the run's saved config (plus the keys `overrides` set) and its
    training state. Claims the run directory, held until `run_dir` closes. Rank 0 only."""
    raw = dict(raw)
    resume_state = None
    if raw.get("resume"):
        config, resume_state = prepare_resume(raw, overrides)
    else:
        if in_sweep() and raw.get("run_name") is None:
            raw["run_name"] = sweep_run_name(raw["arch"]["name"], overrides)
        config = validate_config(raw).fill_defaults()
    run_dir.enter_context(claim_run_dir(config.checkpoint_path, resuming=bool(config.resume)))
    return config, resume_state


def launch(cfg: DictConfig) -> dict:
    raw = OmegaConf.to_container(cfg, resolve=True)
    return in_process_group(raw.get("device", "auto"),
                            lambda dist_info: claim_and_train(raw, command_line_overrides(), dist_info))


def claim_and_train(raw: Dict[str, Any], overrides: List[str], dist_info: DistInfo, evaluations: bool = True) -> dict:
    """Train the run `raw` describes (adapt.py's too, without evaluations); `overrides`: the keys the command line
    set, which a resumed run takes over its saved config."""
    with contextlib.ExitStack() as run_dir:
        # rank 0 decides and shares, so every rank uses the same run name and paths; the state is read once
        config, resume_state = on_main_rank(lambda: decide_config(raw, overrides, run_dir), dist_info)
        if config.resume and resume_state is None:  # ranks other than 0
            resume_state = read_training_state(config.resume)
        with compile_failures_stop_the_run():  # torch.compile fails at the first step it compiles
            return train(build_run(config, dist_info, resume_state, evaluations))


# ------------------------------------------------------------------ building the run
@dataclass
class Run:
    """Everything one training run holds. `head` is the loss head as built (its parameters, the weights saved);
    `state.model` is the form the steps run (compiled, or `head` itself); `eval_model` likewise for evaluations."""
    config: PretrainConfig
    dist_info: DistInfo
    device: torch.device
    train_batches: Any                  # prefetched; checkpoints record the batches consumed
    total_iters: int                    # evaluation passes (eval_interval epochs each)
    head: nn.Module
    state: TrainState
    ema: Optional[EMAHelper]
    eval_head: nn.Module                # the EMA copy (refreshed before each evaluation), else `head`
    eval_model: nn.Module
    eval_loader: Any
    eval_metadata: Any
    evaluators: List[Any]
    reasoning_kind: Optional[str]       # sudoku / maze / arc pictures, or None
    checkpointer: Checkpointer
    clock: TrainingClock
    stop: GracefulStop
    tracker: Optional[Tracker]          # rank 0 only
    progress: Any = None
    start_iter: int = 0                 # the pass and step training (re)starts at
    start_step: int = 0
    depth_target: Optional[Tuple[int, int]] = None  # with depth_curriculum: the arch's (H_cycles, L_cycles)
    last_eval: Dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        """The one stop condition: a signal, the time budget or the step budget."""
        return self.stop.stopping or self.clock.out_of_time or self.state.step >= self.state.total_steps


def build_model(config: PretrainConfig, metadata, dist_info: DistInfo, device: torch.device):
    """The loss head on `device` (every rank from rank 0's weights), its optimizers, its compiled form and EMA."""
    forward_dtype = resolve_forward_dtype(config.arch.model_extra.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = build_loss_head(config.arch, metadata, config.global_batch_size // dist_info.world_size, forward_dtype)
    optimizers, base_lrs = create_optimizers(config, head, dist_info.world_size)
    if config.load_checkpoint:
        load_weights_file(head, config.load_checkpoint)
    if dist_info.world_size > 1:
        with torch.no_grad():
            for tensor in list(head.parameters()) + list(head.buffers()):
                torch.distributed.broadcast(tensor, src=0)
    ema = None
    if config.ema:
        ema = EMAHelper(mu=config.ema_rate)
        ema.register(head)
    return head, forward_dtype, optimizers, base_lrs, ema


def build_evaluation(config: PretrainConfig, dist_info: DistInfo):
    """The test loader, its metadata, the evaluators and the kind of pictures; all None/empty without a test split."""
    test_paths = test_paths_of(config)
    if not test_paths:
        return None, None, [], None
    loader, metadata = create_dataloader(test_paths, "test", config.global_batch_size, dist_info, seed=config.seed)
    config.evaluators = fit_evaluators(config.evaluators, metadata, test_paths,
                                       chosen="evaluators" in override_keys(command_line_overrides()))
    evaluators = create_evaluators(config.evaluators, metadata, test_paths)
    return loader, metadata, evaluators, dataset_kind(metadata, test_paths, [e.name for e in config.evaluators])


def build_run(config: PretrainConfig, dist_info: DistInfo, resume_state: Optional[Dict[str, Any]],
              evaluations: bool = True) -> Run:
    torch.manual_seed(config.seed + dist_info.rank)
    np.random.seed(config.seed + dist_info.rank)
    device = setup_device(config.device)
    # before heavy work: the data as dataset.validate checks it, and sizes that fit
    batches_per_pass = on_main_rank(lambda: ensure_dataset(config) or check_run_data(config), dist_info)
    train_loader, train_metadata = create_dataloader(config.data_paths, "train", config.global_batch_size, dist_info,
                                                     seed=config.seed, epochs_per_iter=config.epochs_per_iter)
    # read ahead in a thread, pinned for asynchronous copies to a GPU
    train_batches = prefetched(train_loader, prefetch_depth(config.prefetch_batches, device), pin=device.type == "cuda")
    eval_loader, eval_metadata, evaluators, reasoning_kind = (build_evaluation(config, dist_info) if evaluations
                                                              else (None, None, [], None))

    head, forward_dtype, optimizers, base_lrs, ema = build_model(config, train_metadata, dist_info, device)
    schedule = Schedule(total_steps=total_training_steps(config.epochs, train_metadata.total_groups,
                                                         train_metadata.mean_puzzle_examples, config.global_batch_size),
                        warmup_steps=config.lr_warmup_steps, min_ratio=config.lr_min_ratio)
    state = TrainState(model=maybe_compile(head, config.compile, device), optimizers=optimizers, base_lrs=base_lrs,
                       schedule=schedule)
    # one evaluation model, compiled once so that every evaluation reuses its graph
    eval_head = ema.ema_copy(head) if ema is not None else head
    eval_model = maybe_compile(eval_head, config.compile if config.compile_eval is None else config.compile_eval, device)

    tracker = None
    if dist_info.is_main:
        copy_run_files(config, head)
        if resume_state is not None:
            rewind_metrics(config.checkpoint_path, resume_state["step"])
        tracker = start_tracker(config, head, resume_state)
        print(f"{config.arch.name}: {sum(p.numel() for p in head.parameters()):,} parameters, "
              f"{planned_steps(batches_per_pass, config, schedule.total_steps)}, device {device}, "
              f"dtype {describe_precision(forward_dtype, device)}, {describe_threads()}, world size {dist_info.world_size}, "
              f"checkpoints in {config.checkpoint_path}")
        if config.arch.name == LM_ARCH_NAME:  # core against vocabulary, tied and untied
            print(describe_parameters(head.model.decoder))
    run = Run(config=config, dist_info=dist_info, device=device, train_batches=train_batches,
              total_iters=config.epochs // config.epochs_per_iter, head=head, state=state, ema=ema, eval_head=eval_head,
              eval_model=eval_model, eval_loader=eval_loader, eval_metadata=eval_metadata, evaluators=evaluators,
              reasoning_kind=reasoning_kind, tracker=tracker,
              checkpointer=Checkpointer(config.checkpoint_path, config.checkpoint_interval, config.checkpoint_keep, dist_info),
              clock=TrainingClock(config.max_train_seconds, config.eval_every_seconds, dist_info,
                                  now=CLOCKS[config.budget_clock]),
              stop=GracefulStop(dist_info))
    if config.depth_curriculum.enabled:
        run.depth_target = model_cycles(head)
        curriculum = config.depth_curriculum
        scheduled_cycles(1, schedule.total_steps, (curriculum.start_H, curriculum.start_L),
                         run.depth_target, curriculum.until)  # a start deeper than the arch fails here, in one line
    if resume_state is not None:  # last before training: it also restores the RNGs
        run.start_iter = run.checkpointer.restore(resume_state, state, ema, train_batches, device)
        if dist_info.is_main:
            print(f"Resumed {config.checkpoint_path} at step {state.step} from {config.resume}")
    return run


def start_tracker(config: PretrainConfig, head: nn.Module, resume_state: Optional[Dict[str, Any]]) -> Tracker:
    tracker = Tracker(config, config.checkpoint_path, run_id=resume_state and resume_state.get("wandb_run_id"))
    num_params = sum(p.numel() for p in head.parameters())
    tracker.summary("num_params", num_params)
    if resume_state is None:
        tracker.log({"num_params": num_params}, step=0)
    return tracker


# ------------------------------------------------------------------ what the loop does
def save_checkpoint(run: Run, next_iter: int, keep_weights: bool = False) -> None:
    """`next_iter`: the pass a resumed run continues in (the current one when saved mid-pass)."""
    with run.clock.paused():
        if run.tracker is not None:
            run.tracker.flush()  # the records up to the checkpoint reach the file before it does
        run.checkpointer.save(run.state, run.ema, run.train_batches, run.config, run.tracker and run.tracker.run_id,
                              next_iter, run.device, keep_weights)


def apply_depth_curriculum(run: Run) -> Dict[str, float]:
    """Set the training model's cycles for the step about to run; say so when they change."""
    curriculum = run.config.depth_curriculum
    step = run.state.step + 1
    cycles = scheduled_cycles(step, run.state.total_steps, (curriculum.start_H, curriculum.start_L),
                              run.depth_target, curriculum.until)
    changed = set_cycles(run.head, *cycles)
    if (changed or step == run.start_step + 1) and run.tracker is not None:
        run.progress.write(f"depth curriculum: from step {step} H_cycles={cycles[0]} L_cycles={cycles[1]} "
                           f"(the arch's: {run.depth_target[0]}x{run.depth_target[1]})")
    return {"train/H_cycles": float(cycles[0]), "train/L_cycles": float(cycles[1])}


def evaluate_and_log(run: Run) -> None:
    with run.clock.paused():
        if run.depth_target is not None:  # evaluations run at the arch's depth (the EMA copy always does)
            set_cycles(run.head, *run.depth_target)
        if run.ema is not None:
            run.ema.ema(run.eval_head)
        run.eval_model.eval()
        metrics = evaluate(run.eval_model, run.eval_loader, run.eval_metadata.sets, run.evaluators, run.dist_info, run.device,
                           save_outputs=run.config.eval_save_outputs, save_dir=run.config.checkpoint_path,
                           step=run.state.step, max_batches=run.config.eval_max_batches)
        if run.tracker is not None:
            timing = {"time/train_seconds": run.clock.elapsed} if run.config.max_train_seconds else {}
            run.tracker.log({**metrics, **timing}, step=run.state.step)
            if run.tracker.run is not None and run.reasoning_kind is not None:
                _, first_batch, _ = next(iter(run.eval_loader))
                run.tracker.log_images(reasoning_images(run.eval_head, first_batch, run.reasoning_kind, n=PICTURES_PER_EVAL),
                                       step=run.state.step)
            run.progress.write(eval_summary_line(run.state.step, metrics))
            run.last_eval = metrics
        run.state.model.train()


def train_step(run: Run, batch: Dict[str, torch.Tensor], global_batch_size: int, iter_id: int) -> None:
    """One step, then what is due after it: the EMA, logging, a checkpoint (interval or signal), a timed evaluation."""
    started = time.perf_counter()
    depth = apply_depth_curriculum(run) if run.depth_target is not None else {}
    metrics = {**train_batch(run.state, batch, global_batch_size, run.dist_info, run.device, run.config.grad_clip),
               **depth}
    if run.tracker is not None and run.state.step == run.start_step + 1 and run.state.model is not run.head:
        run.progress.write(f"torch.compile: the training step compiled and ran in {time.perf_counter() - started:.0f} s")
    if run.ema is not None:
        run.ema.update(run.head)
    if run.tracker is not None:
        run.tracker.log(metrics, step=run.state.step)
        if "train/accuracy" in metrics:
            run.progress.set_postfix(progress_postfix(metrics, run.config.arch.name == LM_ARCH_NAME), refresh=False)
    run.progress.update(1)
    if run.stop.requested(run.state.step) or run.checkpointer.due(run.state.step):
        save_checkpoint(run, next_iter=iter_id)
    if not run.stop.stopping and run.clock.check() and run.eval_loader is not None:
        evaluate_and_log(run)


def end_pass(run: Run, iter_id: int) -> None:
    """The end of an eval_interval pass: evaluate (unless before min_eval_interval) and save. A spent budget of time
    or steps ends the run as the last pass would: evaluated, its weights kept, nothing left to resume."""
    run_over = run.clock.out_of_time or run.state.step >= run.state.total_steps
    last_pass = iter_id == run.total_iters - 1 or run_over
    next_iter = run.total_iters if run_over else iter_id + 1
    if run.eval_loader is None or (iter_id < (run.config.min_eval_interval or 0) and not run.clock.out_of_time):
        save_checkpoint(run, next_iter=next_iter, keep_weights=last_pass)
    else:
        evaluate_and_log(run)
        save_checkpoint(run, next_iter=next_iter, keep_weights=run.config.checkpoint_every_eval or last_pass)
    run.stop.requested()  # a signal that arrived during the evaluation or the save stops the run here


def training_batches(run: Run) -> Iterator[Tuple[int, Optional[Dict[str, torch.Tensor]], int]]:
    """(pass, batch, global batch size) for every step, then (pass, None, 0) at the end of each pass, until the run
    is finished. A signal ends it at once (its step saved a checkpoint); a spent budget ends the pass first."""
    for iter_id in range(run.start_iter, run.total_iters):
        run.clock.resume()
        for _, batch, global_batch_size in run.train_batches:
            if run.finished:
                break
            yield iter_id, batch, global_batch_size
        run.clock.pause()
        if run.stop.stopping:
            return
        yield iter_id, None, 0
        if run.finished:
            return


# ------------------------------------------------------------------ the training loop
def train(run: Run) -> dict:
    run.start_step = run.state.step
    run.progress = tqdm.tqdm(total=run.state.total_steps, initial=run.state.step, disable=not run.dist_info.is_main,
                             dynamic_ncols=True, mininterval=0.5)  # redrawn twice a second at most, not on every step
    run.stop.install()  # SIGTERM/SIGINT: finish the step, save, exit
    run.state.model.train()
    for iter_id, batch, global_batch_size in training_batches(run):
        if batch is None:
            end_pass(run, iter_id)
        else:
            train_step(run, batch, global_batch_size, iter_id)
    return finish(run)


def finish(run: Run) -> dict:
    run.stop.restore()
    run.progress.close()
    if run.tracker is not None:
        run.tracker.finish()
        if run.stop.stopping:
            print(f"Stopped by {run.stop.name} at step {run.state.step}, checkpoint saved; "
                  f"continue with resume={run.config.checkpoint_path}")
        else:
            print(final_summary_line(run.state.step, time.time() - run.started, run.last_eval)
                  + (f" (time budget of {run.config.max_train_seconds:g} s reached)" if run.clock.out_of_time else ""))
    if run.stop.stopping:
        raise SystemExit(run.stop.exit_code)
    return run.last_eval


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    launch(cfg)


if __name__ == "__main__":
    check_command_line("cfg_pretrain")
    main()
