"""Pictures of the reasoning: the puzzle, the answer after every supervision step and the label, for a few test
puzzles — logged to W&B during training (reasoning_images) and written as PNG/GIF by evaluate.py (save_reasoning)."""
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from dataset.format import IGNORE_LABEL_ID
from dataset.kinds import guess_kind
from evaluation.halting import run_rows


def dataset_kind(metadata, data_paths: Iterable[str] = (), evaluator_names: Iterable[str] = ()) -> Optional[str]:
    """'sudoku', 'maze', 'arc' or None (no picture) for a dataset, from its paths, evaluators and sizes."""
    return guess_kind(metadata, " ".join([*data_paths, *evaluator_names]))


def first_test_rows(loader, n: int) -> Dict[str, torch.Tensor]:
    """The first n labelled rows of a test loader (this rank's slice); the last test batch is padded with rows
    that have no labels."""
    parts, have = [], 0
    for _, batch, _ in loader:
        keep = (batch["labels"] != IGNORE_LABEL_ID).any(-1)
        parts.append({k: v[keep] for k, v in batch.items()})
        have += int(keep.sum())
        if have >= n:
            break
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


def reasoning_traces(head: nn.Module, rows: Dict[str, torch.Tensor], halt_threshold: Optional[float] = None
                     ) -> List[Dict[str, Any]]:
    """Per row, in order: the puzzle, the label (ignored cells as pad, token 0, as in every built dataset), the
    answer after each step, the steps and the halting confidence. Call with `head` in eval mode: every row runs
    halt_max_steps, or halts early with `halt_threshold`."""
    device = next(iter(head.parameters())).device
    with torch.inference_mode():
        batch, outputs = run_rows(head, rows, halt_threshold, device, record_steps=True)
    traces = []
    for j in range(len(batch["inputs"])):
        steps = int(outputs["steps"][j])
        label = batch["labels"][j].cpu().numpy()
        traces.append({"puzzle": batch["inputs"][j].cpu().numpy(), "label": np.where(label == IGNORE_LABEL_ID, 0, label),
                       "step_preds": list(outputs["step_preds"][j, :steps].cpu().numpy()), "steps": steps,
                       "confidence": float(torch.sigmoid(outputs["q_halt_logits"][j].float()))})
    return traces


def reasoning_images(head: nn.Module, batch: Dict[str, torch.Tensor], kind: Optional[str], n: int = 4,
                     halt_threshold: Optional[float] = None) -> Dict[str, Any]:
    """{"reasoning/<i>": image} for the first `n` labelled rows of a test batch; {} when `kind` is None."""
    from visualize.images import steps_image
    if kind is None or n <= 0:
        return {}
    rows = first_test_rows([("all", batch, None)], n)
    if not len(rows["inputs"]):
        return {}
    return {f"reasoning/{i}": steps_image(t["puzzle"], t["step_preds"], kind, label=t["label"])
            for i, t in enumerate(reasoning_traces(head, rows, halt_threshold))}


def save_reasoning(head: nn.Module, rows: Dict[str, torch.Tensor], kind: Optional[str], halt_threshold: Optional[float],
                   output_dir: Path) -> List[Path]:
    """PNG (all steps side by side) and GIF (one frame per step) per puzzle under output_dir/reasoning, and the
    terminal view of each answer."""
    from visualize.images import save_steps_gif, save_steps_png
    from visualize.terminal import render_puzzle_answer
    if kind is None:
        print("visualize: cannot tell whether the dataset holds sudoku, maze or arc puzzles; skipped")
        return []
    written = []
    for index, t in enumerate(reasoning_traces(head, rows, halt_threshold)):
        stem = output_dir / "reasoning" / f"puzzle_{index:03d}"
        written += [save_steps_png(stem.with_suffix(".png"), t["puzzle"], t["step_preds"], kind, t["label"]),
                    save_steps_gif(stem.with_suffix(".gif"), t["puzzle"], t["step_preds"], kind, t["label"])]
        print(f"\npuzzle {index}: {t['steps']} steps, halting confidence {t['confidence']:.3f}, "
              f"{'solved' if (t['step_preds'][-1] == t['label']).all() else 'not solved'}")
        print(render_puzzle_answer(t["puzzle"], t["step_preds"][-1], kind, label=t["label"], step=t["steps"]))
    return written
