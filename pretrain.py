"""Train a recursive reasoning model: `python pretrain.py arch=trm data_paths="[...]" ...` (SPEC §1, §6).

Single process, or `torchrun --nproc-per-node N pretrain.py ...` for several."""
import copy
import os
import sys

import hydra
import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf

from models.ema import EMAHelper
from training.builders import (copy_run_files, create_dataloader, create_evaluators, create_loss_head,
                               create_optimizers, ensure_dataset)
from training.checkpoint import save_weights
from training.config import ConfigError, PretrainConfig, validate_config
from training.device import pick_device, resolve_forward_dtype, should_compile
from training.distributed import DistInfo, init_distributed, shutdown_distributed
from training.loop import TrainState, eval_summary_line, evaluate, train_batch
from training.schedule import total_training_steps
from training.tracking import Tracker
from training.visuals import dataset_kind, reasoning_images


def load_config(cfg: DictConfig, dist_info: DistInfo) -> PretrainConfig:
    """Validate on rank 0 and share the result, so every rank uses the same run name and paths."""
    objects = [None]
    if dist_info.is_main:
        objects[0] = validate_config(OmegaConf.to_container(cfg, resolve=True)).fill_defaults()
    if dist_info.world_size > 1:
        torch.distributed.broadcast_object_list(objects, src=0)
    return objects[0]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def launch(cfg: DictConfig) -> dict:
    dist_info = init_distributed(cfg.get("device", "auto"))
    try:
        return run(load_config(cfg, dist_info), dist_info)
    finally:
        shutdown_distributed()


def run(config: PretrainConfig, dist_info: DistInfo) -> dict:
    seed_everything(config.seed + dist_info.rank)
    device = pick_device(config.device)
    if dist_info.is_main:
        ensure_dataset(config)
    if dist_info.world_size > 1:
        torch.distributed.barrier()

    train_epochs_per_iter = config.eval_interval or config.epochs
    total_iters = config.epochs // train_epochs_per_iter
    train_loader, train_metadata = create_dataloader(config, "train", dist_info, epochs_per_iter=train_epochs_per_iter)
    try:
        eval_loader, eval_metadata = create_dataloader(config, "test", dist_info, test_set_mode=True,
                                                       data_paths=config.data_paths_test or None)
    except FileNotFoundError:
        eval_loader = eval_metadata = None

    forward_dtype = resolve_forward_dtype(config.arch.model_extra.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = create_loss_head(config, train_metadata, dist_info.world_size, forward_dtype)
    if dist_info.world_size > 1:
        with torch.no_grad():
            for tensor in list(head.parameters()) + list(head.buffers()):
                torch.distributed.broadcast(tensor, src=0)
    optimizers, base_lrs = create_optimizers(config, head, dist_info.world_size)
    if config.load_checkpoint:
        from models.checkpoint_io import load_reference_checkpoint
        load_reference_checkpoint(head, config.load_checkpoint)
    model = torch.compile(head) if should_compile(config.compile, device) else head
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
        tracker = Tracker(config, config.checkpoint_path)
        tracker.summary("num_params", num_params)
        tracker.log({"num_params": num_params}, step=0)
        print(f"{config.arch.name}: {num_params:,} parameters, {state.total_steps} steps, device {device}, "
              f"dtype {forward_dtype}, world size {dist_info.world_size}, checkpoints in {config.checkpoint_path}")

    ema = None
    if config.ema:
        ema = EMAHelper(mu=config.ema_rate)
        ema.register(head)

    progress = tqdm.tqdm(total=state.total_steps, disable=not dist_info.is_main, dynamic_ncols=True)
    last_eval = {}
    for iter_id in range(total_iters):
        model.train()
        for _, batch, global_batch_size in train_loader:
            if state.step >= state.total_steps:
                break
            metrics = train_batch(state, batch, global_batch_size, config.lr_warmup_steps, config.lr_min_ratio,
                                  dist_info, device, config.grad_clip)
            if ema is not None:
                ema.update(head)
            if metrics is not None:
                tracker.log(metrics, step=state.step)
            if metrics is not None and "train/accuracy" in metrics:
                progress.set_postfix(loss=f"{metrics.get('train/lm_loss', float('nan')):.3f}",
                                     acc=f"{metrics.get('train/accuracy', float('nan')):.3f}",
                                     exact=f"{metrics.get('train/exact_accuracy', float('nan')):.3f}")
            progress.update(1)

        if iter_id < (config.min_eval_interval or 0) or eval_loader is None:
            continue
        eval_head = ema.ema_copy(head) if ema is not None else head
        eval_head.eval()
        eval_metrics = evaluate(eval_head, eval_loader, eval_metadata, evaluators, dist_info, device,
                                save_outputs=config.eval_save_outputs, save_dir=config.checkpoint_path,
                                step=state.step, max_batches=config.eval_max_batches)
        if dist_info.is_main:
            tracker.log(eval_metrics, step=state.step)
            if tracker.run is not None and reasoning_kind is not None:
                _, first_batch, _ = next(iter(eval_loader))
                tracker.log_images(reasoning_images(eval_head, first_batch, reasoning_kind, n=4), step=state.step)
            progress.write(eval_summary_line(state.step, eval_metrics))
            last_eval = eval_metrics
            if config.checkpoint_every_eval or iter_id == total_iters - 1:
                save_weights(eval_head, config.checkpoint_path, state.step)
        if eval_head is not head:
            del eval_head

    progress.close()
    if tracker is not None:
        tracker.finish()
    return last_eval


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        launch(cfg)
    except ConfigError as e:  # one line, no traceback: the user's input is wrong, not the code
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
