"""Validated training configuration (docs/configuration.md: the reference's keys plus our own), and a resumed run's: the saved config with this
command line's keys on top."""
import os
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import pydantic
from omegaconf import OmegaConf

from models.build import ArchConfig, OpenConfig
from training.checkpoint import read_resume_state
from utils.errors import UserError, validation_problem


# Values that would train nothing, or train on garbage, without any error of their own.
FinitePositive = pydantic.confloat(gt=0, allow_inf_nan=False)
FiniteNonNegative = pydantic.confloat(ge=0, allow_inf_nan=False)
Decay = pydantic.confloat(ge=0, lt=1)          # Adam betas and the EMA rate
Ratio = pydantic.confloat(ge=0, le=1)
# What an evaluation can save (eval_save_outputs): the batch's arrays and the loss head's outputs.
SAVE_OUTPUT_KEYS = ("inputs", "labels", "puzzle_identifiers", "logits", "preds", "q_halt_logits", "q_continue_logits")


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class EvaluatorConfig(OpenConfig):
    name: str


class DataBuildConfig(_Strict):
    module: str
    args: List[str] = []


class WandbConfig(_Strict):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    entity: Optional[str] = None
    group: Optional[str] = None   # runs of one group are shown together (e.g. the seeds of one study model)
    tags: List[str] = []


class DepthCurriculum(_Strict):
    """docs/configuration.md#depth-curriculum: H_cycles/L_cycles grow from start_* to the arch's over the first
    `until` of the training steps."""
    enabled: bool = False
    start_H: pydantic.PositiveInt = 1
    start_L: pydantic.PositiveInt = 2
    until: Ratio = 0.5


class PretrainConfig(_Strict):
    arch: ArchConfig
    data_paths: List[str]
    data_paths_test: List[str] = []
    data_build: Optional[DataBuildConfig] = None
    evaluators: List[EvaluatorConfig] = []

    global_batch_size: pydantic.PositiveInt
    epochs: pydantic.PositiveInt
    eval_interval: Optional[pydantic.PositiveInt] = None
    min_eval_interval: Optional[pydantic.NonNegativeInt] = 0
    checkpoint_every_eval: bool = True
    checkpoint_interval: Optional[pydantic.PositiveInt] = None
    checkpoint_keep: Optional[pydantic.PositiveInt] = 2
    resume: Optional[str] = None

    lr: FinitePositive
    lr_min_ratio: Ratio
    lr_warmup_steps: pydantic.NonNegativeInt
    beta1: Decay
    beta2: Decay
    weight_decay: FiniteNonNegative
    puzzle_emb_weight_decay: FiniteNonNegative
    puzzle_emb_lr: FinitePositive
    # adam_atan2: AdamATan2 for every weight; muon: torch.optim.Muon for the hidden 2-D weight matrices, AdamATan2
    # for the rest (docs/configuration.md#keys-beyond-the-reference)
    optimizer: Literal["adam_atan2", "muon"] = "adam_atan2"
    depth_curriculum: DepthCurriculum = DepthCurriculum()

    seed: int = 0
    ema: bool = False
    ema_rate: Decay = 0.999
    freeze_weights: bool = False
    eval_save_outputs: List[Literal[SAVE_OUTPUT_KEYS]] = []

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: Optional[bool] = None
    compile_eval: Optional[bool] = None
    prefetch_batches: Optional[pydantic.NonNegativeInt] = None
    grad_clip: Optional[FinitePositive] = None
    eval_max_batches: Optional[pydantic.PositiveInt] = None
    max_train_seconds: Optional[pydantic.PositiveFloat] = None
    eval_every_seconds: Optional[pydantic.PositiveFloat] = None
    budget_clock: Literal["wall", "process"] = "wall"
    wandb: WandbConfig = WandbConfig()

    project_name: Optional[str] = None
    run_name: Optional[str] = None
    checkpoint_path: Optional[str] = None
    load_checkpoint: Optional[str] = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        if not self.data_paths:
            raise ValueError("data_paths is empty; give at least one dataset directory, e.g. data_paths=\"[data/sudoku6-quick]\"")
        if self.eval_interval is not None and self.epochs % self.eval_interval != 0:
            raise ValueError(f"eval_interval={self.eval_interval} must divide epochs={self.epochs}")
        if self.eval_every_seconds is not None and self.max_train_seconds is None:
            raise ValueError("eval_every_seconds needs a time budget: set max_train_seconds=... too, or eval_every_seconds=null")
        if self.resume and self.load_checkpoint:
            raise ValueError("resume= continues a run from its own weights and +load_checkpoint= starts a new run from "
                             "other weights: give only one of them")
        return self

    @property
    def epochs_per_iter(self) -> int:
        """Epochs per sampler pass: one evaluation interval, or the whole run."""
        return self.eval_interval or self.epochs

    def fill_defaults(self) -> "PretrainConfig":
        """Derive project and run names and the checkpoint directory as the reference does."""
        if self.project_name is None:
            self.project_name = f"{Path(self.data_paths[0]).name.capitalize()}-ACT-torch"
        if self.run_name is None:
            import datetime
            import secrets
            # a random suffix keeps sweep points started within the same second apart
            stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
            self.run_name = f"{self.arch.name.split('@')[-1]} {stamp}-{secrets.token_hex(2)}"
        if self.checkpoint_path is None:
            self.checkpoint_path = os.path.join("checkpoints", self.project_name, self.run_name)
        return self


