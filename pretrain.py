"""Train a recursive reasoning model: `python pretrain.py arch=trm data_paths="[...]" ...` (SPEC §1, §6).

Single process, or `torchrun --nproc-per-node N pretrain.py ...` for several."""
import contextlib
import time

import hydra
import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf

from models.ema import EMAHelper
from training.budget import CLOCKS, TrainingClock
from training.builders import (copy_run_files, create_dataloader, create_evaluators, create_loss_head, fit_evaluators,
                               create_optimizers, ensure_dataset)
from training.checkpoint import (Checkpointer, load_weights_file, override_keys, prepare_resume, read_training_state,
                                 rewind_metrics)
from training.config import PretrainConfig, sweep_run_name, validate_config
from training.data_checks import check_run_data, planned_steps
from utils.device import (compile_failures_stop_the_run, describe_precision, describe_threads, maybe_compile,
                             resolve_forward_dtype, set_intra_op_threads, setup_device)
from utils.distributed import DistInfo, init_distributed, on_main_rank, shutdown_distributed
from training.loop import TrainState, eval_summary_line, evaluate, final_summary_line, train_batch
from training.preemption import GracefulStop
from training.prefetch import prefetch_depth, prefetched
from training.run_dir import claim_run_dir
from training.schedule import total_training_steps
from training.tracking import Tracker
from evaluation.pictures import dataset_kind, reasoning_images
from utils.errors import user_errors
from utils.hydra_cli import check_command_line


def command_line_overrides() -> list:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def load_config(cfg: DictConfig, dist_info: DistInfo, run_dir: contextlib.ExitStack):
    """Validate on rank 0 and share the result, so every rank uses the same run name and paths. With `resume=`
    the run's saved config (plus this command line's keys) and its training state (rank 0 only; read once).
    Rank 0 also claims the run directory, held until `run_dir` closes."""
    resume_state = None

    def decide() -> PretrainConfig:
        nonlocal resume_state
        raw = OmegaConf.to_container(cfg, resolve=True)
        if raw.get("resume"):
            config, resume_state = prepare_resume(raw, command_line_overrides())
        else:
            if in_sweep() and raw.get("run_name") is None:
                raw["run_name"] = sweep_run_name(raw["arch"]["name"], command_line_overrides())
            config = validate_config(raw).fill_defaults()
        run_dir.enter_context(claim_run_dir(config.checkpoint_path, resuming=bool(config.resume)))
        return config
    return on_main_rank(decide, dist_info), resume_state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def launch(cfg: DictConfig) -> dict:
    set_intra_op_threads()
    dist_info = init_distributed(cfg.get("device", "auto"))
    try:
        with contextlib.ExitStack() as run_dir:
            config, resume_state = load_config(cfg, dist_info, run_dir)
            return run(config, dist_info, resume_state)
    finally:
        shutdown_distributed()


