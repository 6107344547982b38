"""torchrun with Gloo on CPU: 2 processes train exactly like 1 on the same global batch."""
import os
import subprocess

import pytest
import torch

from tests.helpers import ENV, QUIET_ENV, ROOT, build_sudoku4, pretrain_command, read_metrics, tiny_arch

# exploration draws per-rank random numbers; without it the run is deterministic given the weights
TINY = tiny_arch(L_cycles=2, halt_max_steps=3, halt_exploration_prob=0.0)


@pytest.fixture(scope="module")
def small_sudoku4(tmp_path_factory):
    """Fewer puzzles than the shared sudoku4: two epochs on 1 and on 2 ranks stay short."""
    return build_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", n_train=64, n_test=16, num_aug=3, seed=2)


def train(nproc, data, ckpt, extra=()):
    args = [f"data_paths=[{data}]", "evaluators=[]", "global_batch_size=16", "epochs=2", "eval_interval=2",
            "lr=1e-3", "lr_warmup_steps=2", "device=cpu", f"+checkpoint_path={ckpt}", *TINY, *extra]
    return subprocess.run(pretrain_command(args, nproc), cwd=ckpt.parent, env=QUIET_ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_two_processes_match_one(small_sudoku4, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for nproc, ckpt in ((1, one), (2, two)):
        result = train(nproc, small_sudoku4, ckpt)
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
    losses = [[record.get("train/lm_loss") for record in read_metrics(d)] for d in (one, two)]
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
def test_local_multirun_sweep_runs_each_point(small_sudoku4, tmp_path):
    sweep = ["-m", "arch.L_cycles=1,2", f"data_paths=[{small_sudoku4}]", "evaluators=[]", "global_batch_size=16",
             "epochs=1", "eval_interval=1", "device=cpu", *TINY[:3]]
    result = subprocess.run(pretrain_command(sweep), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "checkpoints").glob("*/*/all_config.yaml"))
    assert sorted(r.read_text().count("L_cycles: 1") + 2 * r.read_text().count("L_cycles: 2") for r in runs) == [1, 2]
