"""The puzzle loader (docs/dataset_format.md#sampler): training sampler and test iterator over one or more datasets on disk.

Training, per iteration (`epochs_per_iter` epochs): shuffle the groups of each epoch; from every group draw one
random puzzle; fill the global batch with that puzzle's examples (a random subset without replacement, cut at the
batch's remaining room); drop the last incomplete batch; each rank keeps its slice of the global batch.
Test: every example once, in order, in global batches padded to full size; each rank keeps its slice.
"""
import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pydantic
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dataset.format import IGNORE_LABEL_ID, SET_FIELDS, PuzzleDatasetMetadata, read_metadata, set_array_path
from utils.errors import UserError

MATCHING_FIELDS = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id", "sets")


class PuzzleDatasetConfig(pydantic.BaseModel):
    seed: int
    dataset_paths: List[str]
    global_batch_size: int
    test_set_mode: bool
    epochs_per_iter: int  # epochs per pass over the data (one `iter(dataset)`), to amortise per-pass overhead
    rank: int
    num_replicas: int


def merge_metadata(paths: List[str], metadatas: List[PuzzleDatasetMetadata]) -> PuzzleDatasetMetadata:
    """Check that the datasets can share one model and combine their totals. Set names of the second and later
    paths get their position appended ("all", "all1", ...), the names under which they are yielded."""
    first = metadatas[0]
    for path, m in zip(paths[1:], metadatas[1:]):
        for field in MATCHING_FIELDS:
            if getattr(m, field) != getattr(first, field):
                raise UserError(f"dataset_paths disagree: {path} has {field}={getattr(m, field)} but {paths[0]} has "
                                f"{getattr(first, field)}; datasets used together must share {', '.join(MATCHING_FIELDS)}")
    total_puzzles = sum(m.total_puzzles for m in metadatas)
    return first.model_copy(update=dict(
        # Summed like the reference, so embedding tables (and checkpoints) have the reference's shape; datasets
        # meant to be combined are built with disjoint ids via --puzzle-identifiers-start.
        num_puzzle_identifiers=sum(m.num_puzzle_identifiers for m in metadatas),
        total_groups=sum(m.total_groups for m in metadatas),
        total_puzzles=total_puzzles,
        mean_puzzle_examples=sum(m.mean_puzzle_examples * m.total_puzzles for m in metadatas) / max(total_puzzles, 1),
        sets=[s + (str(i) if i else "") for i in range(len(metadatas)) for s in first.sets],
    ))