def sweep_run_name(arch_name: str, overrides: List[str]) -> str:
    """A sweep point's run (and checkpoint folder) name: the arch and this point's overrides, without spaces or
    paths, e.g. `TinyRecursiveReasoningModel_ACTV1_lr=1e-4_seed=1-3f2a` (the suffix keeps points apart whose
    overrides differ only in paths)."""
    import secrets
    shown = [o.lstrip("+") for o in overrides
             if "=" in o and not o.lstrip("+").startswith("hydra") and not any(c in o for c in "/ []{}")]
    return "_".join([arch_name.split("@")[-1], *shown])[:200] + f"-{secrets.token_hex(2)}"


def format_validation_error(err: pydantic.ValidationError) -> str:
    kind, key, msg, given = validation_problem(err)
    key = key or "config"
    if kind == "extra_forbidden":
        return f"unknown config key '{key}': remove it or check its spelling (see config/cfg_pretrain.yaml)"
    if kind == "missing":
        return f"missing config key '{key}': set it in the YAML or with {key}=..."
    if isinstance(given, (dict, list)) or key == "config":
        return f"bad config: {msg}"
    return f"bad config key '{key}' = {given!r}: {msg}"


def validate_config(raw: Dict[str, Any]) -> PretrainConfig:
    try:
        return PretrainConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise UserError(format_validation_error(e)) from None


# ------------------------------------------------------------------ resuming a run
# Keys a resumed run may not change: the saved weights, optimizer and sampler position would no longer fit.
FIXED_ON_RESUME = ("arch", "data_paths", "global_batch_size", "epochs", "eval_interval", "seed", "ema", "freeze_weights",
                   "optimizer", "depth_curriculum")
# What a file of config/data/ sets (at the top level, so `data=<name>` on a resumed run stands for these keys).
DATA_GROUP_KEYS = ("data_paths", "data_build", "evaluators")


def override_keys(overrides: Sequence[str]) -> List[str]:
    """Keys set on the command line (Hydra syntax), e.g. ['lr', 'arch.hidden_size']."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_delete()]


def _fixed_view(config: PretrainConfig, key: str) -> Any:
    value = getattr(config, key)
    if key == "arch":  # the forward dtype may change between machines (e.g. a GPU run continued on CPU)
        return {k: v for k, v in value.model_dump().items() if k != "forward_dtype"}
    return value


def resumed_config(saved: Dict[str, Any], command_line: Dict[str, Any], overrides: Sequence[str],
                   path: str) -> PretrainConfig:
    """The saved run's config, with the keys given on this command line on top; keys that would not fit the
    saved state (FIXED_ON_RESUME) must stay as they were."""
    saved = {**saved, "load_checkpoint": None}  # a resumed run's weights come from its state
    merged = OmegaConf.create(saved)
    merged.checkpoint_path = os.path.dirname(path)  # the run continues where its state is, even if moved
    given = OmegaConf.create(command_line)
    keys = [k for key in override_keys(overrides) for k in (DATA_GROUP_KEYS if key == "data" else [key])]
    for key in keys:
        if key == "resume" or key.split(".")[0] in ("experiment", "hydra"):
            continue
        value = OmegaConf.select(given, key, default=None, throw_on_missing=False)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    raw = OmegaConf.to_container(merged, resolve=True)
    raw["resume"] = path
    config = validate_config(raw).fill_defaults()
    before = validate_config(saved)
    changed = [k for k in FIXED_ON_RESUME if _fixed_view(config, k) != _fixed_view(before, k)]
    if changed:
        k = changed[0]
        raise UserError(f"resume: {describe_change(k, _fixed_view(before, k), _fixed_view(config, k))} since '{path}'; "
                        f"{', '.join(changed)} cannot change when resuming (start a new run with +load_checkpoint=... instead)")
    return config


def describe_change(key: str, before: Any, after: Any) -> str:
    """`arch.hidden_size was 32, now 64`: only the entries that differ, not whole dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        return "; ".join(f"{key}.{k} was {before.get(k)!r}, now {after.get(k)!r}"
                         for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
    return f"{key} was {before!r}, now {after!r}"


def prepare_resume(command_line: Dict[str, Any], overrides: Sequence[str]) -> Tuple[PretrainConfig, Dict[str, Any]]:
    """Find and read the checkpoint `resume=` names; return the run's config and its training state. `latest`
    looks under the run's own +checkpoint_path= when one is given."""
    config = validate_config(command_line)
    runs_dir = config.checkpoint_path or os.path.join("checkpoints", config.fill_defaults().project_name)
    state = read_resume_state(config.resume, runs_dir)
    return resumed_config(state["config"], command_line, overrides, state["path"]), state
