"""The arch part of a run's config and the loss head built from it. Plain arguments (the arch, the data's sizes,
the per-rank batch size, the forward dtype): training, evaluation and inference build a head the same way."""
from typing import Any, Dict, Union

import pydantic
from torch import nn

from dataset.format import PuzzleDatasetMetadata
from models.recursive_reasoning.act import parse_config
from models.recursive_reasoning.common import puzzle_emb_rows
from utils.errors import UserError, validation_problem
from utils.functions import load_model_class


class OpenConfig(pydantic.BaseModel):
    # Extra keys are passed through to the model / loss / evaluator (docs/network.md#model-interface).
    model_config = pydantic.ConfigDict(extra="allow")


class LossConfig(OpenConfig):
    name: str


class ArchConfig(OpenConfig):
    name: str
    loss: LossConfig


Arch = Union[ArchConfig, Dict[str, Any]]


def arch_config(arch: Arch) -> ArchConfig:
    """`arch` validated (a dict, e.g. from a run's all_config.yaml), or a UserError line."""
    if isinstance(arch, ArchConfig):
        return arch
    try:
        return ArchConfig.model_validate(arch)
    except pydantic.ValidationError as e:
        _, key, msg, _ = validation_problem(e)
        raise UserError(f"arch.{key}: {msg} (give arch=<name> and arch.* overrides)" if key else f"arch: {msg}") from None


def sizes_metadata(vocab_size: int, seq_len: int, num_puzzle_identifiers: int = 1) -> PuzzleDatasetMetadata:
    """Metadata holding only the sizes a model is built for (its data is not at hand)."""
    return PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                 seq_len=seq_len, num_puzzle_identifiers=num_puzzle_identifiers, total_groups=1,
                                 mean_puzzle_examples=1.0, total_puzzles=1, sets=["all"])


def model_config_dict(arch: Arch, metadata: PuzzleDatasetMetadata, batch_size: int, forward_dtype: str) -> dict:
    """docs/network.md#model-interface: every extra key under `arch`, plus what the data dictates."""
    config = arch_config(arch).model_dump()
    config.pop("name")
    config.pop("loss")
    config["forward_dtype"] = forward_dtype
    return dict(**config,
                batch_size=batch_size,
                vocab_size=metadata.vocab_size,
                seq_len=metadata.seq_len,
                num_puzzle_identifiers=metadata.num_puzzle_identifiers,
                causal=False)


def build_loss_head(arch: Arch, metadata: PuzzleDatasetMetadata, batch_size: int, forward_dtype: str) -> nn.Module:
    """The arch's model inside its loss head, on the current torch device; `batch_size` is per rank."""
    arch = arch_config(arch)
    loss_kwargs = arch.loss.model_dump()
    loss_kwargs.pop("name")
    try:
        model_cls = load_model_class(arch.name)
        loss_cls = load_model_class(arch.loss.name)
        model = model_cls(model_config_dict(arch, metadata, batch_size, forward_dtype))
        return loss_cls(model, **loss_kwargs)
    except UserError as e:  # the models state bad configuration in one line
        raise UserError(f"arch: {e}") from None


def puzzle_rows(arch: Arch) -> int:
    """The puzzle-embedding rows the arch's model puts in front of the tokens, by the model's own config (its
    defaults differ: HRM derives them, TRM has 16) and rule; the data's sizes do not change them."""
    arch = arch_config(arch)
    try:
        config_class = load_model_class(arch.name).config_class
        return puzzle_emb_rows(parse_config(config_class, model_config_dict(arch, sizes_metadata(1, 1), 1, "float32")))
    except UserError as e:
        raise UserError(f"arch: {e}") from None
