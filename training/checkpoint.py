"""A run's training state. `<run dir>/state_<N>.pt`, beside the weights file step_<N> (models/checkpoint_io.py),
is everything else a run needs to continue exactly: raw weights, both optimizers, the EMA shadow, step, sampler
position, RNG states and ACT carry of every rank, W&B run id and the resolved config. Files are written atomically
and read with `torch.load(weights_only=True)`; a file that cannot be used is reported in one line (UserError)
before training starts."""
import dataclasses
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from models.checkpoint_io import (STATE_FILE, WEIGHTS_FILE, atomic_torch_save, files_by_step, highest_step_file,
                                  load_reference_checkpoint, mismatch, read_checkpoint_file, remove_stale_temporaries,
                                  save_weights, state_path, step_of, unwrap, weights_path)
from utils.distributed import gather_to_rank0
from utils.errors import UserError

STATE_FORMAT = "trm-training-state/1"


# ------------------------------------------------------------------ weights for a new run
def load_weights_file(head: nn.Module, path: str, what: str = "load_checkpoint") -> None:
    """`load_checkpoint=FILE`: weights only, like the reference (prefix-insensitive; a puzzle table of another size
    starts from its mean row). A training state file gives its raw weights."""
    state = read_checkpoint_file(path, what)
    if state.get("format") == STATE_FORMAT:
        state = state["model"]
    try:
        load_reference_checkpoint(head, state)
    except UserError as e:
        raise UserError(f"{what} '{path}': {e}") from None


