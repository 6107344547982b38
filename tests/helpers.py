"""What the command-line tests share: the repository root, a quiet environment and small generated datasets."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# No W&B, no compile: subprocess runs stay offline and start in seconds.
ENV = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1", HYDRA_FULL_ERROR="0")


def build_sudoku4(out: Path, n_train: int, n_test: int, num_aug: int, seed: int = 1) -> Path:
    """A generated 4x4 Sudoku dataset built by the real builder, as a user would."""
    subprocess.run([sys.executable, "-m", "dataset.build_sudoku_dataset", "--output-dir", str(out), "--size", "4",
                    "--generate", str(n_train), "--generate-test", str(n_test), "--num-aug", str(num_aug),
                    "--seed", str(seed), "--workers", "1"], cwd=ROOT, check=True, capture_output=True, env=ENV)
    return out
