"""torchrun with Gloo on CPU: 2 processes train exactly like 1 on the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, build_sudoku4

TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.expansion=2", "arch.puzzle_emb_ndim=32", "arch.H_cycles=2",
        "arch.L_cycles=2", "arch.halt_max_steps=3", "arch.forward_dtype=float32",
        # exploration draws per-rank random numbers; without it the run is deterministic given the weights
        "arch.halt_exploration_prob=0.0"]


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    return build_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", n_train=64, n_test=16, num_aug=3, seed=2)


def train(nproc, data, ckpt, extra=()):
    env = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1", OMP_NUM_THREADS="1")
    args = [f"data_paths=[{data}]", "evaluators=[]", "global_batch_size=16", "epochs=2", "eval_interval=2",
            "lr=1e-3", "lr_warmup_steps=2", "device=cpu", f"+checkpoint_path={ckpt}", *TINY, *extra]
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / "pretrain.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv_backend=c10d",
               "--rdzv_endpoint=localhost:0", "--nnodes=1", str(ROOT / "pretrain.py"), *args]
    return subprocess.run(cmd, cwd=ckpt.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_match_one(sudoku4, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for nproc, ckpt in ((1, one), (2, two)):
        result = train(nproc, sudoku4, ckpt)
        assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.name for p in one.glob("step_*"))
    assert files and files == sorted(p.name for p in two.glob("step_*"))
    a, b = (torch.load(d / files[-1], weights_only=True) for d in (one, two))
    assert a.keys() == b.keys()
    initial_puzzle_emb = torch.zeros_like(a["_orig_mod.model.inner.puzzle_emb.weights"])
    assert not torch.equal(a["_orig_mod.model.inner.puzzle_emb.weights"], initial_puzzle_emb), "puzzle embeddings trained"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
    # the per-step training losses agree as well
    import json
    losses = [[json.loads(line).get("train/lm_loss") for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert len(losses[0]) == len(losses[1]) > 5
    for x, y in zip(*losses):
        assert (x is None and y is None) or x == pytest.approx(y, rel=1e-4)


@pytest.mark.slow
def test_an_error_on_one_rank_stops_every_rank(tmp_path):
    result = train(2, tmp_path / "missing-dataset", tmp_path / "ckpt")
    assert result.returncode != 0
    assert "dataset" in result.stderr and "not found" in result.stderr


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        cfg = compose("cfg_pretrain", overrides=["hydra/launcher=slurm", "+experiment=arc1", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (2, 4, 4)


def test_slurm_tasks_get_torch_distributed_ranks(monkeypatch):
    from utils.distributed import adopt_slurm_environment
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so the variables the helper exports are removed after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    for key, value in {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_JOB_ID": "42", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(key, value)
    adopt_slurm_environment()
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("5", "1", "8")
    assert os.environ["MASTER_ADDR"] == "gpu03"


@pytest.mark.slow
def test_local_multirun_sweep_runs_each_point(sudoku4, tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1")
    result = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), "-m", "arch.L_cycles=1,2", f"data_paths=[{sudoku4}]",
                             "evaluators=[]", "global_batch_size=16", "epochs=1", "eval_interval=1", "device=cpu", *TINY[:3]],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "checkpoints").glob("*/*/all_config.yaml"))
    assert sorted(r.read_text().count("L_cycles: 1") + 2 * r.read_text().count("L_cycles: 2") for r in runs) == [1, 2]
