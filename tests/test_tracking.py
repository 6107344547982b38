import json
import time

import pytest

from training.config import validate_config
from tests.helpers import read_metrics
from training.tracking import Tracker, flatten_metrics, resolve_wandb_mode


def _config(mode, tmp_path):
    return validate_config({
        "arch": {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", "loss": {"name": "losses@ACTLossHead"}},
        "data_paths": ["data/x"], "global_batch_size": 8, "epochs": 2, "eval_interval": 1, "lr": 1e-4,
        "lr_min_ratio": 1.0, "lr_warmup_steps": 0, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1,
        "puzzle_emb_weight_decay": 0.1, "puzzle_emb_lr": 1e-2, "wandb": {"mode": mode},
        "checkpoint_path": str(tmp_path)}).fill_defaults()


def test_flatten_metrics_nests_with_slashes():
    assert flatten_metrics({"test": {"accuracy": 0.5}, "ARC/pass@2": 1}) == {"test/accuracy": 0.5, "ARC/pass@2": 1.0}


def test_auto_mode_without_account_is_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"


@pytest.mark.slow
def test_offline_run_leaves_a_run_directory_with_the_metrics(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = Tracker(_config("offline", tmp_path), str(tmp_path))
    tracker.log({"train/lm_loss": 1.5}, step=1)
    tracker.log({"test": {"exact_accuracy": 0.25}}, step=2)
    run_id = tracker.run_id
    tracker.finish()
    run_dirs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.wandb"))
    # the offline history file holds the logged values (W&B's service process may still be flushing it)
    history_file = run_dirs[0] / f"run-{run_id}.wandb"
    for _ in range(100):
        history = history_file.read_bytes()
        if b"train/lm_loss" in history and b"test/exact_accuracy" in history:
            break
        time.sleep(0.1)
    assert b"train/lm_loss" in history and b"test/exact_accuracy" in history
    lines = read_metrics(tmp_path)
    assert lines == [{"step": 1, "train/lm_loss": 1.5}, {"step": 2, "test/exact_accuracy": 0.25}]


def test_disabled_writes_only_jsonl(tmp_path):
    tracker = Tracker(_config("disabled", tmp_path), str(tmp_path))
    tracker.log({"a": 1}, step=3)
    tracker.finish()
    assert not (tmp_path / "wandb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "a": 1.0}


def test_metrics_file_stays_open_and_is_written_through_on_flush_interval_and_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(Tracker, "FLUSH_SECONDS", 3600.0)
    tracker = Tracker(_config("disabled", tmp_path), str(tmp_path))
    path = tmp_path / "metrics.jsonl"
    tracker.log({"a": 1}, step=1)
    assert path.read_text() == "", "no write per step"
    tracker.flush()  # pretrain.py flushes before each checkpoint
    assert json.loads(path.read_text()) == {"step": 1, "a": 1.0}
    tracker.log({"a": 2}, step=2)
    monkeypatch.setattr(Tracker, "FLUSH_SECONDS", 0.0)
    tracker.log({"a": 3}, step=3)  # the interval has passed
    assert [record["step"] for record in read_metrics(tmp_path)] == [1, 2, 3]
    monkeypatch.setattr(Tracker, "FLUSH_SECONDS", 3600.0)
    tracker.log({"a": 4}, step=4)
    tracker.finish()
    assert len(path.read_text().splitlines()) == 4
