"""The checkpoint files: their names, the one safe reader, atomic writes, finding a run's newest file, and the
reference's weights layout (docs/checkpoints.md#reference-weights-file) written and read side by side. A run
directory holds `step_<N>` (the reference's weights file: the loss head's state dict, keys prefixed `_orig_mod.`
as torch.compile's wrapper names them) and, from training, `state_<N>.pt` beside it (training/checkpoint.py)."""
import os
import re
from typing import Any, Dict, Optional, Pattern, Union

import torch
from torch import nn

from utils.errors import MissingFile, UserError

COMPILED_ATTR = "_orig_mod"                 # where torch.compile's wrapper keeps the module
COMPILED_PREFIX = COMPILED_ATTR + "."      # ... and so the prefix of its state dict's keys
PUZZLE_EMB_KEY_SUFFIX = "puzzle_emb.weights"
WEIGHTS_FILE = re.compile(r"^step_(\d+)$")
STATE_FILE = re.compile(r"^state_(\d+)\.pt$")


def unwrap(module: nn.Module) -> nn.Module:
    """The module torch.compile wrapped, or `module` itself."""
    return getattr(module, COMPILED_ATTR, module)


def weights_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step}")


def state_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"state_{step}.pt")


def step_of(path, pattern: Pattern = WEIGHTS_FILE) -> Optional[int]:
    match = pattern.match(os.path.basename(path))
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------ finding files
def files_by_step(directory, pattern: Pattern) -> Dict[int, str]:
    """{step: path} of the files in `directory` named like `pattern` (WEIGHTS_FILE or STATE_FILE)."""
    if not os.path.isdir(directory):
        return {}
    return {int(m.group(1)): os.path.join(directory, name) for name in os.listdir(directory)
            if (m := pattern.match(name)) and os.path.isfile(os.path.join(directory, name))}


def highest_step_file(directory, pattern: Pattern) -> Optional[str]:
    """In a run directory its highest step's file; in a directory of runs (a project under checkpoints/) the highest
    step of the run whose newest such file was written last; None when neither holds one."""
    files = files_by_step(directory, pattern)
    if not files:
        runs = [os.path.join(directory, d) for d in os.listdir(directory) if files_by_step(os.path.join(directory, d), pattern)]
        if not runs:
            return None
        newest = max(runs, key=lambda run: max(os.path.getmtime(p) for p in files_by_step(run, pattern).values()))
        files = files_by_step(newest, pattern)
    return files[max(files)]


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
            saved_as = name[1:].split(".tmp.")[0]  # atomic_torch_save's `.<name>.tmp.<pid>`
            if name.startswith(".") and ".tmp." in name and (WEIGHTS_FILE.match(saved_as) or STATE_FILE.match(saved_as)):
                os.remove(os.path.join(directory, name))


# ------------------------------------------------------------------ the safe reader
def read_checkpoint_file(path: str, what: str, mmap: bool = False) -> Dict[str, Any]:
    """torch.load(weights_only=True) of a dict, or one UserError line naming the file and the problem. `mmap`:
    tensors stay views of the file (pages read when used, shared between the processes of a node)."""
    if not os.path.isfile(path):
        raise MissingFile(f"{what} '{path}' not found: give an existing file (<run dir>/step_<N> or state_<N>.pt)")
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
        raise UserError(f"{what} '{path}' cannot be loaded: {reason}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def read_weights_file(path: str, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """A weights file (step_<N>): read_checkpoint_file, and every value a tensor."""
    state = read_checkpoint_file(path, what)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} '{path}' is not a weights file (a dict of tensors): give <run dir>/step_<N>")
    return state


# ------------------------------------------------------------------ the reference layout: written, read
def reference_state_dict(head: nn.Module, ema_shadow: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The loss head's weights keyed as the reference's compiled model saves them; the EMA shadow, when given,
    replaces the trained parameters (docs/network.md#ema: saved weights are the EMA copy)."""
    state = dict(unwrap(head).state_dict())
    state.update(ema_shadow or {})
    return {COMPILED_PREFIX + k: v.detach().cpu() for k, v in state.items()}


def save_weights(head: nn.Module, checkpoint_dir: str, step: int,
                 ema_shadow: Optional[Dict[str, torch.Tensor]] = None) -> str:
    return atomic_torch_save(reference_state_dict(head, ema_shadow), weights_path(checkpoint_dir, step))


def strip_compiled_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}


def mismatch(own: Dict[str, torch.Tensor], state_dict: Dict[str, torch.Tensor], strict: bool = True) -> Optional[str]:
    """Why `state_dict` does not load into a module whose state dict is `own`, or None when it does."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        return (f"checkpoint does not match the model (another arch or size?): missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    bad_shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state_dict and state_dict[k].shape != own[k].shape]
    if bad_shapes:
        return f"checkpoint shapes differ from the model (check the arch.* sizes): {'; '.join(bad_shapes[:3])}"
    return None


def load_reference_checkpoint(head: nn.Module, source: Union[str, Dict[str, torch.Tensor]], strict: bool = True) -> None:
    """Load a reference-layout state dict (a file path or a dict) into `head` (an ACTLossHead, compiled or not);
    a mismatch is a UserError.

    A puzzle-embedding table with another number of puzzles (fine-tuning on new puzzles) is replaced by its
    mean row, broadcast to this model's table (docs/checkpoints.md#fine-tuning-on-new-puzzles)."""
    state_dict = strip_compiled_prefix(read_weights_file(source) if isinstance(source, str) else source)
    module = unwrap(head)
    own = module.state_dict()
    for key, value in list(state_dict.items()):
        if (key.endswith(PUZZLE_EMB_KEY_SUFFIX) and key in own and value.shape != own[key].shape
                and value.shape[1:] == own[key].shape[1:]):
            print(f"Puzzle embedding {tuple(value.shape)} -> {tuple(own[key].shape)}: initialised with the mean row")
            state_dict[key] = value.mean(dim=0, keepdim=True).expand(own[key].shape).contiguous()
    problem = mismatch(own, state_dict, strict)
    if problem:
        raise UserError(problem)
    module.load_state_dict(state_dict, strict=strict)


def grow_puzzle_embedding(state_dict: Dict[str, torch.Tensor], rows: int) -> Dict[str, torch.Tensor]:
    """A copy of `state_dict` whose puzzle-embedding table has `rows` rows: its own rows unchanged (bit for bit),
    the new ones its mean row, as the reference initialises a fine-tuned table
    (docs/checkpoints.md#fine-tuning-on-new-puzzles), so adaptation to new tasks keeps what the old ones learnt."""
    grown = dict(state_dict)
    keys = [k for k in state_dict if k.endswith(PUZZLE_EMB_KEY_SUFFIX)]
    if not keys:
        raise UserError("the checkpoint has no puzzle-embedding table (arch.puzzle_emb_ndim=0): there are no rows to grow")
    for key in keys:
        table = state_dict[key]
        if rows < table.shape[0]:
            raise UserError(f"{key} has {table.shape[0]} rows, more than the {rows} asked for: a table only grows")
        mean = table.mean(dim=0, keepdim=True)  # as load_reference_checkpoint computes it
        grown[key] = torch.cat([table, mean.expand(rows - table.shape[0], -1)]).contiguous()
    return grown


def puzzle_table_rows(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    """Rows of the puzzle-embedding table (None: the model has none)."""
    return next((v.shape[0] for k, v in state_dict.items() if k.endswith(PUZZLE_EMB_KEY_SUFFIX)), None)
