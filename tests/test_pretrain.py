"""pretrain.py end to end on CPU: a tiny run learns, the paper's command lines build, bad input fails early."""
import re
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dataset.format import PuzzleDatasetMetadata
from models.build import build_loss_head
from training.config import validate_config
from tests.helpers import ENV, ROOT, pretrain_command, read_metrics, tiny_arch

TINY_ARCH = tiny_arch(L_cycles=2, halt_max_steps=2)


def run_pretrain(args, cwd, timeout=600):
    return subprocess.run(pretrain_command(args), cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_tiny_run_trains_and_its_loss_falls(sudoku4, tmp_path):
    ckpt = tmp_path / "ckpt"
    result = run_pretrain([f"data_paths=[{sudoku4}]", "evaluators=[]", "global_batch_size=32", "epochs=8",
                           "eval_interval=4", "lr=1e-3", "puzzle_emb_lr=1e-2", "lr_warmup_steps=5",
                           "device=cpu", f"+checkpoint_path={ckpt}", "arch.mlp_t=True", "arch.pos_encodings=none",
                           *TINY_ARCH], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(ckpt)
    losses = [r["train/lm_loss"] for r in records if "train/lm_loss" in r]
    assert len(losses) >= 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    evals = [r for r in records if "all/exact_accuracy" in r]
    assert len(evals) == 2, "one evaluation per eval_interval"
    assert "[eval @ step" in result.stdout + result.stderr
    # a reference-layout weights file per evaluation, and the run's config and model source beside it
    steps = sorted(p.name for p in ckpt.glob("step_*"))
    assert len(steps) == 2
    state = torch.load(ckpt / steps[-1], weights_only=True)
    assert all(k.startswith("_orig_mod.model.inner.") for k in state)
    assert (ckpt / "all_config.yaml").exists() and (ckpt / "trm.py").exists()


@pytest.mark.slow
def test_compiled_run_says_it_compiles_how_long_it_took_and_its_threads(sudoku4, tmp_path):
    env = dict(ENV, DISABLE_COMPILE="0", OMP_NUM_THREADS="1")
    result = subprocess.run(pretrain_command([f"data_paths=[{sudoku4}]", "evaluators=[]", "global_batch_size=32", "epochs=2",
                                              "eval_interval=2", "device=cpu", "compile=True",
                                              f"+checkpoint_path={tmp_path / 'ckpt'}", *TINY_ARCH]),
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "torch.compile: the model compiles on its first steps" in out
    assert re.search(r"torch\.compile: the training step compiled and ran in \d+ s", out)
    assert "threads 1 (OMP_NUM_THREADS)" in out


def test_unknown_key_fails_before_training_with_one_line(tmp_path):
    result = run_pretrain(["+data_pathz=[x]"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown config key 'data_pathz': remove it or check its spelling (see config/cfg_pretrain.yaml)"


def test_missing_dataset_fails_with_one_line(tmp_path):
    result = run_pretrain(["data_paths=[data/nowhere]"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset 'data/nowhere' not found" in lines[0]


def test_bad_arch_fails_with_one_line(sudoku4, tmp_path):
    result = run_pretrain([f"data_paths=[{sudoku4}]", "arch.hidden_size=30", "arch.num_heads=4"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hidden_size" in lines[0] and "num_heads" in lines[0]


REFERENCE_COMMAND_LINES = {
    "sudoku_mlp": (["arch=trm", "evaluators=[]", "epochs=50000", "eval_interval=5000", "lr=1e-4", "puzzle_emb_lr=1e-4",
                    "weight_decay=1.0", "puzzle_emb_weight_decay=1.0", "arch.mlp_t=True", "arch.pos_encodings=none",
                    "arch.L_layers=2", "arch.H_cycles=3", "arch.L_cycles=6", "+run_name=x", "ema=True"], 81, 11),
    "arc": (["arch=trm", "arch.L_layers=2", "arch.H_cycles=3", "arch.L_cycles=4", "+run_name=x", "ema=True"], 900, 12),
    "hrm": (["arch=hrm"], 900, 12),
    "baseline": (["arch=transformers_baseline"], 81, 11),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COMMAND_LINES))
def test_reference_command_lines_build_their_models(name):
    overrides, seq_len, vocab = REFERENCE_COMMAND_LINES[name]
    tiny = ["arch.hidden_size=32", "arch.num_heads=2", "arch.forward_dtype=float32", "global_batch_size=4"]
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        raw = OmegaConf.to_container(compose("cfg_pretrain", overrides=overrides + tiny), resolve=True)
    config = validate_config(raw)
    metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                                     num_puzzle_identifiers=3, total_groups=1, mean_puzzle_examples=1, total_puzzles=1, sets=["all"])
    head = build_loss_head(config.arch, metadata, config.global_batch_size, forward_dtype="float32")
    batch = {"inputs": torch.randint(0, vocab, (4, seq_len), dtype=torch.int32),
             "labels": torch.randint(0, vocab, (4, seq_len), dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(4, dtype=torch.int32)}
    carry = head.initial_carry(batch)
    _, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits"])
    assert outputs["logits"].shape == (4, seq_len, vocab) and torch.isfinite(loss)


def test_a_missing_dataset_is_built_where_the_run_looks_for_it(tmp_path, monkeypatch):
    """data_build runs the builder from the repository; the dataset must still land relative to the caller."""
    from training.builders import ensure_dataset
    build = "data_build={module: dataset.build_sudoku_dataset, args: [--size, '4', --generate, '12', --generate-test, '4']}"
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        raw = OmegaConf.to_container(compose("cfg_pretrain", overrides=["data_paths=[data/built]", "evaluators=[]", build]),
                                     resolve=True)
    config = validate_config(raw)
    monkeypatch.chdir(tmp_path)
    ensure_dataset(config)
    assert (tmp_path / "data" / "built" / "train" / "dataset.json").is_file()
    assert not (ROOT / "data" / "built").exists()
