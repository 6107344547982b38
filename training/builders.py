"""Build the pieces a run needs from a validated config: data, model and optimizers, evaluators."""
import inspect
import os
import shutil
import subprocess
import sys
from typing import Any, List

from omegaconf import OmegaConf
import torch
from torch import nn

from dataset.format import PuzzleDatasetMetadata
from dataset.kinds import guess_kind
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from training.config import EvaluatorConfig, PretrainConfig
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.functions import load_model_class


def ensure_dataset(config: PretrainConfig) -> None:
    """Build data_paths[0] with `data_build` when it is missing (the offline quickstart)."""
    path = config.data_paths[0]
    if os.path.exists(path):  # built, or something else that check_run_data names
        return
    if config.data_build is None:
        raise UserError(f"dataset '{path}' not found: build it first (e.g. python dataset/build_sudoku_dataset.py "
                        f"--output-dir {path} ...) or fix data_paths")
    # absolute: the builder runs from the repository (for `-m`), the path is relative to where pretrain.py runs
    cmd = [sys.executable, "-m", config.data_build.module, "--output-dir", os.path.abspath(path), *config.data_build.args]
    print("Building missing dataset:", " ".join(cmd))
    # the builder's stderr (progress, or its one error line) is held back so a failure stays one line
    built = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           stderr=subprocess.PIPE, text=True)
    if built.returncode != 0:
        lines = built.stderr.strip().splitlines() or ["no message"]
        raise UserError(f"data_build {config.data_build.module} failed (exit {built.returncode}): "
                        f"{lines[-1].removeprefix('error: ')}")
    sys.stderr.write(built.stderr)


def create_dataloader(data_paths: List[str], split: str, global_batch_size: int, dist_info: DistInfo, seed: int = 0,
                      epochs_per_iter: int = 1):
    """The loader of one split of `data_paths` (this rank's share of each global batch) and its metadata. The
    test split is read in order, once, padded to whole batches (test_set_mode)."""
    dataset = PuzzleDataset(PuzzleDatasetConfig(
        seed=seed, dataset_paths=data_paths, global_batch_size=global_batch_size, test_set_mode=split == "test",
        epochs_per_iter=epochs_per_iter, rank=dist_info.rank, num_replicas=dist_info.world_size), split=split)
    return dataset, dataset.metadata


def create_optimizers(config: PretrainConfig, head: nn.Module, world_size: int):
    """AdamATan2 for the weights (optimizer=muon: Muon for the hidden matrices, AdamATan2 for the rest), sign-SGD
    for the sparse puzzle embedding; lrs are set per step by the schedule."""
    from models.adam_atan2 import AdamATan2
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    optimizers, base_lrs = [], []
    puzzle_emb = getattr(head.model, "puzzle_emb", None)
    if puzzle_emb is not None:
        optimizers.append(CastedSparseEmbeddingSignSGD_Distributed(
            puzzle_emb.buffers(), lr=0, weight_decay=config.puzzle_emb_weight_decay, world_size=world_size))
        base_lrs.append(config.puzzle_emb_lr)
    if config.freeze_weights:
        if puzzle_emb is None:
            raise UserError("freeze_weights=True trains only the puzzle embeddings, but this model has none "
                            "(arch.puzzle_emb_ndim=0): set freeze_weights=False or give the model a puzzle embedding")
        for p in head.parameters():
            p.requires_grad_(False)
    else:
        adam_params = list(head.parameters())
        if config.optimizer == "muon":
            muon_params = muon_parameters(head)
            chosen = {id(p) for p in muon_params}
            adam_params = [p for p in adam_params if id(p) not in chosen]
            # match_rms_adamw scales each matrix's update to AdamW's RMS, so the one `lr` serves both optimizers
            optimizers.append(torch.optim.Muon(muon_params, lr=0, weight_decay=config.weight_decay,
                                               adjust_lr_fn="match_rms_adamw"))
            base_lrs.append(config.lr)
        optimizers.append(AdamATan2(adam_params, lr=0, weight_decay=config.weight_decay,
                                    betas=(config.beta1, config.beta2)))
        base_lrs.append(config.lr)
    return optimizers, base_lrs


def muon_parameters(head: nn.Module) -> List[nn.Parameter]:
    """The weights Muon takes: the 2-D matrices of hidden layers. Embeddings and the output heads (lm_head,
    q_head) stay with AdamATan2, as Muon's authors advise, and so do biases, convolutions and other shapes
    (torch.optim.Muon accepts only 2-D parameters)."""
    chosen = [p for name, p in head.named_parameters()
              if p.ndim == 2 and not name.endswith("embedding_weight")
              and not {"lm_head", "q_head"} & set(name.split("."))]
    if not chosen:
        raise UserError("optimizer=muon: this model has no hidden 2-D weight matrices for Muon; use optimizer=adam_atan2")
    return chosen


ARC_EVALUATOR = "arc@ARC"  # cfg_pretrain.yaml's default (docs/configuration.md#training-keys), for the default ARC data
KIND_EVALUATORS = {"sudoku": "sudoku@Sudoku", "maze": "maze@Maze"}


def fit_evaluators(configured: List[EvaluatorConfig], metadata: PuzzleDatasetMetadata, data_paths: List[str],
                   chosen: bool) -> List[EvaluatorConfig]:
    """The default ARC evaluator on data that is not ARC (no test_puzzles.json) would stop the run: unless the user
    chose it (`chosen`), use the evaluator the data's sizes call for (Sudoku, Maze) or none, and say so."""
    if chosen or [e.name for e in configured] != [ARC_EVALUATOR] or \
            all(os.path.isfile(os.path.join(p, "test_puzzles.json")) for p in data_paths):
        return configured
    name = KIND_EVALUATORS.get(guess_kind(metadata))
    print(f"note: {', '.join(data_paths)} is not an ARC dataset (no test_puzzles.json): evaluators "
          f"{[name] if name else '[]'} instead of [{ARC_EVALUATOR}]; choose with evaluators=[...]")
    return [EvaluatorConfig(name=name)] if name else []


def create_evaluators(configs: List[EvaluatorConfig], eval_metadata: PuzzleDatasetMetadata, data_paths: List[str]) -> List[Any]:
    """One evaluator per configured name and dataset path, fresh (nothing carried over from earlier evaluations)."""
    evaluators = []
    for cfg in configs:
        kwargs = cfg.model_dump()
        name = kwargs.pop("name")
        try:  # a bad name, an option the evaluator does not take, data it cannot score
            cls = load_model_class(name, prefix="evaluators.")
            accepts_options(cls, name, kwargs)
            evaluators += [cls(data_path=path, eval_metadata=eval_metadata, **kwargs) for path in data_paths]
        except UserError as e:
            raise UserError(f"evaluators: {e}") from None
    return evaluators


def accepts_options(cls, name: str, options: dict) -> None:
    try:
        inspect.signature(cls).bind(data_path=None, eval_metadata=None, **options)
    except TypeError as e:
        raise UserError(f"{name}: {e}; see the options of {cls.__module__}.{cls.__name__}") from None


def copy_run_files(config: PretrainConfig, head: nn.Module) -> None:
    """Keep the resolved config and the model's source beside the checkpoints, as the reference does."""
    os.makedirs(config.checkpoint_path, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config.model_dump()), os.path.join(config.checkpoint_path, "all_config.yaml"))
    for obj in (type(head.model), type(head)):
        src = inspect.getsourcefile(obj)
        if src:
            shutil.copy(src, os.path.join(config.checkpoint_path, os.path.basename(src)))
