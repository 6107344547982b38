"""Shared machinery of the evaluators that judge each test row on its own (Sudoku, Maze): count exact matches
and rule-valid answers over rows that have labels, sum the counts over ranks, report rates with Wilson intervals."""
from typing import Dict, Optional

import numpy as np
import torch

from dataset.format import IGNORE_LABEL_ID
from evaluators.stats import accuracy_with_interval
from models.losses import row_metrics
from utils.distributed import gather_to_rank0


class RowCheckEvaluator:
    """Subclasses set `name` (the metric prefix) and implement `valid_rows(inputs, preds) -> bool [B]`."""
    name = ""
    required_outputs = {"inputs", "labels", "preds"}

    def begin_eval(self):
        self.count = self.exact = self.valid = 0

    def valid_rows(self, inputs: np.ndarray, preds: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update_batch(self, batch: Dict[str, torch.Tensor], preds: Dict[str, torch.Tensor]):
        merged = {k: v for collection in (batch, preds) for k, v in collection.items() if k in self.required_outputs}
        missing = self.required_outputs - merged.keys()
        if missing:
            raise KeyError(f"{self.name} evaluator needs outputs {sorted(missing)}; request them in return_keys")
        labels, predictions = merged["labels"].cpu(), merged["preds"].cpu()
        every_row = torch.ones(len(labels), dtype=torch.bool)
        metrics, _ = row_metrics(predictions, labels, torch.zeros(len(labels)), torch.zeros(len(labels)), every_row)
        self.count += int(metrics["count"])  # padding rows of the last test batch carry no labels
        self.exact += int(metrics["exact_accuracy"])
        keep = (labels != IGNORE_LABEL_ID).any(-1).numpy()
        inputs, predictions = merged["inputs"].cpu().numpy()[keep], predictions.numpy()[keep]
        if keep.any():
            self.valid += int(self.valid_rows(inputs, predictions).sum())

    def result(self, save_path: Optional[str], rank: int, world_size: int, group=None) -> Optional[Dict[str, float]]:
        gathered = gather_to_rank0((self.count, self.exact, self.valid), rank, world_size, group)
        if gathered is None:
            return None
        count, exact, valid = (sum(column) for column in zip(*gathered))
        return {**accuracy_with_interval(f"{self.name}/exact_accuracy", exact, count),
                **accuracy_with_interval(f"{self.name}/valid_accuracy", valid, count),
                f"{self.name}/count": float(count)}
