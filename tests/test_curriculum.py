"""The depth curriculum (docs/configuration.md#depth-curriculum): the cycle schedule at given steps, the model's
depth switched in place, and a run resumed across a schedule change equal to the uninterrupted one."""
import subprocess

import pytest
import torch
from torch import nn

from tests.helpers import QUIET_ENV, pretrain_command, read_metrics, tiny_arch, tiny_head
from training.curriculum import model_cycles, scheduled_cycles, set_cycles
from utils.errors import UserError


def test_the_cycle_schedule_at_given_steps():
    def at(step, total=100, start=(1, 2), target=(3, 6), until=0.5):
        return scheduled_cycles(step, total, start, target, until)
    assert at(1) == (1, 2)
    assert at(13) == (1, 2) and at(14) == (1, 3)          # L grows by one every 12.5 steps, H every 25
    assert at(26) == (2, 4)
    assert at(50) == (2, 5) and at(51) == (3, 6) and at(100) == (3, 6)
    assert [at(s)[0] for s in range(1, 101)] == sorted(at(s)[0] for s in range(1, 101))  # never shrinks
    assert at(1, until=0.0) == (3, 6)                      # until 0: the arch's depth from the start
    assert at(100, until=1.0) == (2, 5) and at(101, until=1.0) == (3, 6)
    assert at(1, start=(3, 6)) == (3, 6)
    with pytest.raises(UserError, match="deeper than"):
        at(1, start=(4, 1))


def test_set_cycles_changes_the_depth_the_model_runs():
    head = tiny_head()
    assert model_cycles(head) == (1, 1)
    calls = []
    net = head.model.inner.L_level
    net.register_forward_hook(lambda *a: calls.append(1))
    batch = {"inputs": torch.ones(3, 4, dtype=torch.long), "labels": torch.ones(3, 4, dtype=torch.long),
             "puzzle_identifiers": torch.zeros(3, dtype=torch.long)}
    assert set_cycles(head, 2, 3) and not set_cycles(head, 2, 3)
    assert head.model.config.H_cycles == 2 and head.model.inner.config is head.model.config
    with torch.no_grad():
        head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    assert len(calls) == 2 * (3 + 1)  # per H cycle: 3 L updates and one H update of the shared network
    with pytest.raises(UserError, match="no H_cycles"):
        model_cycles(nn.Linear(2, 2))


def test_the_curriculum_is_off_by_default_and_composes():
    from tests.test_config import compose_raw
    from training.config import validate_config
    assert not validate_config(compose_raw([])).depth_curriculum.enabled
    config = validate_config(compose_raw(["depth_curriculum.enabled=True", "depth_curriculum.until=0.3"]))
    assert config.depth_curriculum.enabled and config.depth_curriculum.until == 0.3
    with pytest.raises(UserError, match="until"):
        validate_config(compose_raw(["depth_curriculum.until=2"]))


RUN = ["evaluators=[]", "global_batch_size=32", "epochs=4", "eval_interval=2", "lr=1e-3", "lr_warmup_steps=5",
       "ema=False", "device=cpu", "depth_curriculum.enabled=True", "depth_curriculum.start_H=1",
       "depth_curriculum.start_L=1", "depth_curriculum.until=0.5",
       *tiny_arch(H_cycles=3, L_cycles=2, mlp_t=True, pos_encodings="none")]


def run_pretrain(args, cwd):
    result = subprocess.run(pretrain_command(args), cwd=cwd, env=QUIET_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_run_resumed_across_a_schedule_change_equals_the_uninterrupted_run(sudoku4, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = run_pretrain([f"data_paths=[{sudoku4}]", *RUN, f"+checkpoint_path={whole}"], cwd=tmp_path)
    records = [r for r in read_metrics(whole) if "train/H_cycles" in r]
    # 24 steps (the schedule plans a few more: the last pass is partial); from 1x1 to the arch's 3x2 within the
    # first half, never shrinking, through 2x1; every change is logged with its first step
    depths = [(r["step"], int(r["train/H_cycles"]), int(r["train/L_cycles"])) for r in records]
    assert [d[0] for d in depths] == list(range(1, 25))
    assert depths[0][1:] == (1, 1) and depths[-1][1:] == (3, 2) and (2, 1) in {d[1:] for d in depths}
    assert [d[1:] for d in depths] == sorted(d[1:] for d in depths)
    full = next(step for step, h, l in depths if (h, l) == (3, 2))
    assert 12 <= full <= 15
    log = result.stdout + result.stderr
    changes = [depths[0]] + [d for prev, d in zip(depths, depths[1:]) if d[1:] != prev[1:]]
    assert len(changes) == 3 and changes[1][0] > 6  # the resume below, from step 5, crosses both changes
    for step, h, l in changes:
        assert f"depth curriculum: from step {step} H_cycles={h} L_cycles={l}" in log

    run_pretrain([f"data_paths=[{sudoku4}]", *RUN, "checkpoint_interval=5", "checkpoint_keep=null",
                  f"+checkpoint_path={cut}"], cwd=tmp_path)
    resumed = run_pretrain([f"resume={cut / 'state_5.pt'}"], cwd=tmp_path)  # step 5: before both changes
    assert "Resumed" in resumed.stdout and "from step 6 H_cycles=1 L_cycles=1" in resumed.stdout + resumed.stderr
    assert read_metrics(cut) == read_metrics(whole)
    a, b = torch.load(whole / "step_24", weights_only=True), torch.load(cut / "step_24", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
