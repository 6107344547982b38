import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

# Tiny tensors on a shared 2-core machine: one intra-op thread avoids oversubscription stalls.
torch.set_num_threads(1)

# Tests marked `device` take the `device` fixture: the CPU by default, TEST_DEVICE=cuda (or mps) runs them there
# (python -m bench.gpu does: TEST_DEVICE=cuda pytest -m device).
TEST_DEVICE = os.environ.get("TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def sudoku4(tmp_path_factory):
    """A generated 4x4 Sudoku dataset (200 train puzzles x 4 augmentations, 32 test); tests copy it to change it."""
    from tests.helpers import build_sudoku4
    return build_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", n_train=200, n_test=32, num_aug=4)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """One tiny trained checkpoint shared by the evaluate, inference and bad-input tests (tests.helpers.tiny_checkpoint)."""
    from tests.helpers import tiny_checkpoint
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def tiny_arc(tmp_path_factory) -> dict:
    """A tiny ARC checkpoint (tests.helpers.tiny_arc_checkpoint): the adaptation and ensemble tests."""
    from tests.helpers import tiny_arc_checkpoint
    return tiny_arc_checkpoint(tmp_path_factory.mktemp("tiny_arc"))


@pytest.fixture
def device() -> torch.device:
    from utils.device import pick_device
    return pick_device(TEST_DEVICE)  # an unavailable device fails here, it is not skipped
