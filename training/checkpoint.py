"""Checkpoints. `<run dir>/step_<N>` is the reference's weights file (SPEC §9; EMA weights when `ema`);
`<run dir>/state_<N>.pt` beside it is everything else a run needs to continue exactly: raw weights, both
optimizers, the EMA shadow, step, sampler position, RNG states and ACT carry of every rank, W&B run id and the
resolved config. Files are written atomically and read with `torch.load(weights_only=True)`; a file that cannot be
used is reported in one line (ConfigError) before training starts."""
import dataclasses
import json
import os
import random
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from models.checkpoint_io import COMPILED_PREFIX, load_reference_checkpoint
from training.config import ConfigError, PretrainConfig, validate_config
from training.tracking import METRICS_FILE

STATE_FORMAT = "trm-training-state/1"
STATE_FILE = re.compile(r"^state_(\d+)\.pt$")
WEIGHTS_FILE = re.compile(r"^step_(\d+)$")
# Keys a resumed run may not change: the saved weights, optimizer and sampler position would no longer fit.
FIXED_ON_RESUME = ("arch", "data_paths", "global_batch_size", "epochs", "eval_interval", "seed", "ema", "freeze_weights")


def unwrap(head: nn.Module) -> nn.Module:
    return getattr(head, "_orig_mod", head)  # torch.compile


def weights_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step}")


def state_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"state_{step}.pt")


# ------------------------------------------------------------------ atomic files
def fsync_dir(directory: str) -> None:
    """Make a rename durable (POSIX); platforms that cannot open directories skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> str:
    """Write to a temporary file in the same directory, fsync, rename over `path`, fsync the directory: a crash at
    any moment leaves either the old file or the new one under `path`, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)
    return path


