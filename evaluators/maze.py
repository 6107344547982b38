"""Maze evaluator: exact match against the label, and validity: the answer is the maze with one shortest
S -> G path marked, which also credits a different path of the same (shortest) length."""
import numpy as np

from dataset.checkers import MAZE_CHARSET, is_valid_maze_path
from dataset.format import PuzzleDatasetMetadata
from evaluators.row_checks import RowCheckEvaluator
from utils.errors import UserError


class Maze(RowCheckEvaluator):
    name = "Maze"

    def __init__(self, data_path: str, eval_metadata: PuzzleDatasetMetadata, **kwargs):
        if kwargs:
            raise UserError(f"Maze evaluator got unknown options {sorted(kwargs)}; it takes none")
        side = int(round(eval_metadata.seq_len ** 0.5))
        if side * side != eval_metadata.seq_len or eval_metadata.vocab_size != len(MAZE_CHARSET) + 1:
            raise UserError(f"Maze evaluator: seq_len {eval_metadata.seq_len} / vocab_size {eval_metadata.vocab_size} is not "
                            f"a square maze over {MAZE_CHARSET!r} (vocab {len(MAZE_CHARSET) + 1}); use maze@Maze only with Maze datasets")
        self.side = side
        self.begin_eval()

    def valid_rows(self, inputs: np.ndarray, preds: np.ndarray) -> np.ndarray:
        # Tokens outside 1..5 (pad 0) are no maze character; the checker would read 0 as the last one, 'o'.
        in_alphabet = ((preds >= 1) & (preds <= len(MAZE_CHARSET))).all(-1)
        return np.array([ok and is_valid_maze_path(maze, answer) for maze, answer, ok in zip(inputs, preds, in_alphabet)], dtype=bool)
