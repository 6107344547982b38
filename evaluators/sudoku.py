"""Sudoku evaluator: exact match against the label, and rule validity (a complete grid obeying every row, column
and box, agreeing with the clues), which also credits a correct solution other than the label."""
from typing import Optional

import numpy as np

from dataset.checkers import valid_sudoku_solutions
from dataset.format import PuzzleDatasetMetadata
from evaluators.row_checks import RowCheckEvaluator
from utils.errors import UserError


def board_size(seq_len: int, vocab_size: Optional[int] = None) -> int:
    """Side n of a Sudoku dataset (seq_len n*n, vocab n + 2: pad, blank, digits 1..n); one clear error otherwise."""
    n = int(round(seq_len ** 0.5))
    if n * n != seq_len or n < 2:
        raise UserError(f"Sudoku evaluator: seq_len {seq_len} is not an n*n board; use sudoku@Sudoku only with Sudoku datasets")
    if vocab_size is not None and vocab_size != n + 2:
        raise UserError(f"Sudoku evaluator: vocab_size {vocab_size} does not fit a {n}x{n} board (expected {n + 2}); "
                        f"use sudoku@Sudoku only with Sudoku datasets")
    return n


class Sudoku(RowCheckEvaluator):
    name = "Sudoku"

    def __init__(self, data_path: str, eval_metadata: PuzzleDatasetMetadata, **kwargs):
        if kwargs:
            raise UserError(f"Sudoku evaluator got unknown options {sorted(kwargs)}; it takes none")
        self.size = board_size(eval_metadata.seq_len, eval_metadata.vocab_size)
        self.begin_eval()

    def valid_rows(self, inputs: np.ndarray, preds: np.ndarray) -> np.ndarray:
        return valid_sudoku_solutions(inputs, preds, tokens=True)
