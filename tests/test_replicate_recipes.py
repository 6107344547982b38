"""The paper's full-size recipes in config/experiment/ are exactly its command lines (docs/command_lines.md#reference-command-lines), and each file says
what accuracy and hardware to expect."""
import re
from pathlib import Path

import pytest

from tests.test_config import CONFIG_DIR, compose_raw
from training.config import validate_config

COMMON = ["arch=trm", "arch.L_layers=2", "arch.H_cycles=3", "ema=True"]
PAPER = ["evaluators=[]", "epochs=50000", "eval_interval=5000", "lr=1e-4", "puzzle_emb_lr=1e-4", "weight_decay=1.0",
         "puzzle_emb_weight_decay=1.0"]
RECIPES = {
    "sudoku_mlp": COMMON + PAPER + ["data_paths=[data/sudoku-extreme-1k-aug-1000]", "arch.mlp_t=True",
                                    "arch.pos_encodings=none", "arch.L_cycles=6"],
    "sudoku_att": COMMON + PAPER + ["data_paths=[data/sudoku-extreme-1k-aug-1000]", "arch.L_cycles=6"],
    "maze_hard": COMMON + PAPER + ["data_paths=[data/maze-30x30-hard-1k]", "arch.L_cycles=4"],
    "arc1": COMMON + ["data_paths=[data/arc1concept-aug-1000]", "arch.L_cycles=4"],
    "arc2": COMMON + ["data_paths=[data/arc2concept-aug-1000]", "arch.L_cycles=4"],
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_is_the_papers_command_line(experiment):
    from_file = validate_config(compose_raw([f"+experiment={experiment}"]))
    from_cli = validate_config(compose_raw(RECIPES[experiment]))
    assert from_file.model_dump() == from_cli.model_dump()


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_notes_expected_accuracy_and_hardware(experiment):
    text = Path(CONFIG_DIR, "experiment", f"{experiment}.yaml").read_text()
    comments = " ".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert re.search(r"\d+\.\d% (exact|pass@2)", comments), comments
    assert re.search(r"GPU|H100", comments) and re.search(r"day", comments), comments
