"""Metrics go to Weights & Biases (online, offline or disabled) and always to metrics.jsonl, which a resumed run
first rewinds to its checkpoint."""
import json
import math
import os
import shlex
import time
from typing import Any, Dict, Optional

import numpy as np

METRICS_FILE = "metrics.jsonl"   # every logged metric of a run, one JSON object per line


def wandb_logged_in() -> bool:
    """True when an API key is configured (env, netrc or settings); makes no network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.apis import InternalApi
        return bool(InternalApi().api_key)
    except Exception:
        return False


def resolve_wandb_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    return mode


def flatten_metrics(metrics: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """{'test': {'accuracy': 0.5}} -> {'test/accuracy': 0.5}, numbers as Python floats."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        else:
            flat[name] = float(value.item() if hasattr(value, "item") else value)
    return flat


class Tracker:
    """Rank 0's logger. `run_id` continues an earlier W&B run (resume). metrics.jsonl stays open and is written
    through every FLUSH_SECONDS, on flush() (checkpoints call it, so a crash loses no record a resume keeps) and at
    finish()."""
    FLUSH_SECONDS = 2.0

    def __init__(self, config, run_dir: str, run_id: Optional[str] = None):
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl_path = os.path.join(run_dir, METRICS_FILE)
        self._jsonl = open(self.jsonl_path, "a")
        self._flushed_at = time.monotonic()
        self.mode = resolve_wandb_mode(config.wandb.mode)
        self.run = None
        if self.mode != "disabled":
            import wandb
            kwargs = dict(project=config.project_name, name=config.run_name, entity=config.wandb.entity, group=config.wandb.group,
                          tags=config.wandb.tags, dir=run_dir, config=config.model_dump(),
                          id=run_id, resume="allow" if run_id else None,
                          settings=wandb.Settings(silent=True, init_timeout=60))
            try:
                self.run = wandb.init(mode=self.mode, **kwargs)
            except Exception as e:  # e.g. logged in but offline: keep the run, log locally
                if self.mode != "online":
                    raise
                print(f"W&B online init failed ({type(e).__name__}: {e}); logging offline into {run_dir}")
                self.mode = "offline"
                self.run = wandb.init(mode="offline", **kwargs)
            if self.mode == "offline":
                where = os.path.dirname(self.run.dir)  # <run dir>/wandb/offline-run-*/ (run.dir is its files/)
                print(f"W&B is offline: the run is kept in {where}; upload it later with: wandb sync {shlex.quote(where)}")

    @property
    def run_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        flat = flatten_metrics(metrics)
        self._jsonl.write(json.dumps({"step": step, **{k: (None if math.isnan(v) else v) for k, v in flat.items()}}) + "\n")
        if time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS:
            self.flush()
        if self.run is not None:
            self.run.log(flat, step=step)

    def flush(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.flush()
        self._flushed_at = time.monotonic()

    def log_images(self, images: Dict[str, Any], step: int) -> None:
        if self.run is not None:
            import wandb
            self.run.log({k: wandb.Image(np.asarray(v)) for k, v in images.items()}, step=step)

    def summary(self, key: str, value) -> None:
        if self.run is not None:
            self.run.summary[key] = value

    def finish(self) -> None:
        self._jsonl.close()
        if self.run is not None:
            self.run.finish()
            self.run = None


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
