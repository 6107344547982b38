"""What the tests share: the repository root, a quiet environment, command lines, small generated datasets, a tiny
network and one tiny trained checkpoint (tests/conftest.py turns the expensive ones into fixtures)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parents[1]
# No W&B, no compile: subprocess runs stay offline and start in seconds.
ENV = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1", HYDRA_FULL_ERROR="0")
# One thread per subprocess: the test machine's few cores are shared by every run a test starts.
QUIET_ENV = dict(ENV, OMP_NUM_THREADS="1")


def tiny_arch(**changes) -> List[str]:
    """Hydra overrides for a TRM of a few thousand weights; keyword arguments change or add arch keys."""
    arch = {"hidden_size": 32, "num_heads": 2, "expansion": 2, "puzzle_emb_ndim": 32, "H_cycles": 2, "L_cycles": 1,
            "halt_max_steps": 4, "forward_dtype": "float32", **changes}
    return [f"arch.{key}={value}" for key, value in arch.items()]


# The tiny checkpoint's network: an MLP across the sequence and no positions, the fastest to train on a CPU.
TINY_ARCH = tiny_arch(mlp_t=True, pos_encodings="none")


def pretrain_command(args: Sequence[str], nproc: int = 1) -> List[str]:
    """`python pretrain.py <args>`, or with nproc > 1 the same under torchrun on this machine."""
    if nproc == 1:
        return [sys.executable, str(ROOT / "pretrain.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv_backend=c10d",
            "--rdzv_endpoint=localhost:0", "--nnodes=1", str(ROOT / "pretrain.py"), *args]


def read_metrics(run_dir: Path) -> List[dict]:
    """The records of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def build_sudoku4(out: Path, n_train: int, n_test: int, num_aug: int, seed: int = 1) -> Path:
    """A generated 4x4 Sudoku dataset built by the real builder, as a user would."""
    subprocess.run([sys.executable, "-m", "dataset.build_sudoku_dataset", "--output-dir", str(out), "--size", "4",
                    "--generate", str(n_train), "--generate-test", str(n_test), "--num-aug", str(num_aug),
                    "--seed", str(seed), "--workers", "1"], cwd=ROOT, check=True, capture_output=True, env=ENV)
    return out


def tiny_head(hidden_size=16, num_puzzle_identifiers=4):
    """A loss head around a TRM of a few hundred weights: batch 3 of 4 tokens (vocabulary 5), ACT up to 4 steps."""
    from models.losses import ACTLossHead
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
    return ACTLossHead(TinyRecursiveReasoningModel_ACTV1(dict(
        batch_size=3, seq_len=4, vocab_size=5, num_puzzle_identifiers=num_puzzle_identifiers, H_cycles=1, L_cycles=1,
        L_layers=1, hidden_size=hidden_size, expansion=2, num_heads=2, pos_encodings="rope", puzzle_emb_ndim=hidden_size,
        halt_max_steps=4, halt_exploration_prob=0.5, forward_dtype="float32")), loss_type="softmax_cross_entropy")


def tiny_checkpoint(base: Path) -> dict:
    """Train a tiny TRM on a generated 4x4 Sudoku under `base` with pretrain.py, as a user runs it.
    Returns {'data': dataset dir, 'run': run dir holding step_<N> and all_config.yaml, 'final_eval': the last eval}."""
    data, run = base / "sudoku4", base / "run"
    build_sudoku4(data, n_train=100, n_test=40, num_aug=3)
    result = subprocess.run(pretrain_command([f"data_paths=[{data}]", "evaluators=[{name: sudoku@Sudoku}]",
                                              "global_batch_size=16", "epochs=2", "eval_interval=2", "lr=1e-3",
                                              "lr_warmup_steps=5", "ema=True", "ema_rate=0.9", "device=cpu",
                                              f"+checkpoint_path={run}", *TINY_ARCH]),
                            cwd=base, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(data=data, run=run, final_eval=[r for r in read_metrics(run) if "all/exact_accuracy" in r][-1])


def run_evaluate(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def evaluate_report(args, cwd, out):
    """evaluate.py with `args`, which end in output_dir=<out>: (the finished process, its eval_results.json)."""
    result = run_evaluate([*args, f"output_dir={out}"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((Path(out) / "eval_results.json").read_text())


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's own process group."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_set(split_dir, set_name: str, mmap: bool = True) -> dict:
    """The five arrays of one set of a split; inputs and labels memory-mapped (they are the large arrays)."""
    import numpy as np
    from dataset.format import SET_FIELDS, set_array_path
    return {field: np.load(set_array_path(split_dir, set_name, field),
                           mmap_mode="r" if (mmap and field in ("inputs", "labels")) else None)
            for field in SET_FIELDS}


def apply_sudoku_augmentations(boards, aug):
    """boards [M, n, n] digits -> out[m, r, c] = digit_map[m][T(board)[rows[m, r], cols[m, c]]] (reference order)."""
    from dataset.build_sudoku_dataset import augment_flat
    return augment_flat(boards.reshape(len(boards), 1, -1), aug).reshape(boards.shape)


def invert_sudoku_augmentation(board, aug, index: int):
    """Undo Sudoku augment `index` (dataset.build_sudoku_dataset.random_augmentations) on one [n, n] board."""
    import numpy as np
    inverse_digits = np.argsort(aug["digit_map"][index])
    restored = np.empty_like(board)
    restored[np.ix_(aug["rows"][index], aug["cols"][index])] = inverse_digits[board]
    return restored.T if aug["transpose"][index] else restored


# ARC tasks of the real evaluation set with the smallest grids: three to train a tiny checkpoint on, and two it has
# never seen to adapt it to (the second has two test outputs).
ARC_SOURCE = Path("/work/shared/data/arc-agi/arc-agi_evaluation")
ARC_BASE_TASKS = ("0692e18c", "15696249", "2072aba6")
ARC_NEW_TASKS = ("00576224", "6ea4a07e")
TINY_ARC_ARCH = tiny_arch(L_layers=1, halt_max_steps=2)


def write_arc_tasks(prefix: Path, ids: Sequence[str], solutions: bool = True) -> Path:
    """<prefix>_challenges.json (and _solutions.json) holding these tasks of the real ARC evaluation set."""
    challenges = json.loads(Path(f"{ARC_SOURCE}_challenges.json").read_text())
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}_challenges.json").write_text(json.dumps({i: challenges[i] for i in ids}))
    if solutions:
        known = json.loads(Path(f"{ARC_SOURCE}_solutions.json").read_text())
        Path(f"{prefix}_solutions.json").write_text(json.dumps({i: known[i] for i in ids}))
    return Path(f"{prefix}_challenges.json")


def tiny_arc_checkpoint(base: Path) -> dict:
    """A tiny TRM trained for 4 steps on three small ARC tasks x 8 (weights kept at steps 2 and 4)."""
    write_arc_tasks(base / "src" / "base_ev", ARC_BASE_TASKS)
    data, run = base / "arc-data", base / "run"
    subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--input-file-prefix", str(base / "src" / "base"),
                    "--subsets", "ev", "--test-set-name", "ev", "--num-aug", "7", "--output-dir", str(data)],
                   cwd=ROOT, check=True, capture_output=True, env=ENV)
    result = subprocess.run(pretrain_command([f"data_paths=[{data}]", "evaluators=[{name: arc@ARC}]", "global_batch_size=8",
                                              "epochs=4", "eval_interval=2", "lr=1e-3", "lr_warmup_steps=2", "device=cpu",
                                              f"+checkpoint_path={run}", *TINY_ARC_ARCH]),
                            cwd=base, env=QUIET_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(data=data, run=run)