def remove_stale_temporaries(directory: str) -> None:
    """Temporary files left by a process killed mid-save are never read; drop them."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(".") and ".tmp." in name and (name[1:].startswith("step_") or name[1:].startswith("state_")):
                os.remove(os.path.join(directory, name))


def read_checkpoint_file(path: str, what: str, mmap: bool = False) -> Dict[str, Any]:
    """torch.load(weights_only=True) of a dict, or one ConfigError line naming the file and the problem. `mmap`:
    tensors stay views of the file (pages read when used, shared between the processes of a node)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} '{path}' not found: give an existing file (<run dir>/step_<N> or state_<N>.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        text = str(e).strip()
        # torch words its refusal "Unsupported global: GLOBAL x" or (2.13) "unsupported GLOBAL x whose module ..."
        refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if refused:
            reason = (f"it holds a Python object ({refused.group(1)}) that safe loading refuses; only tensors and plain "
                      f"containers load (weights_only=True)")
        else:  # the reason, not torch's paragraph about weights_only around it
            lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in text.splitlines()
                     if not line.startswith(("Weights only load failed", "Check the documentation"))]
            detail = next((line.split(". ")[0][:200] for line in lines if line), "no detail")
            reason = f"truncated or corrupt ({type(e).__name__}: {detail})"
        raise ConfigError(f"{what} '{path}' cannot be loaded: {reason}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def read_weights_file(path: str, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """A weights file (step_<N>): read_checkpoint_file, and every value a tensor."""
    state = read_checkpoint_file(path, what)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what} '{path}' is not a weights file (a dict of tensors): give <run dir>/step_<N>")
    return state


# ------------------------------------------------------------------ weights (reference layout)
def reference_state_dict(head: nn.Module, ema_shadow: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The loss head's weights keyed as the reference's compiled model saves them; the EMA shadow, when given,
    replaces the trained parameters (SPEC §6: saved weights are the EMA copy)."""
    state = dict(unwrap(head).state_dict())
    state.update(ema_shadow or {})
    return {COMPILED_PREFIX + k: v.detach().cpu() for k, v in state.items()}


def save_weights(head: nn.Module, checkpoint_dir: str, step: int,
                 ema_shadow: Optional[Dict[str, torch.Tensor]] = None) -> str:
    return atomic_torch_save(reference_state_dict(head, ema_shadow), weights_path(checkpoint_dir, step))


def load_weights_file(head: nn.Module, path: str, what: str = "load_checkpoint") -> None:
    """`load_checkpoint=FILE`: weights only, like the reference (prefix-insensitive; a puzzle table of another size
    starts from its mean row). A training state file gives its raw weights."""
    state = read_checkpoint_file(path, what)
    if state.get("format") == STATE_FORMAT:
        state = state["model"]
    try:
        load_reference_checkpoint(head, state)
    except ValueError as e:
        raise ConfigError(f"{what} '{path}': {e}") from None


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
            raise ConfigError(f"saved {where} has shape {tuple(plain.shape)} but this run needs {tuple(template.shape)}")
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


def gather_to_main(obj: Any, dist_info) -> Optional[List[Any]]:
    """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
    if dist_info.world_size == 1:
        return [obj]
    gathered = [None] * dist_info.world_size if dist_info.is_main else None
    dist.gather_object(obj, gathered, dst=0, group=dist_info.cpu_group)
    return gathered


# ------------------------------------------------------------------ finding a checkpoint to resume
def _states_in(directory: str) -> Dict[int, str]:
    if not os.path.isdir(directory):
        return {}
    return {int(m.group(1)): os.path.join(directory, name) for name in os.listdir(directory)
            if (m := STATE_FILE.match(name)) and os.path.isfile(os.path.join(directory, name))}


def find_state_file(resume: str, project_dir: str) -> str:
    """`resume=`: a state_<N>.pt or step_<N> file, a run directory (its highest step), a directory of runs or
    `latest` (the run under `project_dir` whose newest state was written last)."""
    path = project_dir if resume == "latest" else resume
    if os.path.isfile(path):
        m = WEIGHTS_FILE.match(os.path.basename(path))
        if m:
            path = state_path(os.path.dirname(path), int(m.group(1)))
            if not os.path.isfile(path):
                raise ConfigError(f"resume: no training state '{path}' beside the weights file: resume needs a full "
                                  f"checkpoint; to start a new run from these weights use +load_checkpoint=<file>")
        return path
    if not os.path.isdir(path):
        raise ConfigError(f"resume={resume}: '{path}' not found: give a run directory, a state_<N>.pt file or latest "
                          f"(the newest run under +checkpoint_path=, else under checkpoints/<project_name>/)")
    states = _states_in(path)
    if not states:
        runs = [os.path.join(path, d) for d in os.listdir(path) if _states_in(os.path.join(path, d))]
        if not runs:
            raise ConfigError(f"resume={resume}: no training state (state_<N>.pt) in '{path}' or its sub-directories")
        newest = max(runs, key=lambda d: max(os.path.getmtime(p) for p in _states_in(d).values()))
        states = _states_in(newest)
    return states[max(states)]


def read_training_state(path: str) -> Dict[str, Any]:
    # Memory-mapped: the N ranks of a node share one copy in the page cache instead of holding N.
    state = read_checkpoint_file(path, "resume file", mmap=True)
    if state.get("format") != STATE_FORMAT:
        raise ConfigError(f"resume file '{path}' is not a training state ({STATE_FORMAT}); a weights-only file "
                          f"starts a new run with +load_checkpoint=<file>")
    missing = [k for k in ("step", "model", "optimizers", "ranks", "config") if k not in state]
    if missing:
        raise ConfigError(f"resume file '{path}' lacks {', '.join(missing)}: it is incomplete")
    state["path"] = path
    return state


def override_keys(overrides: Sequence[str]) -> List[str]:
    """Keys set on the command line (Hydra syntax), e.g. ['lr', 'arch.hidden_size']."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_delete()]


def _fixed_view(config: PretrainConfig, key: str) -> Any:
    value = getattr(config, key)
    if key == "arch":  # the forward dtype may change between machines (e.g. a GPU run continued on CPU)
        return {k: v for k, v in value.model_dump().items() if k != "forward_dtype"}
    return value


def resumed_config(saved: Dict[str, Any], command_line: Dict[str, Any], overrides: Sequence[str],
                   path: str) -> PretrainConfig:
    """The saved run's config, with the keys given on this command line on top; keys that would not fit the
    saved state (FIXED_ON_RESUME) must stay as they were."""
    saved = {**saved, "load_checkpoint": None}  # a resumed run's weights come from its state
    merged = OmegaConf.create(saved)
    merged.checkpoint_path = os.path.dirname(path)  # the run continues where its state is, even if moved
    given = OmegaConf.create(command_line)
    for key in override_keys(overrides):
        if key == "resume" or key.split(".")[0] in ("experiment", "hydra"):
            continue
        value = OmegaConf.select(given, key, default=None, throw_on_missing=False)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    raw = OmegaConf.to_container(merged, resolve=True)
    raw["resume"] = path
    config = validate_config(raw).fill_defaults()
    before = validate_config(saved)
    changed = [k for k in FIXED_ON_RESUME if _fixed_view(config, k) != _fixed_view(before, k)]
    if changed:
        k = changed[0]
        raise ConfigError(f"resume: {describe_change(k, _fixed_view(before, k), _fixed_view(config, k))} since '{path}'; "
                          f"{', '.join(changed)} cannot change when resuming (start a new run with +load_checkpoint=... instead)")
    return config


def describe_change(key: str, before: Any, after: Any) -> str:
    """`arch.hidden_size was 32, now 64`: only the entries that differ, not whole dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        return "; ".join(f"{key}.{k} was {before.get(k)!r}, now {after.get(k)!r}"
                         for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
    return f"{key} was {before!r}, now {after!r}"


def older_intact_state(path: str) -> Optional[str]:
    """The newest training state beside `path` with a lower step that loads, or None."""
    m = STATE_FILE.match(os.path.basename(path))
    step = int(m.group(1)) if m else None
    for older in sorted((s for s in _states_in(os.path.dirname(path)) if step is None or s < step), reverse=True):
        candidate = state_path(os.path.dirname(path), older)
        try:
            read_training_state(candidate)
        except ConfigError:
            continue
        return candidate
    return None


def prepare_resume(command_line: Dict[str, Any], overrides: Sequence[str]) -> Tuple[PretrainConfig, Dict[str, Any]]:
    """Find and read the checkpoint `resume=` names; return the run's config and its training state. `latest`
    looks under the run's own +checkpoint_path= when one is given."""
    config = validate_config(command_line)
    runs_dir = config.checkpoint_path or os.path.join("checkpoints", config.fill_defaults().project_name)
    path = os.path.abspath(find_state_file(config.resume, runs_dir))
    try:
        state = read_training_state(path)
    except ConfigError as e:
        older = older_intact_state(path)
        if older is None:
            raise
        raise ConfigError(f"{e}; an older state loads: continue from it with resume={older}") from None
    return resumed_config(state["config"], command_line, overrides, path), state


def logged_step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):  # a line cut short by a crash
        return None


