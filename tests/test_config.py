"""Every config composes with Hydra and validates; bad keys and types fail with one clear line."""
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from training.config import validate_config
from utils.errors import UserError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "config")
ARCHS = sorted(p.stem for p in Path(CONFIG_DIR, "arch").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


def compose_raw(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="cfg_pretrain", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def test_config_groups_are_present():
    assert {"trm", "trm_singlez", "trm_hier6", "hrm", "transformers_baseline"} <= set(ARCHS)
    assert {"quickstart", "sudoku_mlp", "sudoku_att", "maze_hard", "arc1", "arc2"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_composes_and_validates(arch):
    config = validate_config(compose_raw([f"arch={arch}"]))
    assert config.arch.name.count("@") == 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    config = validate_config(compose_raw([f"+experiment={experiment}"]))
    assert config.data_paths


def test_spec_sudoku_command_line_overrides_compose():
    raw = compose_raw(["arch=trm", "data_paths=[data/sudoku-extreme-1k-aug-1000]", "evaluators=[]", "epochs=50000",
                       "eval_interval=5000", "lr=1e-4", "puzzle_emb_lr=1e-4", "weight_decay=1.0",
                       "puzzle_emb_weight_decay=1.0", "arch.mlp_t=True", "arch.pos_encodings=none", "arch.L_layers=2",
                       "arch.H_cycles=3", "arch.L_cycles=6", "+run_name=my_run", "ema=True"])
    config = validate_config(raw).fill_defaults()
    assert config.arch.model_extra["mlp_t"] is True and config.arch.model_extra["L_cycles"] == 6
    assert config.run_name == "my_run"
    assert config.checkpoint_path == os.path.join("checkpoints", "Sudoku-extreme-1k-aug-1000-ACT-torch", "my_run")


def test_experiment_matches_its_spec_command_line():
    from_experiment = validate_config(compose_raw(["+experiment=sudoku_mlp"]))
    from_cli = validate_config(compose_raw([
        "arch=trm", "data_paths=[data/sudoku-extreme-1k-aug-1000]", "evaluators=[]", "epochs=50000", "eval_interval=5000",
        "lr=1e-4", "puzzle_emb_lr=1e-4", "weight_decay=1.0", "puzzle_emb_weight_decay=1.0", "arch.mlp_t=True",
        "arch.pos_encodings=none", "arch.L_layers=2", "arch.H_cycles=3", "arch.L_cycles=6", "ema=True"]))
    assert from_experiment.model_dump() == from_cli.model_dump()


def test_defaults_are_the_specs():
    config = validate_config(compose_raw([]))
    assert (config.global_batch_size, config.epochs, config.eval_interval, config.lr, config.lr_warmup_steps) == (768, 100000, 10000, 1e-4, 2000)
    assert (config.beta1, config.beta2, config.weight_decay, config.puzzle_emb_lr, config.ema_rate) == (0.9, 0.95, 0.1, 1e-2, 0.999)
    assert [e.name for e in config.evaluators] == ["arc@ARC"]
    assert config.arch.name == "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"


@pytest.mark.parametrize("overrides, message", [
    (["+foo=1"], "unknown config key 'foo'"),
    (["global_batch_size=many"], "bad config key 'global_batch_size' = 'many'"),
    (["eval_interval=3"], "eval_interval=3 must divide epochs=100000"),
    (["device=tpu"], "bad config key 'device' = 'tpu'"),
    (["wandb.mode=sometimes"], "bad config key 'wandb.mode'"),
])
def test_bad_config_fails_with_one_line(overrides, message):
    with pytest.raises(UserError) as info:
        validate_config(compose_raw(overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- config/data: one file per dataset

@pytest.mark.parametrize("name, paths, evaluators", [
    ("arc1", ["data/arc1concept-aug-1000"], ["arc@ARC"]),
    ("arc2", ["data/arc2concept-aug-1000"], ["arc@ARC"]),
    ("sudoku_extreme", ["data/sudoku-extreme-1k-aug-1000"], ["sudoku@Sudoku"]),
    ("maze_hard", ["data/maze-30x30-hard-1k"], ["maze@Maze"]),
    ("sudoku6_quick", ["data/sudoku6-quick"], ["sudoku@Sudoku"]),
])
def test_data_group_composes_to_its_paths(name, paths, evaluators):
    config = validate_config(compose_raw([f"data={name}"]))
    assert config.data_paths == paths and [e.name for e in config.evaluators] == evaluators


def test_every_data_file_sets_the_data_keys_and_nothing_else():
    from training.config import DATA_GROUP_KEYS
    names = sorted(p.stem for p in Path(CONFIG_DIR, "data").glob("*.yaml"))
    assert {"arc1", "arc2", "sudoku_extreme", "maze_hard", "sudoku6_quick"} <= set(names)
    for name in names:
        assert set(OmegaConf.load(Path(CONFIG_DIR, "data", f"{name}.yaml"))) == set(DATA_GROUP_KEYS), name


def test_the_default_data_is_arc1_and_single_keys_still_override_it():
    assert compose_raw([]) == compose_raw(["data=arc1"])
    raw = compose_raw(["data=sudoku_extreme", "data_paths=[data/mine]", "evaluators=[]"])
    assert raw["data_paths"] == ["data/mine"] and raw["evaluators"] == [] and raw["data_build"] is None


def test_a_resumed_run_may_repeat_its_data_group_but_not_change_it():
    from training.config import resumed_config
    saved = compose_raw(["data=sudoku_extreme", "+run_name=r"])
    same, other = ["data=sudoku_extreme", "resume=x"], ["data=maze_hard", "resume=x"]
    assert resumed_config(saved, compose_raw(same), same, "run/state_1.pt").data_paths == saved["data_paths"]
    with pytest.raises(UserError, match="data_paths cannot change when resuming"):
        resumed_config(saved, compose_raw(other), other, "run/state_1.pt")
