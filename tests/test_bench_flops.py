"""Hand-computed FLOP counts for the MFU benchmark (bench/flops.py), and its command line (bench/mfu.py)."""
import json
import subprocess
import sys

import pytest

from bench.flops import TRMShape, act_step_flops, attention_flops, block_flops, head_flops, swiglu_flops


def test_swiglu_and_attention_hand_values():
    # 2 rows, width 3, hidden 4: gate_up 2*2*3*8 = 96, down 2*2*4*3 = 48
    assert swiglu_flops(2, 3, 4) == 144
    # batch 1, 2 positions, width 4: projections 2*2*4*16 = 256; QK^T and AV 2*2*1*2*2*4 = 64
    assert attention_flops(1, 2, 4) == 320


SUDOKU_MLP = TRMShape(batch_size=32, seq_len=81, puzzle_emb_len=16, vocab_size=11, hidden_size=512, expansion=4,
                      num_heads=8, mlp_t=True, L_layers=2, H_cycles=3, L_cycles=6)


def test_sudoku_mlp_paper_size():
    # mlp_t: 97 positions -> hidden 512; channels: 512 -> hidden 1536 (docs/network.md#swiglu rounding)
    mixer = 6 * (32 * 512) * 97 * 512
    channel = 6 * (32 * 97) * 512 * 1536
    assert block_flops(SUDOKU_MLP) == mixer + channel
    heads = 2 * 32 * 81 * 512 * 11 + 2 * 32 * 512 * 2
    assert head_flops(SUDOKU_MLP) == heads
    net = 2 * (mixer + channel)
    # 3 H cycles x 7 network calls forward; the last 7 calls and the heads again twice in backward
    assert act_step_flops(SUDOKU_MLP, training=False) == 21 * net + heads
    assert act_step_flops(SUDOKU_MLP, training=True) == 21 * net + heads + 2 * (7 * net + heads)
    assert round(act_step_flops(SUDOKU_MLP, training=True) / 1e9) == 1367


def test_attention_block_counts_quadratic_mixing():
    shape = TRMShape(batch_size=1, seq_len=900, puzzle_emb_len=16, vocab_size=12, hidden_size=512, expansion=4,
                     num_heads=8, mlp_t=False, L_layers=2, H_cycles=3, L_cycles=4)
    longer = TRMShape(**{**shape.__dict__, "seq_len": 1816})
    mixing = lambda s: block_flops(s) - 8 * s.positions * 512 * 512 - 6 * s.positions * 512 * 1536
    assert mixing(shape) == 4 * 916 * 916 * 512
    assert mixing(longer) == 4 * mixing(shape)   # twice the positions: four times the QK^T and AV work


def run_mfu(out, *flags):
    """`python -m bench.mfu` for two steps of a tiny quickstart model on the CPU, its rows written to `out`."""
    tiny = ["arch.hidden_size=16", "arch.num_heads=2", "arch.L_cycles=1", "arch.H_cycles=2", "arch.halt_max_steps=2"]
    return subprocess.run([sys.executable, "-m", "bench.mfu", "--case", "quickstart", "--batch-size", "4", "--steps", "2",
                           "--warmup", "1", "--compile", "off", "--device", "cpu", "--peak-seconds", "0.02", *flags,
                           "--json", str(out), "--override", *tiny], capture_output=True, text=True, timeout=300)


def test_mfu_command_line_reports_a_consistent_row(tmp_path):
    """`python -m bench.mfu` end to end on a tiny quickstart model: the table, and JSON whose figures agree."""
    out = tmp_path / "mfu.json"
    run = run_mfu(out)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| quickstart |" in run.stdout
    [row] = json.loads(out.read_text())
    assert row["batch_size"] == 4 and row["compile"] is False and row["device"] == "cpu"
    assert row["achieved_gflops"] * row["step_seconds"] == pytest.approx(row["train_gflop_per_step"])
    assert row["mfu"] == pytest.approx(row["achieved_gflops"] / row["peak_gflops"])
    assert 0 < row["data_loading_share"] < 1
    assert row["inference"]["fixed"]["mean_steps"] == 2


def test_mfu_versus_plain_times_both_networks_and_reports_the_ratio(tmp_path):
    out = tmp_path / "mfu.json"
    run = run_mfu(out, "--versus-plain")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "speed-up" in run.stdout.splitlines()[0]
    assert "plain train step 3/3" in run.stderr and "ours train step 3/3" in run.stderr
    [row] = json.loads(out.read_text())
    assert row["speedup_over_plain"] == pytest.approx(row["plain_step_seconds"] / row["step_seconds"])
