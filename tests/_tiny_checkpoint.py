"""One tiny trained checkpoint on a generated 4x4 Sudoku, shared by the evaluate and inference tests (built once
per test session: pretrain.py in a subprocess, as a user runs it)."""
import json
import subprocess
import sys

from tests.helpers import ENV, ROOT, build_sudoku4

TINY_ARCH = ["arch.hidden_size=32", "arch.num_heads=2", "arch.expansion=2", "arch.puzzle_emb_ndim=32",
             "arch.H_cycles=2", "arch.L_cycles=1", "arch.halt_max_steps=4", "arch.forward_dtype=float32",
             "arch.mlp_t=True", "arch.pos_encodings=none"]
_CACHE = {}


def tiny_checkpoint(tmp_path_factory) -> dict:
    """{'data': dataset dir, 'run': run dir holding step_<N> and all_config.yaml, 'final_eval': the run's last eval}."""
    if "run" in _CACHE:
        return _CACHE
    base = tmp_path_factory.mktemp("tiny_run")
    data, run = base / "sudoku4", base / "run"
    build_sudoku4(data, n_train=100, n_test=40, num_aug=3)
    result = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), f"data_paths=[{data}]", "evaluators=[{name: sudoku@Sudoku}]",
                             "global_batch_size=16", "epochs=2", "eval_interval=2", "lr=1e-3", "lr_warmup_steps=5",
                             "ema=True", "ema_rate=0.9", "device=cpu", f"+checkpoint_path={run}", *TINY_ARCH],
                            cwd=base, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    _CACHE.update(data=data, run=run, final_eval=[r for r in records if "all/exact_accuracy" in r][-1])
    return _CACHE


def run_evaluate(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
