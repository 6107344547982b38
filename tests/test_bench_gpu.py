"""python -m bench.gpu (bench/gpu.py): one line without CUDA, and its CPU smoke run of every part."""
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the check would run")
def test_without_cuda_it_refuses_in_one_line():
    run = subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr[-2000:]
    assert "no CUDA GPU" in lines[0] and "--device cpu" in lines[0]


@pytest.mark.slow
def test_the_cpu_smoke_run_prints_one_table_of_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["check"].split(" on ")[0], r["result"]) for r in rows] == [
        ("pytest -m 'device and not slow'", "ok"), ("evaluation compiled vs eager", "ok"), ("bench.mfu sudoku_mlp", "ok"),
        ("bench.mfu arc_att", "ok"), ("2 NCCL ranks = 1 rank", "skipped")]
    assert "passed" in rows[0]["detail"] and "puzzles/s" in rows[1]["detail"] and "batch 4" in rows[2]["detail"]
    assert run.stdout.count("| check ") == 1, "one table"