def rewind_metrics(run_dir: str, step: int) -> None:
    """Records logged after the checkpoint (by a run that crashed later) move to metrics.after_crash.jsonl, so
    metrics.jsonl reads as if the run had never stopped."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    steps = [logged_step(line) for line in lines]
    keep = [line for line, s in zip(lines, steps) if s is not None and s <= step]
    if len(keep) == len(lines):
        return
    with open(os.path.join(run_dir, "metrics.after_crash.jsonl"), "a") as f:
        f.writelines(line for line, s in zip(lines, steps) if s is None or s > step)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    def save(self, state, ema, sampler, config: PretrainConfig, run_id: Optional[str], next_iter: int,
             device: torch.device, keep_weights: bool = False) -> Optional[str]:
        """`next_iter`: the eval_interval pass to continue in (the current one when saved mid-pass)."""
        parts = gather_to_main({"sampler": sampler.state_dict(), "rng": capture_rng(device), "carry": to_plain(state.carry)},
                               self.dist_info)
        if not self.dist_info.is_main:
            return None
        if keep_weights and state.step not in self.kept_weights:
            self.kept_weights.append(state.step)
        head = unwrap(state.head)
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
        steps = sorted(s for s in _states_in(self.directory) if s <= current_step)
        for step in steps[:-self.keep] if self.keep > 0 else steps:
            os.remove(state_path(self.directory, step))
            if step not in self.kept_weights and os.path.isfile(weights_path(self.directory, step)):
                os.remove(weights_path(self.directory, step))

    def restore(self, saved: Dict[str, Any], state, ema, sampler, device: torch.device) -> int:
        """Load a training state into this run; returns the pass to continue in. Call it last before training:
        it sets the RNGs."""
        where = f"resume file '{saved.get('path', '?')}'"
        if saved["world_size"] != self.dist_info.world_size:
            raise ConfigError(f"{where} was saved by {saved['world_size']} processes but this run has "
                              f"{self.dist_info.world_size}: resume with the same --nproc-per-node")
        if saved["total_steps"] != state.total_steps:
            raise ConfigError(f"{where} planned {saved['total_steps']} steps but this run plans {state.total_steps}: "
                              f"the dataset changed since the checkpoint")
        if len(saved["optimizers"]) != len(state.optimizers):
            raise ConfigError(f"{where} has {len(saved['optimizers'])} optimizers but this run has {len(state.optimizers)}")
        load_weights_state(state.head, saved["model"], where)
        try:
            for optimizer, optimizer_state in zip(state.optimizers, saved["optimizers"]):
                optimizer.load_state_dict(optimizer_state)
                for param, values in optimizer.state.items():  # step counters stay on the parameter's device
                    for key, value in values.items():
                        if isinstance(value, torch.Tensor) and value.device != param.device:
                            values[key] = value.to(param.device)
        except ValueError as e:
            raise ConfigError(f"{where}: optimizer state does not fit this model: {e}") from None
        if ema is not None:
            ema.load_state_dict({k: v.to(device) for k, v in saved["ema"].items()})
        self.kept_weights = list(saved.get("kept_weights", []))
        mine = saved["ranks"][self.dist_info.rank]
        state.step = saved["step"]
        sampler.load_state_dict(mine["sampler"])
        state.carry = restore_carry(state.head, mine["carry"], device)
        restore_rng(mine["rng"], device)
        return saved["next_iter"]


def load_weights_state(head: nn.Module, weights: Dict[str, torch.Tensor], where: str) -> None:
    module = unwrap(head)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ConfigError(f"{where} does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if weights[k].shape != v.shape]
    if shapes:
        raise ConfigError(f"{where} has other shapes than the model: {'; '.join(shapes[:3])}")
    module.load_state_dict(weights)
