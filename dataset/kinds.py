"""Which puzzle family a dataset holds (it decides the evaluator, the decoding and the pictures)."""
import os
from typing import Any, Dict, List, Optional

from dataset.format import PuzzleDatasetMetadata

KINDS = ("sudoku", "maze", "arc")


def guess_kind(metadata: PuzzleDatasetMetadata, hints: str = "") -> Optional[str]:
    """sudoku / maze / arc from names in `hints` (dataset paths, builder, evaluators), else from the sizes."""
    hints = hints.lower()
    for kind in KINDS:
        if kind in hints:
            return kind
    side = int(round(metadata.seq_len ** 0.5))
    if metadata.seq_len == 900 and metadata.vocab_size == 12:
        return "arc"
    if side * side == metadata.seq_len and metadata.vocab_size == side + 2:
        return "sudoku"
    if side * side == metadata.seq_len and metadata.vocab_size == 6:
        return "maze"
    return None


def run_hints(run_config: Optional[Dict[str, Any]], data_paths: List[str]) -> str:
    """The names `guess_kind` reads in a run: its dataset directories, builder module and evaluators."""
    parts = list(data_paths)
    if run_config:
        parts += [str((run_config.get("data_build") or {}).get("module", ""))]
        parts += [str(e.get("name", "")) for e in run_config.get("evaluators") or []]
    return " ".join(os.path.basename(os.path.normpath(p)) for p in parts)