@compile_failures_stop_the_run()
def run(config: PretrainConfig, dist_info: DistInfo, resume_state=None) -> dict:
    seed_everything(config.seed + dist_info.rank)
    device = setup_device(config.device)
    # before heavy work: the data as dataset.validate checks it, and sizes that fit
    batches_per_pass = on_main_rank(lambda: ensure_dataset(config) or check_run_data(config), dist_info)

    train_epochs_per_iter = config.epochs_per_iter
    total_iters = config.epochs // train_epochs_per_iter
    train_loader, train_metadata = create_dataloader(config, "train", dist_info, epochs_per_iter=train_epochs_per_iter)
    # read ahead in a thread, pinned for asynchronous copies to a GPU; checkpoints record the batches consumed
    train_batches = prefetched(train_loader, prefetch_depth(config.prefetch_batches, device), pin=device.type == "cuda")
    try:
        eval_loader, eval_metadata = create_dataloader(config, "test", dist_info, test_set_mode=True,
                                                       data_paths=config.data_paths_test or None)
    except FileNotFoundError:
        eval_loader = eval_metadata = None

    forward_dtype = resolve_forward_dtype(config.arch.model_extra.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = create_loss_head(config, train_metadata, dist_info.world_size, forward_dtype)
    optimizers, base_lrs = create_optimizers(config, head, dist_info.world_size)
    if config.load_checkpoint:
        load_weights_file(head, config.load_checkpoint)
    if dist_info.world_size > 1:  # every rank starts from rank 0's weights
        with torch.no_grad():
            for tensor in list(head.parameters()) + list(head.buffers()):
                torch.distributed.broadcast(tensor, src=0)
    if config.resume and resume_state is None:  # ranks other than 0
        resume_state = read_training_state(config.resume)
    model = maybe_compile(head, config.compile, device)
    if eval_metadata:
        config.evaluators = fit_evaluators(config.evaluators, eval_metadata, config.data_paths_test or config.data_paths,
                                           chosen="evaluators" in override_keys(command_line_overrides()))
    evaluators = create_evaluators(config, eval_metadata, config.data_paths_test or config.data_paths) if eval_metadata else []
    reasoning_kind = dataset_kind(eval_metadata, config.data_paths_test or config.data_paths,
                                  [e.name for e in config.evaluators]) if eval_metadata else None

    state = TrainState(head=model, optimizers=optimizers, base_lrs=base_lrs, carry=None, step=0,
                       total_steps=total_training_steps(config.epochs, train_metadata.total_groups,
                                                        train_metadata.mean_puzzle_examples, config.global_batch_size))
    num_params = sum(p.numel() for p in head.parameters())
    tracker = None
    if dist_info.is_main:
        copy_run_files(config, head)
        if resume_state is not None:
            rewind_metrics(config.checkpoint_path, resume_state["step"])
        tracker = Tracker(config, config.checkpoint_path, run_id=resume_state and resume_state.get("wandb_run_id"))
        tracker.summary("num_params", num_params)
        if resume_state is None:
            tracker.log({"num_params": num_params}, step=0)
        print(f"{config.arch.name}: {num_params:,} parameters, {planned_steps(batches_per_pass, config, state.total_steps)}, device {device}, "
              f"dtype {describe_precision(forward_dtype, device)}, {describe_threads()}, world size {dist_info.world_size}, "
              f"checkpoints in {config.checkpoint_path}")

    ema = None
    if config.ema:
        ema = EMAHelper(mu=config.ema_rate)
        ema.register(head)

    checkpointer = Checkpointer(config.checkpoint_path, config.checkpoint_interval, config.checkpoint_keep, dist_info)
    def save_checkpoint(next_iter: int, keep_weights: bool = False):
        if tracker is not None:
            tracker.flush()  # the records up to the checkpoint reach the file before it does
        checkpointer.save(state, ema, train_batches, config, tracker and tracker.run_id, next_iter, device, keep_weights)

    start_iter = 0
    if resume_state is not None:  # last before training: it also restores the RNGs
        start_iter = checkpointer.restore(resume_state, state, ema, train_batches, device)
        if dist_info.is_main:
            print(f"Resumed {config.checkpoint_path} at step {state.step} from {config.resume}")
        del resume_state

    start_time = time.time()
    progress = tqdm.tqdm(total=state.total_steps, initial=state.step, disable=not dist_info.is_main, dynamic_ncols=True,
                         mininterval=0.5)  # redrawn twice a second at most, not on every step
    last_eval = {}
    clock = TrainingClock(config.max_train_seconds, config.eval_every_seconds, dist_info, now=CLOCKS[config.budget_clock])

    # One evaluation model, compiled once so that every evaluation reuses its graph: the EMA copy (refreshed in place
    # before each evaluation), else the training weights themselves.
    eval_head = ema.ema_copy(head) if ema is not None else head
    eval_model = maybe_compile(eval_head, config.compile if config.compile_eval is None else config.compile_eval, device)

    def evaluate_and_log():
        nonlocal last_eval
        if ema is not None:
            ema.ema(eval_head)
        eval_model.eval()
        eval_metrics = evaluate(eval_model, eval_loader, eval_metadata, evaluators, dist_info, device,
                                save_outputs=config.eval_save_outputs, save_dir=config.checkpoint_path,
                                step=state.step, max_batches=config.eval_max_batches)
        if dist_info.is_main:
            timing = {"time/train_seconds": clock.elapsed} if config.max_train_seconds else {}  # accuracy-vs-time curves
            tracker.log({**eval_metrics, **timing}, step=state.step)
            if tracker.run is not None and reasoning_kind is not None:
                _, first_batch, _ = next(iter(eval_loader))
                tracker.log_images(reasoning_images(eval_head, first_batch, reasoning_kind, n=4), step=state.step)
            progress.write(eval_summary_line(state.step, eval_metrics))
            last_eval = eval_metrics
        model.train()

    stop = GracefulStop(dist_info).install()  # SIGTERM/SIGINT: finish the step, save, exit
    first_step = state.step + 1
    for iter_id in range(start_iter, total_iters):
        model.train()
        clock.resume()
        for _, batch, global_batch_size in train_batches:
            if state.step >= state.total_steps:
                break
            step_started = time.perf_counter()
            metrics = train_batch(state, batch, global_batch_size, config.lr_warmup_steps, config.lr_min_ratio,
                                  dist_info, device, config.grad_clip)
            if state.step == first_step and model is not head and dist_info.is_main:
                progress.write(f"torch.compile: the training step compiled and ran in {time.perf_counter() - step_started:.0f} s")
            if ema is not None:
                ema.update(head)
            if metrics is not None:
                tracker.log(metrics, step=state.step)
            if metrics is not None and "train/accuracy" in metrics:
                progress.set_postfix(loss=f"{metrics.get('train/lm_loss', float('nan')):.3f}",
                                     acc=f"{metrics.get('train/accuracy', float('nan')):.3f}",
                                     exact=f"{metrics.get('train/exact_accuracy', float('nan')):.3f}", refresh=False)
            progress.update(1)
            if stop.requested(state.step) or checkpointer.due(state.step):
                with clock.paused():
                    save_checkpoint(next_iter=iter_id)
            if stop.stopping:
                break
            if clock.check() and eval_loader is not None:
                with clock.paused():
                    evaluate_and_log()
            if clock.out_of_time:
                break
        clock.pause()
        if stop.stopping:
            break

        # A spent time budget ends the run as the last pass would: evaluate, keep the weights, nothing left to resume.
        last_pass = iter_id == total_iters - 1 or clock.out_of_time
        next_iter = total_iters if clock.out_of_time else iter_id + 1
        if (iter_id < (config.min_eval_interval or 0) and not clock.out_of_time) or eval_loader is None:
            save_checkpoint(next_iter=next_iter, keep_weights=last_pass)
        else:
            evaluate_and_log()
            save_checkpoint(next_iter=next_iter, keep_weights=config.checkpoint_every_eval or last_pass)
        if clock.out_of_time or stop.requested():
            break

    stop.restore()
    progress.close()
    if tracker is not None:
        tracker.finish()
        print(f"Stopped by {stop.name} at step {state.step}, checkpoint saved; continue with resume={config.checkpoint_path}"
              if stop.stopping else final_summary_line(state.step, time.time() - start_time, last_eval)
              + (f" (time budget of {config.max_train_seconds:g} s reached)" if clock.out_of_time else ""))
    if stop.stopping:
        raise SystemExit(stop.exit_code)
    return last_eval


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    launch(cfg)


if __name__ == "__main__":
    check_command_line("cfg_pretrain")
    main()