# ------------------------------------------------------------------ per-rank state: RNGs, ACT carry
def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tensors -> CPU tensors: what weights_only loading accepts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def from_plain(template: Any, plain: Any, where: str = "carry") -> Any:
    """Rebuild `template`'s structure (its dataclass types, devices, dtypes) from `to_plain` output."""
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        return type(template)(**{f.name: from_plain(getattr(template, f.name), plain[f.name], f"{where}.{f.name}")
                                 for f in dataclasses.fields(template)})
    if isinstance(template, dict):
        return {k: from_plain(template[k], v, f"{where}.{k}") for k, v in plain.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(from_plain(t, p, f"{where}[{i}]") for i, (t, p) in enumerate(zip(template, plain)))
    if isinstance(template, torch.Tensor):
        if tuple(plain.shape) != tuple(template.shape):
            raise UserError(f"saved {where} has shape {tuple(plain.shape)} but this run needs {tuple(template.shape)}")
        return plain.to(device=template.device, dtype=template.dtype)
    return plain


def restore_carry(head: nn.Module, plain: Optional[Dict[str, Any]], device: torch.device) -> Any:
    """A carry of the model's own types, rows mid-ACT keeping their step count, halting flag and current puzzle."""
    if plain is None:
        return None
    batch = {k: v.to(device) for k, v in plain["current_data"].items()}
    with torch.device(device):
        template = head.initial_carry(batch)
    return from_plain(template, plain)


def capture_rng(device: torch.device) -> Dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
           "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                     "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                     "gauss": float(np_state["gauss"])}}
    if device.type == "cuda":  # ACT exploration draws on the model's device
        rng["device"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        rng["device"] = torch.mps.get_rng_state()
    return rng


def restore_rng(rng: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "device" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["device"], device)
    elif "device" in rng and device.type == "mps":
        torch.mps.set_rng_state(rng["device"])


# ------------------------------------------------------------------ finding a checkpoint to resume
def find_state_file(resume: str, project_dir: str) -> str:
    """`resume=`: a state_<N>.pt or step_<N> file, a run directory (its highest step), a directory of runs or
    `latest` (the run under `project_dir` whose newest state was written last)."""
    path = project_dir if resume == "latest" else resume
    if os.path.isfile(path):
        step = step_of(path, WEIGHTS_FILE)
        if step is not None:
            path = state_path(os.path.dirname(path), step)
            if not os.path.isfile(path):
                raise UserError(f"resume: no training state '{path}' beside the weights file: resume needs a full "
                                f"checkpoint; to start a new run from these weights use +load_checkpoint=<file>")
        return path
    if not os.path.isdir(path):
        raise UserError(f"resume={resume}: '{path}' not found: give a run directory, a state_<N>.pt file or latest "
                        f"(the newest run under +checkpoint_path=, else under checkpoints/<project_name>/)")
    found = highest_step_file(path, STATE_FILE)
    if found is None:
        raise UserError(f"resume={resume}: no training state (state_<N>.pt) in '{path}' or its sub-directories")
    return found


def read_training_state(path: str) -> Dict[str, Any]:
    # Memory-mapped: the N ranks of a node share one copy in the page cache instead of holding N.
    state = read_checkpoint_file(path, "resume file", mmap=True)
    if state.get("format") != STATE_FORMAT:
        raise UserError(f"resume file '{path}' is not a training state ({STATE_FORMAT}); a weights-only file "
                        f"starts a new run with +load_checkpoint=<file>")
    missing = [k for k in ("step", "model", "optimizers", "ranks", "config") if k not in state]
    if missing:
        raise UserError(f"resume file '{path}' lacks {', '.join(missing)}: it is incomplete")
    state["path"] = path
    return state


def older_intact_state(path: str) -> Optional[str]:
    """The newest training state beside `path` with a lower step that loads, or None."""
    step = step_of(path, STATE_FILE)
    for older in sorted((s for s in files_by_step(os.path.dirname(path), STATE_FILE) if step is None or s < step), reverse=True):
        candidate = state_path(os.path.dirname(path), older)
        try:
            read_training_state(candidate)
        except UserError:
            continue
        return candidate
    return None


def read_resume_state(resume: str, runs_dir: str) -> Dict[str, Any]:
    """The training state `resume=` names (see find_state_file); when it does not load, the error names an older
    state beside it that does."""
    path = os.path.abspath(find_state_file(resume, runs_dir))
    try:
        return read_training_state(path)
    except UserError as e:
        older = older_intact_state(path)
        if older is None:
            raise
        raise UserError(f"{e}; an older state loads: continue from it with resume={older}") from None


# ------------------------------------------------------------------ the run's checkpointer
class Checkpointer:
    """Saves and restores full checkpoints of one run. Every rank takes part (each contributes its sampler
    position, RNG states and carry); rank 0 writes. Keeps the last `keep` training states; weights files of
    evaluations stay, as the reference keeps them, the others go with their state."""

    def __init__(self, directory: str, interval: Optional[int], keep: Optional[int], dist_info):
        self.directory, self.interval, self.keep, self.dist_info = directory, interval, keep, dist_info
        self.kept_weights: List[int] = []  # steps whose weights file the reference would have written
        if dist_info.is_main:
            remove_stale_temporaries(directory)

    def due(self, step: int) -> bool:
        return self.interval is not None and step % self.interval == 0

    def save(self, state, ema, sampler, config, run_id: Optional[str], next_iter: int,
             device: torch.device, keep_weights: bool = False) -> Optional[str]:
        """`next_iter`: the eval_interval pass to continue in (the current one when saved mid-pass)."""
        info = self.dist_info
        parts = gather_to_rank0({"sampler": sampler.state_dict(), "rng": capture_rng(device), "carry": to_plain(state.carry)},
                                info.rank, info.world_size, info.cpu_group)
        if not self.dist_info.is_main:
            return None
        if keep_weights and state.step not in self.kept_weights:
            self.kept_weights.append(state.step)
        head = unwrap(state.model)
        shadow = ema.state_dict() if ema is not None else None
        save_weights(head, self.directory, state.step, shadow)
        path = atomic_torch_save({
            "format": STATE_FORMAT, "step": state.step, "total_steps": state.total_steps, "next_iter": next_iter,
            "model": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in state.optimizers],
            "ema": {k: v.detach().cpu() for k, v in shadow.items()} if shadow is not None else None,
            "world_size": self.dist_info.world_size, "ranks": parts,
            "wandb_run_id": run_id, "kept_weights": list(self.kept_weights), "config": config.model_dump(),
        }, state_path(self.directory, state.step))
        self.prune(state.step)
        return path

    def prune(self, current_step: int) -> None:
        """Drop states beyond the newest `keep` (and their weights unless an evaluation kept them). States past
        `current_step` belong to a run resumed from an earlier checkpoint and are left alone."""
        if self.keep is None:
            return
        steps = sorted(s for s in files_by_step(self.directory, STATE_FILE) if s <= current_step)
        for step in steps[:-self.keep] if self.keep > 0 else steps:
            os.remove(state_path(self.directory, step))
            if step not in self.kept_weights and os.path.isfile(weights_path(self.directory, step)):
                os.remove(weights_path(self.directory, step))

    def restore(self, saved: Dict[str, Any], state, ema, sampler, device: torch.device) -> int:
        """Load a training state into this run; returns the pass to continue in. Call it last before training:
        it sets the RNGs."""
        where = f"resume file '{saved.get('path', '?')}'"
        if saved["world_size"] != self.dist_info.world_size:
            raise UserError(f"{where} was saved by {saved['world_size']} processes but this run has "
                            f"{self.dist_info.world_size}: resume with the same --nproc-per-node")
        if saved["total_steps"] != state.total_steps:
            raise UserError(f"{where} planned {saved['total_steps']} steps but this run plans {state.total_steps}: "
                            f"the dataset changed since the checkpoint")
        if len(saved["optimizers"]) != len(state.optimizers):
            raise UserError(f"{where} has {len(saved['optimizers'])} optimizers but this run has {len(state.optimizers)}")
        load_weights_state(state.model, saved["model"], where)
        try:
            for optimizer, optimizer_state in zip(state.optimizers, saved["optimizers"]):
                optimizer.load_state_dict(optimizer_state)
                for param, values in optimizer.state.items():  # step counters stay on the parameter's device
                    for key, value in values.items():
                        if isinstance(value, torch.Tensor) and value.device != param.device:
                            values[key] = value.to(param.device)
        except ValueError as e:
            raise UserError(f"{where}: optimizer state does not fit this model: {e}") from None
        if ema is not None:
            ema.load_state_dict({k: v.to(device) for k, v in saved["ema"].items()})
        self.kept_weights = list(saved.get("kept_weights", []))
        mine = saved["ranks"][self.dist_info.rank]
        state.step = saved["step"]
        sampler.load_state_dict(mine["sampler"])
        state.carry = restore_carry(state.model, mine["carry"], device)
        restore_rng(mine["rng"], device)
        return saved["next_iter"]


def load_weights_state(head: nn.Module, weights: Dict[str, torch.Tensor], where: str) -> None:
    """The raw weights of a training state: exactly this model's keys and shapes."""
    module = unwrap(head)
    problem = mismatch(module.state_dict(), weights)
    if problem:
        raise UserError(f"{where}: {problem}")
    module.load_state_dict(weights)
