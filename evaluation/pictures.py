"""Pictures of the reasoning for training evaluations: the puzzle, the answer after every supervision step and the
label, for a few test puzzles (logged to W&B with Tracker.log_images)."""
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn

from evaluation.halting import AdaptiveHalting
from dataset.format import IGNORE_LABEL_ID
from dataset.kinds import guess_kind
from visualize.images import steps_image


def dataset_kind(metadata, data_paths: Iterable[str] = (), evaluator_names: Iterable[str] = ()) -> Optional[str]:
    """'sudoku', 'maze', 'arc' or None (no picture) for a dataset, from its paths, evaluators and sizes."""
    return guess_kind(metadata, " ".join([*data_paths, *evaluator_names]))


@torch.inference_mode()
def reasoning_images(head: nn.Module, batch: Dict[str, torch.Tensor], kind: Optional[str], n: int = 4,
                     halt_threshold: Optional[float] = None) -> Dict[str, Any]:
    """{"reasoning/<i>": image} for the first `n` labelled rows of `batch`, run on `head` as it is (call it in eval
    mode: every row runs halt_max_steps, or halts early with `halt_threshold`). {} when `kind` is None."""
    if kind is None or n <= 0:
        return {}
    labelled = (batch["labels"] != IGNORE_LABEL_ID).any(-1).nonzero().flatten()[:n].cpu()
    if len(labelled) == 0:
        return {}
    rows = {k: v[labelled.to(v.device)] for k, v in batch.items()}
    device = next(iter(head.parameters())).device
    runner = AdaptiveHalting(halt_threshold, record_steps=True)
    images = {}
    for _, chunk, _, outputs in runner(head, [("all", rows, len(labelled))], (), device):
        for j, index in enumerate(outputs["row_index"].tolist()):
            steps = int(outputs["steps"][j])
            labels = chunk["labels"][j].cpu().numpy()
            labels = np.where(labels == IGNORE_LABEL_ID, 0, labels)  # ignored cells are pad (token 0) in every built dataset
            images[f"reasoning/{index}"] = steps_image(chunk["inputs"][j].cpu().numpy(),
                                                       list(outputs["step_preds"][j, :steps].numpy()), kind,
                                                       label=labels)
    return dict(sorted(images.items()))