def shuffled_examples(rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated random orderings of the example ranges [start, start + size): any prefix of a segment is a
    uniform draw without replacement."""
    segment = np.repeat(np.arange(len(sizes)), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    examples = starts[segment] + (np.arange(offsets[-1]) - offsets[segment])
    # Sorting by segment + a key in [0, 1) permutes within each segment only.
    return examples[np.argsort(segment + rng.random(offsets[-1]), kind="stable")]


def train_batch_indices(rng: np.random.Generator, group_order: np.ndarray, puzzle_indices: np.ndarray,
                        group_indices: np.ndarray, batch_size: int, chunk_groups: int = 1 << 16
                        ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (example indices, puzzle indices) of full global batches, in order. The groups are processed in
    chunks so memory stays bounded for many epochs per pass."""
    pending_examples = np.zeros(0, dtype=np.int64)
    pending_puzzles = np.zeros(0, dtype=np.int64)
    pending_offsets = np.zeros(1, dtype=np.int64)  # start of each pending group in the pending examples
    for chunk_start in range(0, len(group_order), chunk_groups):
        groups = group_order[chunk_start:chunk_start + chunk_groups]
        puzzles = rng.integers(group_indices[groups], group_indices[groups + 1])
        starts, sizes = puzzle_indices[puzzles], puzzle_indices[puzzles + 1] - puzzle_indices[puzzles]
        pending_examples = np.concatenate([pending_examples, shuffled_examples(rng, starts, sizes)])
        pending_puzzles = np.concatenate([pending_puzzles, np.repeat(puzzles, sizes)])
        pending_offsets = np.concatenate([pending_offsets[:-1], pending_offsets[-1] + np.concatenate([[0], np.cumsum(sizes)])])

        # A batch is the next `batch_size` examples from the start of a group; the group it ends in is cut, and
        # the next batch starts at the following group.
        start = 0
        while pending_offsets[start] + batch_size <= pending_offsets[-1]:
            begin, end = pending_offsets[start], pending_offsets[start] + batch_size
            yield pending_examples[begin:end], pending_puzzles[begin:end]
            start = int(np.searchsorted(pending_offsets, end, side="left"))
            if start == len(pending_offsets) - 1:
                break
        begin = pending_offsets[start]
        pending_examples, pending_puzzles = pending_examples[begin:], pending_puzzles[begin:]
        pending_offsets = pending_offsets[start:] - begin
    # What is left cannot fill a batch: dropped.


def test_batch_ranges(total_examples: int, global_batch_size: int, local_batch_size: int, rank: int
                      ) -> Iterator[Tuple[int, int, int]]:
    """(local start, local end, global effective batch size) of every sequential test batch for one rank."""
    for start in range(0, total_examples, global_batch_size):
        end = min(total_examples, start + global_batch_size)
        local_start = min(start + rank * local_batch_size, end)
        yield local_start, min(local_start + local_batch_size, end), end - start


class PuzzleDataset(IterableDataset):
    def __init__(self, config: PuzzleDatasetConfig, split: str = "train"):
        super().__init__()
        if not config.dataset_paths:
            raise UserError("dataset_paths is empty: give at least one dataset directory")
        if config.num_replicas < 1 or not 0 <= config.rank < config.num_replicas:
            raise UserError(f"rank {config.rank} is not in [0, num_replicas={config.num_replicas})")
        if config.global_batch_size % config.num_replicas:
            raise UserError(f"global_batch_size {config.global_batch_size} is not divisible by the {config.num_replicas} "
                            f"ranks; choose a multiple of the number of processes")
        self.config, self.split = config, split
        metadatas = [read_metadata(os.path.join(p, split)) for p in config.dataset_paths]
        self.metadata = merge_metadata(config.dataset_paths, metadatas)
        self._set_names = metadatas[0].sets
        self.local_batch_size = config.global_batch_size // config.num_replicas
        self._data: Optional[Dict[str, Dict[str, np.ndarray]]] = None
        # Resumable position: `_iters` counts sets started (it seeds each set's RNG, as in the reference);
        # a pass is one `iter(self)`; `_position` = batches handed out in the current pass.
        self._iters = 0
        self._pass_start_iters = 0
        self._position = 0
        self._skip = 0

    # Loaded on first iteration, in the process that iterates: memory maps do not survive pickling to workers.
    def _lazy_load(self):
        if self._data is not None:
            return
        self._data = {}
        for i, path in enumerate(self.config.dataset_paths):
            for set_name in self._set_names:
                split_dir = os.path.join(path, self.split)
                self._data[set_name + (str(i) if i else "")] = {
                    field: np.load(set_array_path(split_dir, set_name, field), mmap_mode="r" if field in ("inputs", "labels") else None)
                    for field in SET_FIELDS}

    def _collate(self, inputs: np.ndarray, labels: np.ndarray, puzzle_identifiers: np.ndarray) -> Dict[str, torch.Tensor]:
        batch = {"inputs": inputs.astype(np.int32), "labels": labels.astype(np.int32),
                 "puzzle_identifiers": puzzle_identifiers.astype(np.int32)}
        if self.metadata.ignore_label_id is not None:
            batch["labels"][batch["labels"] == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        pad = self.local_batch_size - len(batch["puzzle_identifiers"])
        if pad > 0:
            fill = {"inputs": self.metadata.pad_id, "labels": IGNORE_LABEL_ID, "puzzle_identifiers": self.metadata.blank_identifier_id}
            batch = {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1), constant_values=fill[k]) for k, v in batch.items()}
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _iter_test(self):
        for set_name, data in self._data.items():
            for start, end, effective in test_batch_ranges(len(data["inputs"]), self.config.global_batch_size,
                                                           self.local_batch_size, self.config.rank):
                puzzles = np.searchsorted(data["puzzle_indices"], np.arange(start, end), side="right") - 1
                yield set_name, self._collate(data["inputs"][start:end], data["labels"][start:end],
                                              data["puzzle_identifiers"][puzzles]), effective

    def _train_indices(self):
        """(set name, local example indices, local puzzle indices, global effective batch size) for one pass."""
        for set_name, data in self._data.items():
            self._iters += 1
            rng = np.random.Generator(np.random.Philox(seed=self.config.seed + self._iters))
            num_groups = len(data["group_indices"]) - 1
            group_order = np.concatenate([rng.permutation(num_groups) for _ in range(self.config.epochs_per_iter)])
            lo, hi = self.config.rank * self.local_batch_size, (self.config.rank + 1) * self.local_batch_size
            for examples, puzzles in train_batch_indices(rng, group_order, data["puzzle_indices"], data["group_indices"],
                                                         self.config.global_batch_size):
                yield set_name, examples[lo:hi], puzzles[lo:hi], len(examples)

    def _iter_train(self):
        self._pass_start_iters, skip, self._skip = self._iters, self._skip, 0
        for position, (set_name, examples, puzzles, effective) in enumerate(self._train_indices()):
            if position < skip:
                continue
            data = self._data[set_name]
            self._position = position + 1
            yield set_name, self._collate(data["inputs"][examples], data["labels"][examples],
                                          data["puzzle_identifiers"][puzzles]), effective
        self._position = 0

    def __iter__(self):
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError("PuzzleDataset already splits batches across ranks; use a DataLoader with num_workers <= 1")
        self._lazy_load()
        yield from (self._iter_test() if self.config.test_set_mode else self._iter_train())

    # ------------------------------------------------------------ resume
    def state_dict(self) -> Dict[str, int]:
        """Where training stands: `iters` at the start of the current pass and the batches already handed out in it.
        Only meaningful in the process that iterates (num_workers=0), or kept by the trainer when a worker iterates."""
        if self._position:
            return {"iters": self._pass_start_iters, "position": self._position}
        return {"iters": self._iters, "position": 0}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """The next `iter(self)` replays the pass started at `iters` and resumes after `position` batches."""
        self._iters, self._skip, self._position = int(state["iters"]), int(state["position"]), 0
