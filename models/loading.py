"""Find a checkpoint, read the run's config saved beside it, check a dataset fits it and rebuild its loss head."""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from dataset.format import PuzzleDatasetMetadata, read_metadata
from models.build import ArchConfig, arch_config, build_loss_head, puzzle_rows, sizes_metadata
from models.checkpoint_io import (WEIGHTS_FILE, highest_step_file, load_reference_checkpoint, read_weights_file,
                                  step_of, strip_compiled_prefix)
from utils.device import resolve_forward_dtype
from utils.errors import UserError

QUICKSTART_DIR = os.path.join("checkpoints", "Sudoku6-quick-ACT-torch")


def find_weights(path) -> Path:
    """A weights file as given; in a run directory its highest step_<N>; in a directory of runs (e.g. a project
    under checkpoints/) the highest step of the run written last."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"checkpoint '{path}' not found: give a weights file (<run dir>/step_<N>) or a run directory")
    found = highest_step_file(path, WEIGHTS_FILE)
    if found is None:
        raise UserError(f"no step_<N> weights in '{path}' or its sub-directories: train one first or give the file")
    return Path(found)


def load_run_config(weights: Path) -> Optional[Dict[str, Any]]:
    """all_config.yaml beside the weights (written by pretrain.py, and by the reference), or None."""
    path = Path(weights).parent / "all_config.yaml"
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def test_split_paths(run_config: Dict[str, Any]) -> List[str]:
    return list(run_config.get("data_paths_test") or run_config.get("data_paths") or [])


def read_split_metadata(data_path: str, split: str = "test") -> PuzzleDatasetMetadata:
    directory = os.path.join(data_path, split)
    if not os.path.isfile(os.path.join(directory, "dataset.json")):
        raise UserError(f"dataset '{data_path}' has no {split}/dataset.json: build it first or fix data_paths")
    return read_metadata(directory)


def _find(state: Dict[str, torch.Tensor], suffix: str) -> Optional[torch.Tensor]:
    return next((v for k, v in state.items() if k.endswith(suffix)), None)


@dataclass
class CheckpointShape:
    """What the weights themselves say about the data the model was trained on (None: they do not tell)."""
    vocab_size: Optional[int]
    seq_len: Optional[int]
    num_puzzle_identifiers: Optional[int]


def checkpoint_shape(state: Dict[str, torch.Tensor], arch: ArchConfig) -> CheckpointShape:
    tokens = _find(state, "embed_tokens.embedding_weight")
    puzzles = _find(state, "puzzle_emb.weights")
    # The sequence length shows in learned positions and in the sequence-wide MLP (mlp_t); RoPE stores none.
    width = None
    positions = _find(state, "embed_pos.embedding_weight")
    mlp_t = _find(state, "mlp_t.gate_up_proj.weight")
    if positions is not None:
        width = positions.shape[0]
    elif mlp_t is not None:
        width = mlp_t.shape[1]
    seq_len = width - puzzle_rows(arch) if width is not None else None  # the model's puzzle rows come first
    return CheckpointShape(vocab_size=tokens.shape[0] if tokens is not None else None, seq_len=seq_len,
                           num_puzzle_identifiers=puzzles.shape[0] if puzzles is not None else None)


def check_dataset_fits(metadata: PuzzleDatasetMetadata, shape: CheckpointShape, data_name: str,
                       trained: Optional[PuzzleDatasetMetadata] = None) -> None:
    """A dataset whose vocabulary or sequence length differs from the checkpoint's -> one line, before any work."""
    vocab = shape.vocab_size or (trained.vocab_size if trained else None)
    seq_len = shape.seq_len or (trained.seq_len if trained else None)
    if vocab is not None and metadata.vocab_size != vocab:
        raise UserError(f"dataset {data_name} has vocab_size {metadata.vocab_size} but the checkpoint was trained with "
                        f"{vocab}: evaluate on a dataset built like its training data")
    if seq_len is not None and metadata.seq_len != seq_len:
        raise UserError(f"dataset {data_name} has seq_len {metadata.seq_len} but the checkpoint was trained with "
                        f"{seq_len}: evaluate on a dataset built like its training data")
    if shape.num_puzzle_identifiers is not None and metadata.num_puzzle_identifiers > shape.num_puzzle_identifiers:
        raise UserError(f"dataset {data_name} has {metadata.num_puzzle_identifiers} puzzle identifiers but the checkpoint's "
                        f"embedding has {shape.num_puzzle_identifiers}: evaluate on the dataset it was trained with")


@dataclass
class LoadedCheckpoint:
    head: nn.Module
    weights: Path
    step: Optional[int]
    arch: Dict[str, Any]
    metadata: PuzzleDatasetMetadata       # the data the head was built for
    run_config: Optional[Dict[str, Any]]
    forward_dtype: str
    extra: Dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path, device: torch.device, metadata: Optional[PuzzleDatasetMetadata] = None,
                    arch: Optional[Dict[str, Any]] = None, batch_size: int = 1, data_name: str = "",
                    forward_dtype: Optional[str] = None) -> LoadedCheckpoint:
    """Rebuild the loss head of a checkpoint in eval mode. The arch comes from all_config.yaml beside the weights,
    or `arch` for a bare file; the data sizes from `metadata` (checked against the weights), else the run's
    test split, else the weights (learned positions or mlp_t)."""
    weights = find_weights(path)
    run_config = load_run_config(weights)
    if arch is None:
        if run_config is None or "arch" not in run_config:
            raise UserError(f"no all_config.yaml beside '{weights}': give the architecture, e.g. arch=trm arch.hidden_size=...")
        arch = run_config["arch"]
    arch = dict(arch)
    state = strip_compiled_prefix(read_weights_file(str(weights)))
    schema = arch_config(arch)
    shape = checkpoint_shape(state, schema)

    trained = None
    for data_path in (test_split_paths(run_config) if run_config else [])[:1]:
        for split in ("test", "train"):
            if os.path.isfile(os.path.join(data_path, split, "dataset.json")):
                trained = read_metadata(os.path.join(data_path, split))
                break
    if metadata is None:
        metadata = trained
        if metadata is None:
            if shape.vocab_size is None or shape.seq_len is None:
                raise UserError(f"cannot tell the sequence length of '{weights}' (its training data is not on disk): "
                                f"give data_paths=[<dataset it was trained on>]")
            metadata = sizes_metadata(shape.vocab_size, shape.seq_len, shape.num_puzzle_identifiers or 1)
    else:
        check_dataset_fits(metadata, shape, data_name or "given", trained)
    if shape.num_puzzle_identifiers is not None:  # index the checkpoint's table as it is
        metadata = metadata.model_copy(update={"num_puzzle_identifiers": shape.num_puzzle_identifiers})

    forward_dtype = resolve_forward_dtype(forward_dtype or arch.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = build_loss_head(schema, metadata, batch_size, forward_dtype)
    try:
        load_reference_checkpoint(head, state)
    except UserError as e:
        raise UserError(f"{weights}: {e}") from None
    head.eval()
    return LoadedCheckpoint(head=head, weights=weights, step=step_of(weights), arch=arch, metadata=metadata,
                            run_config=run_config, forward_dtype=forward_dtype)
