"""Checkpoints: exact resume after SIGTERM or a crash, atomic writes under SIGKILL, reference weights in and out,
fine-tuning with frozen weights, and one clear line for files that cannot be used."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dataset.format import set_array_path
from models.checkpoint_io import atomic_torch_save, remove_stale_temporaries, save_weights
from training.checkpoint import (STATE_FORMAT, capture_rng, find_state_file, load_weights_file, read_training_state,
                                 restore_carry, restore_rng, to_plain)
from training.config import resumed_config
from tests.helpers import QUIET_ENV, ROOT, TINY_ARCH, pretrain_command, read_metrics, tiny_head
from utils.errors import UserError

TINY = ["evaluators=[]", "global_batch_size=32", "epochs=4", "eval_interval=2", "lr=1e-3", "lr_warmup_steps=5",
        "ema=True", "ema_rate=0.9", "device=cpu", *TINY_ARCH]


def pretrain(args, cwd, **kwargs):
    return subprocess.Popen(pretrain_command(args), cwd=cwd, env=QUIET_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_pretrain(args, cwd):
    process = pretrain(args, cwd)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def files(run_dir: Path, prefix: str):
    return sorted(int(p.name.split("_")[1].split(".")[0]) for p in run_dir.glob(f"{prefix}_*") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def uninterrupted(sudoku4, tmp_path_factory):
    """24 steps in two eval_interval passes, no intermediate checkpoints: the reference trajectory."""
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    rc, _, err = run_pretrain([f"data_paths=[{sudoku4}]", *TINY, f"+checkpoint_path={run}"], cwd=run.parent)
    assert rc == 0, err[-3000:]
    return run


def assert_same_weights(a: Path, b: Path):
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_then_resume_equals_the_uninterrupted_run(sudoku4, uninterrupted, tmp_path):
    run = tmp_path / "interrupted"
    process = pretrain([f"data_paths=[{sudoku4}]", *TINY, "checkpoint_interval=5", f"+checkpoint_path={run}"], cwd=tmp_path)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 8) and time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped_at = read_metrics(run)[-1]["step"]
    assert stopped_at < 24 and files(run, "state")[-1] == stopped_at, "the step in progress finishes, then a checkpoint"
    assert f"Stopped by SIGTERM at step {stopped_at}" in out

    rc, out, err = run_pretrain([f"resume={run}"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert f"Resumed {run} at step {stopped_at}" in out
    assert read_metrics(run) == read_metrics(uninterrupted), "losses, accuracies, lr and evaluations equal at every step"
    assert_same_weights(run / "step_24", uninterrupted / "step_24")
    # checkpoint_keep=2: the newest two states; evaluation weights (12, 24) stay, others go with their state
    assert files(run, "state") == [20, 24] and files(run, "step") == [12, 20, 24]


@pytest.mark.slow
def test_resume_after_a_crash_drops_the_lost_steps_and_continues_exactly(uninterrupted, tmp_path):
    run = tmp_path / "crashed"
    shutil.copytree(uninterrupted, run)
    # A crash after step 24's metrics were logged but before its checkpoint: the last state is the evaluation at 12.
    (run / "state_24.pt").unlink()
    (run / "step_24").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "train/lm_')  # killed mid-write
    rc, out, err = run_pretrain([f"resume={run / 'step_12'}"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert read_metrics(run) == read_metrics(uninterrupted)
    assert len((run / "metrics.after_crash.jsonl").read_text().splitlines()) == 14  # steps 13-24, the eval at 24, the cut line
    assert_same_weights(run / "step_24", uninterrupted / "step_24")


@pytest.mark.slow
def test_freeze_weights_fine_tunes_only_a_new_puzzle_table(sudoku4, uninterrupted, tmp_path):
    # The same puzzles, each with its own identifier: 1000 puzzles + blank instead of the blank alone.
    data = tmp_path / "sudoku4_ids"
    shutil.copytree(sudoku4, data)
    ids_path = set_array_path(data / "train", "all", "puzzle_identifiers")
    ids = np.load(ids_path)
    np.save(ids_path, np.arange(1, len(ids) + 1, dtype=ids.dtype))
    (data / "identifiers.json").write_text(json.dumps(["<blank>"] + [f"p{i}" for i in range(1, len(ids) + 1)]))
    for split in ("train", "test"):
        meta = json.loads((data / split / "dataset.json").read_text())
        meta["num_puzzle_identifiers"] = len(ids) + 1
        (data / split / "dataset.json").write_text(json.dumps(meta))
    run = tmp_path / "finetune"
    rc, out, err = run_pretrain([f"data_paths=[{data}]", *TINY, "epochs=1", "eval_interval=1", "ema=False",
                                 "freeze_weights=True", f"+load_checkpoint={uninterrupted / 'step_24'}",
                                 f"+checkpoint_path={run}"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert "initialised with the mean row" in out
    source, tuned = torch.load(uninterrupted / "step_24", weights_only=True), torch.load(run / "step_6", weights_only=True)
    key = "_orig_mod.model.inner.puzzle_emb.weights"
    assert source[key].shape == (1, 32) and tuned[key].shape == (len(ids) + 1, 32)
    assert all(torch.equal(source[k], tuned[k]) for k in source if k != key), "frozen weights did not move"
    trained_rows = (tuned[key] != source[key].mean(0)).any(1)
    assert not trained_rows[0] and trained_rows.sum() > 0, "rows of the batches' puzzles trained, the blank did not"


def test_sigkill_during_a_save_leaves_the_previous_file_loadable(tmp_path):
    target = tmp_path / "state_1.pt"
    writer = ("import sys, torch\nfrom models.checkpoint_io import atomic_torch_save\nbig = torch.zeros(4_000_000)\n"
              "for i in range(1, 10**6):\n    atomic_torch_save({'version': i, 'data': big + i}, sys.argv[1])\n"
              "    print(i, flush=True)\n")
    killed_mid_save = 0
    for attempt in range(8):
        process = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=ROOT, env=QUIET_ENV,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "1"  # one complete version on disk
        time.sleep(0.05 + 0.03 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait()
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".state_1.pt.tmp.")]
        killed_mid_save += bool(leftovers)
        saved = torch.load(target, weights_only=True)
        assert saved["version"] >= 1 and torch.equal(saved["data"], torch.full((4_000_000,), float(saved["version"])))
        remove_stale_temporaries(str(tmp_path))
        assert [p.name for p in tmp_path.iterdir()] == ["state_1.pt"]
        if killed_mid_save >= 2:
            break
    assert killed_mid_save >= 1, "no kill landed inside a save; the test proved nothing"


def test_reference_layout_files_load_and_ours_are_reference_layout(tmp_path):
    torch.manual_seed(0)
    source = tiny_head()
    with torch.no_grad():
        source.model.inner.puzzle_emb.weights.normal_()
    torch.save({"_orig_mod." + k: v for k, v in source.state_dict().items()}, tmp_path / "step_7")
    target = tiny_head()
    load_weights_file(target, str(tmp_path / "step_7"))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())

    shadow = {"model.inner.lm_head.weight": torch.zeros_like(source.model.inner.lm_head.weight)}
    path = save_weights(source, str(tmp_path / "out"), 3, ema_shadow=shadow)
    written = torch.load(path, weights_only=True)
    assert path.endswith("step_3") and all(k.startswith("_orig_mod.model.inner.") for k in written)
    assert torch.equal(written["_orig_mod.model.inner.lm_head.weight"], shadow["model.inner.lm_head.weight"])


class Opaque:
    pass


def test_unusable_files_give_one_line_naming_the_file_and_the_problem(tmp_path):
    good = tmp_path / "step_1"
    torch.save({"_orig_mod." + k: v for k, v in tiny_head().state_dict().items()}, good)
    data = good.read_bytes()
    (tmp_path / "truncated").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage").write_bytes(b"not a checkpoint at all")
    torch.save({"x": Opaque()}, tmp_path / "pickled_object")
    torch.save([torch.zeros(1)], tmp_path / "a_list")
    torch.save({"_orig_mod." + k: v for k, v in tiny_head(hidden_size=32).state_dict().items()}, tmp_path / "wider")
    renamed = {("_orig_mod.model.inner.z_init" if k == "model.inner.H_init" else "_orig_mod." + k): v
               for k, v in tiny_head().state_dict().items()}
    torch.save(renamed, tmp_path / "other_keys")
    cases = {"truncated": "cannot be loaded: truncated or corrupt", "garbage": "cannot be loaded: truncated or corrupt",
             "pickled_object": "Python object (test_checkpoint_resume.Opaque) that safe loading refuses", "a_list": "holds a list, not a state dict",
             "wider": "shapes differ from the model (check the arch.* sizes): model.inner.H_init (32,) vs (16,)",
             "other_keys": "missing keys ['model.inner.H_init'], unexpected keys ['model.inner.z_init']",
             "nowhere": "not found"}
    for name, problem in cases.items():
        with pytest.raises(UserError) as info:
            load_weights_file(tiny_head(), str(tmp_path / name))
        message = str(info.value)
        assert "\n" not in message and f"'{tmp_path / name}'" in message and problem in message, message


@pytest.mark.slow
def test_pretrain_reports_a_truncated_file_in_one_line_before_training(sudoku4, uninterrupted, tmp_path):
    truncated = tmp_path / "state_12.pt"
    data = (uninterrupted / "state_12.pt").read_bytes()
    truncated.write_bytes(data[:len(data) // 3])
    for args in ([f"resume={truncated}"], [f"data_paths=[{sudoku4}]", *TINY, f"+load_checkpoint={truncated}",
                                           f"+checkpoint_path={tmp_path / 'new'}"]):
        rc, out, err = run_pretrain(args, cwd=tmp_path)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
        assert err.startswith("error: ") and f"'{truncated}' cannot be loaded: truncated or corrupt" in err
        assert not (tmp_path / "new" / "metrics.jsonl").exists()


def test_carry_and_rngs_survive_a_weights_only_file(tmp_path):
    torch.manual_seed(0)
    head = tiny_head()
    head.train()
    batch = {"inputs": torch.randint(0, 5, (3, 4), dtype=torch.int32), "labels": torch.randint(0, 5, (3, 4), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 2, 3], dtype=torch.int32)}
    carry, *_ = head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    path = atomic_torch_save({"carry": to_plain(carry), "rng": capture_rng(torch.device("cpu"))}, str(tmp_path / "s.pt"))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    saved = torch.load(path, weights_only=True)
    restored = restore_carry(head, saved["carry"], torch.device("cpu"))
    assert type(restored) is type(carry) and type(restored.inner_carry) is type(carry.inner_carry)
    for a, b in zip(to_plain(restored).values(), to_plain(carry).values()):
        assert str(a) == str(b)
    assert torch.equal(restored.inner_carry.z_H, carry.inner_carry.z_H) and torch.equal(restored.steps, carry.steps)
    restore_rng(saved["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_resume_finds_the_run_and_keeps_its_fixed_keys(tmp_path):
    project = tmp_path / "checkpoints" / "P"
    for run, steps in (("old", [5, 10]), ("new", [3])):
        (project / run).mkdir(parents=True)
        for step in steps:
            (project / run / f"state_{step}.pt").write_bytes(b"x")
            (project / run / f"step_{step}").write_bytes(b"x")
    os.utime(project / "old" / "state_10.pt", (1, 1))
    os.utime(project / "old" / "state_5.pt", (1, 1))
    assert find_state_file("latest", str(project)) == str(project / "new" / "state_3.pt")
    assert find_state_file(str(project / "old"), str(project)) == str(project / "old" / "state_10.pt")
    assert find_state_file(str(project / "old" / "step_5"), str(project)) == str(project / "old" / "state_5.pt")
    (project / "old" / "state_5.pt").unlink()
    with pytest.raises(UserError, match="no training state .* beside the weights file"):
        find_state_file(str(project / "old" / "step_5"), str(project))
    with pytest.raises(UserError, match="not found"):
        find_state_file(str(tmp_path / "elsewhere"), str(project))

    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        saved = OmegaConf.to_container(compose("cfg_pretrain", overrides=["data_paths=[d]", "+run_name=r"]), resolve=True)
        cli = OmegaConf.to_container(compose("cfg_pretrain", overrides=["resume=x", "lr=3e-4", "global_batch_size=64"]), resolve=True)
    config = resumed_config(saved, cli, ["resume=x", "lr=3e-4"], str(project / "old" / "state_10.pt"))
    assert config.lr == 3e-4 and config.data_paths == ["d"] and config.run_name == "r"
    assert config.checkpoint_path == str(project / "old")
    with pytest.raises(UserError, match=r"resume: global_batch_size was 768, now 64 since"):
        resumed_config(saved, cli, ["resume=x", "global_batch_size=64"], str(project / "old" / "state_10.pt"))


@pytest.mark.slow
def test_resume_from_a_checkpoint_taken_while_prefetching_equals_the_uninterrupted_run(sudoku4, uninterrupted, tmp_path):
    run = tmp_path / "prefetched"
    rc, _, err = run_pretrain([f"data_paths=[{sudoku4}]", *TINY, "prefetch_batches=3", "checkpoint_interval=5",
                               "checkpoint_keep=null", f"+checkpoint_path={run}"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert read_metrics(run) == read_metrics(uninterrupted), "reading ahead changes no batch"
    # Step 5 is mid-pass (12 steps each) with up to 3 batches read ahead: the state must count the 5 consumed.
    rc, out, err = run_pretrain([f"resume={run / 'state_5.pt'}"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert f"Resumed {run} at step 5" in out
    assert read_metrics(run) == read_metrics(uninterrupted)
    assert_same_weights(run / "step_24", uninterrupted / "step_24")


def mapped_file(address: int):
    """The file mapped at this address of the process (Linux /proc/self/maps), or None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_training_state_is_read_memory_mapped(tmp_path):
    path = atomic_torch_save({"format": STATE_FORMAT, "step": 1, "model": {"w": torch.arange(6.0)}, "optimizers": [],
                              "ranks": [], "config": {}}, str(tmp_path / "state_1.pt"))
    state = read_training_state(path)
    assert torch.equal(state["model"]["w"], torch.arange(6.0))
    assert mapped_file(state["model"]["w"].data_ptr()) == path, "a view of the file, not a private copy"
