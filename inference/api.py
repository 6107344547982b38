"""Python inference API: load a checkpoint, solve plain puzzles.

    solver = Solver.from_checkpoint("checkpoints/Sudoku6-quick-ACT-torch")     # newest run, highest step
    result = solver.solve([[0, 0, 3, ...], ...], return_steps=True)
    result.answer, result.steps, result.confidence, result.step_answers
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from dataset.format import IGNORE_LABEL_ID
from dataset.kinds import guess_kind, run_hints
from inference.encoding import decode_answer, encode, read_vocabulary
from evaluation.halting import run_rows
from models.loading import LoadedCheckpoint, load_checkpoint, test_split_paths
from utils.device import pick_device
from utils.errors import UserError


@dataclass
class Solution:
    answer: Any                       # Sudoku: digit rows; maze: text lines; ARC: colour rows
    steps: int                        # supervision steps used
    confidence: float                 # sigmoid(q_halt) at the last step: the model's belief that it is right
    tokens: np.ndarray                # the answer as tokens (the encoding of the dataset)
    puzzle_tokens: np.ndarray
    step_answers: Optional[List[Any]] = None   # the answer after every step (return_steps=True)
    step_tokens: Optional[np.ndarray] = None   # [steps, seq_len]
    step_confidences: Optional[List[float]] = None


class Solver:
    def __init__(self, loaded: LoadedCheckpoint, device: torch.device, kind: Optional[str] = None,
                 data_path: Optional[str] = None):
        self.loaded = loaded
        self.head = loaded.head
        self.device = device
        self.seq_len = loaded.metadata.seq_len
        self.blank_identifier_id = loaded.metadata.blank_identifier_id
        data_paths = [data_path] if data_path else test_split_paths(loaded.run_config or {})
        # datasets of the custom and arithmetic builders carry their symbols: no guessing from the sizes
        self.vocab = read_vocabulary(data_paths[0]) if data_paths else None
        self.kind = kind or ("custom" if self.vocab else guess_kind(loaded.metadata, run_hints(loaded.run_config, data_paths)))
        if self.kind is None:
            raise UserError(f"cannot tell whether {loaded.weights} solves sudoku, maze or arc puzzles: pass kind=...")
        if self.kind == "custom" and self.vocab is None:
            raise UserError(f"kind='custom' needs the dataset's vocab.json: pass data_path=<the run's dataset>")

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", kind: Optional[str] = None, data_path: Optional[str] = None,
                        arch: Optional[dict] = None) -> "Solver":
        """`path`: a weights file, a run directory or a directory of runs. `data_path`: a dataset of the checkpoint's
        shape, needed only when the run's data is gone and the weights do not tell the sequence length."""
        from models.loading import read_split_metadata
        torch_device = pick_device(device)
        metadata = read_split_metadata(data_path) if data_path else None
        return cls(load_checkpoint(path, torch_device, metadata=metadata, arch=arch, data_name=data_path or ""),
                   torch_device, kind, data_path)

    def solve(self, puzzle: Any, halt: str = "adaptive", halt_threshold: float = 0.5, return_steps: bool = False,
              puzzle_identifier: int = None):
        """One puzzle -> a Solution (an ARC task -> a list, one per test input)."""
        rows = encode(puzzle, self.kind, self.seq_len, self.vocab)
        solutions = self._run(rows, [puzzle_identifier] * len(rows), halt, halt_threshold, return_steps)
        return solutions if self.kind == "arc" and isinstance(puzzle, dict) else solutions[0]

    def solve_batch(self, puzzles: Sequence[Any], halt: str = "adaptive", halt_threshold: float = 0.5,
                    return_steps: bool = False) -> List[Any]:
        """Several puzzles in one batch; the result is in the order given."""
        encoded = [encode(p, self.kind, self.seq_len, self.vocab) for p in puzzles]
        flat = [row for rows in encoded for row in rows]
        solutions = self._run(flat, [None] * len(flat), halt, halt_threshold, return_steps)
        out, i = [], 0
        for puzzle, rows in zip(puzzles, encoded):
            out.append(solutions[i:i + len(rows)] if self.kind == "arc" and isinstance(puzzle, dict) else solutions[i])
            i += len(rows)
        return out

    def solve_tokens(self, inputs: np.ndarray, puzzle_identifiers: Optional[np.ndarray] = None, halt: str = "adaptive",
                     halt_threshold: float = 0.5, return_steps: bool = False) -> List[Solution]:
        """Already-encoded rows [n, seq_len] (e.g. from a dataset)."""
        ids = list(puzzle_identifiers) if puzzle_identifiers is not None else [None] * len(inputs)
        return self._run(list(np.asarray(inputs)), ids, halt, halt_threshold, return_steps)

    @torch.inference_mode()
    def _run(self, rows: List[np.ndarray], identifiers: List[Optional[int]], halt: str, halt_threshold: float,
             return_steps: bool) -> List[Solution]:
        if halt not in ("fixed", "adaptive"):
            raise UserError(f"halt={halt!r}: use fixed or adaptive")
        if halt == "adaptive" and not 0 < halt_threshold < 1:
            raise UserError(f"halt_threshold={halt_threshold}: a halting confidence lies strictly between 0 and 1 (e.g. 0.5)")
        if not rows:
            return []
        inputs = torch.tensor(np.stack(rows), dtype=torch.int32)
        if inputs.shape[1] != self.seq_len:
            raise UserError(f"puzzle has {inputs.shape[1]} tokens but this checkpoint takes seq_len {self.seq_len}")
        ids = torch.tensor([self.blank_identifier_id if i is None else int(i) for i in identifiers], dtype=torch.int32)
        batch = {"inputs": inputs, "labels": torch.full_like(inputs, IGNORE_LABEL_ID), "puzzle_identifiers": ids}
        batch, outputs = run_rows(self.head, batch, halt_threshold if halt == "adaptive" else None, self.device,
                                  record_steps=return_steps)
        results = []
        for j in range(len(rows)):
            tokens = outputs["preds"][j].cpu().numpy()
            steps = int(outputs["steps"][j])
            solution = Solution(answer=decode_answer(tokens, self.kind, self.vocab), steps=steps,
                                confidence=float(torch.sigmoid(outputs["q_halt_logits"][j].float())),
                                tokens=tokens, puzzle_tokens=batch["inputs"][j].cpu().numpy())
            if return_steps:
                solution.step_tokens = outputs["step_preds"][j, :steps].cpu().numpy()
                solution.step_answers = [decode_answer(t, self.kind, self.vocab) for t in solution.step_tokens]
                solution.step_confidences = torch.sigmoid(outputs["step_q_halt_logits"][j, :steps]).tolist()
            results.append(solution)
        return results
