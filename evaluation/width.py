"""Test-time width (docs/evaluation.md#test-time-width): N answer-preserving variants of each test puzzle, each
solved, mapped back and combined by a vote. Sudoku: digit relabelling, band/stack permutations, row-within-band and
column-within-stack permutations, transpose (square boxes only); Maze: the 8 dihedral maps. Rules: `majority`
(the most frequent answer), `confidence` (the answer with the highest mean sigmoid(q_halt)), `verifier` (the most
frequent answer that obeys the puzzle's rules, by the Sudoku/Maze evaluators' checkers; all candidates when none
does). Optionally (`latent_noise`) every variant but the first also starts from a perturbed initial latent state."""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from dataset.checkers import sudoku_box_shape
from dataset.dihedral import dihedral_transform
from dataset.format import IGNORE_LABEL_ID
from evaluators.stats import add_wilson_intervals
from utils.errors import UserError

VOTE_RULES = ("majority", "confidence", "verifier")


@dataclass
class TokenMap:
    """A symmetry of the flat token sequence: new[i] = tokens[old[cells[i]]]. Values outside the vocabulary (the
    ignore label) are kept as they are."""
    name: str
    cells: np.ndarray   # [S], a permutation of the positions
    tokens: np.ndarray  # [V], a permutation of the token ids

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        inside = (x >= 0) & (x < len(self.tokens))
        relabelled = np.where(inside, self.tokens[np.clip(x, 0, len(self.tokens) - 1)], x)
        return relabelled[..., self.cells]

    def inverse(self) -> "TokenMap":
        return TokenMap(f"inverse of {self.name}", np.argsort(self.cells), np.argsort(self.tokens))


def sudoku_maps(size: int, count: int, seed: int = 0) -> List[TokenMap]:
    """The identity, then count - 1 random Sudoku symmetries of an n x n board (tokens: pad 0, blank 1, digit d at
    d + 1): a digit relabelling, band and row-within-band permutations, stack and column-within-stack permutations
    and, where the boxes are square, a transpose."""
    rng = np.random.default_rng(seed)
    box_rows, box_cols = sudoku_box_shape(size)
    vocab = size + 2
    maps = [TokenMap("identity", np.arange(size * size), np.arange(vocab))]
    for k in range(1, count):
        digits = np.concatenate(([0, 1], 2 + rng.permutation(size)))
        rows = np.concatenate([band * box_rows + rng.permutation(box_rows)
                               for band in rng.permutation(size // box_rows)])
        cols = np.concatenate([stack * box_cols + rng.permutation(box_cols)
                               for stack in rng.permutation(size // box_cols)])
        index = np.arange(size * size).reshape(size, size)
        transpose = box_rows == box_cols and bool(rng.integers(2))
        if transpose:
            index = index.T
        maps.append(TokenMap(f"sudoku symmetry {k}{' (transposed)' if transpose else ''}",
                             index[rows][:, cols].reshape(-1), digits))
    return maps


def maze_maps(side: int, count: int, vocab_size: int = 6) -> List[TokenMap]:
    """The first `count` of the 8 dihedral maps of a side x side maze (identity first, dataset/dihedral.py's order)."""
    if count > 8:
        raise UserError(f"votes={count}: a maze has 8 symmetries (the dihedral maps); give votes=8 or fewer")
    index = np.arange(side * side).reshape(side, side)
    return [TokenMap(f"dihedral {tid}", np.ascontiguousarray(dihedral_transform(index, tid)).reshape(-1),
                     np.arange(vocab_size)) for tid in range(count)]


def symmetry_maps(kind: Optional[str], seq_len: int, vocab_size: int, count: int, seed: int = 0) -> List[TokenMap]:
    side = int(round(seq_len ** 0.5))
    if kind == "sudoku":
        return sudoku_maps(side, count, seed)
    if kind == "maze":
        return maze_maps(side, count, vocab_size)
    raise UserError(f"votes={count}: test-time width needs the symmetries of Sudoku or Maze data, and this data is "
                    f"{kind or 'of no known kind'}; ARC votes over its own augmentations (evaluators=[{{name: arc@ARC}}])")


def initial_state_buffers(head) -> List[torch.Tensor]:
    """The initial latent vectors of a recursive model (H_init, L_init, L<i>_init, init_hidden)."""
    return [b for name, b in head.named_buffers()
            if name.rsplit(".", 1)[-1].endswith("_init") or name.rsplit(".", 1)[-1] == "init_hidden"]


@contextmanager
def noisy_initial_state(head, std: float, seed: int):
    """Within the block every initial latent vector is shifted by std * N(0, 1) (seeded); restored afterwards."""
    buffers = initial_state_buffers(head) if std > 0 else []
    if std > 0 and not buffers:
        raise UserError("latent_noise: this model has no initial latent state (H_init, L_init or init_hidden) to perturb")
    saved = [b.clone() for b in buffers]
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for b in buffers:
                b.add_((std * torch.randn(b.shape, generator=generator, dtype=torch.float32)).to(b.device, b.dtype))
        yield
    finally:
        with torch.no_grad():
            for b, original in zip(buffers, saved):
                b.copy_(original)


def vote(candidates: np.ndarray, confidences: np.ndarray, rule: str, valid: Optional[np.ndarray] = None) -> int:
    """Index of the winning candidate among `candidates` [N, S] (answers already mapped back), `confidences` [N]
    (sigmoid(q_halt)), `valid` [N] (the rule checker's verdict, for `verifier`). Ties: more votes, then higher
    mean confidence, then the earliest candidate."""
    if rule not in VOTE_RULES:
        raise UserError(f"vote={rule!r}: use one of {', '.join(VOTE_RULES)}")
    pool = np.arange(len(candidates))
    if rule == "verifier":
        if valid is None:
            raise UserError("vote=verifier needs a rule checker (Sudoku or Maze data)")
        if valid.any():
            pool = pool[valid]
    groups: Dict[bytes, List[int]] = {}
    for i in pool:
        groups.setdefault(np.ascontiguousarray(candidates[i]).tobytes(), []).append(int(i))

    def score(members: List[int]):
        mean_confidence = float(np.mean(confidences[members]))
        if rule == "confidence":
            return (mean_confidence, len(members), -members[0])
        return (len(members), mean_confidence, -members[0])
    return max(groups.values(), key=score)[0]


def vote_counts(votes: int) -> List[int]:
    """The widths reported: 1, 2, 4, ... up to `votes`, and `votes` itself."""
    counts = [1]
    while counts[-1] * 2 < votes:
        counts.append(counts[-1] * 2)
    return sorted(set(counts + [votes]))


def evaluate_width(head, batches: Iterable, maps: Sequence[TokenMap], device: torch.device,
                   threshold: Optional[float] = None, checker: Optional[Callable] = None,
                   max_batches: Optional[int] = None, latent_noise: float = 0.0
                   ) -> Dict[str, Dict[int, Dict[str, float]]]:
    """Exact accuracy per vote rule and width n (the first n maps): {rule: {n: {exact_accuracy, its interval, count}}}.
    `checker(inputs, preds) -> bool [B]` (token arrays) enables `verifier`; `threshold` None: fixed halting;
    `latent_noise` > 0: variant j > 0 starts from the initial latent state plus latent_noise * N(0, 1) (seed j)."""
    from evaluation.halting import run_rows

    counts = vote_counts(len(maps))
    rules = [r for r in VOTE_RULES if r != "verifier" or checker is not None]
    correct = {r: {n: 0 for n in counts} for r in rules}
    total = 0
    inverses = [m.inverse() for m in maps]
    for b, (_, batch, _) in enumerate(batches):
        if max_batches is not None and b >= max_batches:
            break
        inputs, labels = batch["inputs"].cpu().numpy(), batch["labels"].cpu().numpy()
        real = (labels != IGNORE_LABEL_ID).any(-1)
        candidates, confidences = [], []
        for j, (m, inverse) in enumerate(zip(maps, inverses)):
            rows = dict(batch, inputs=torch.from_numpy(m.apply(inputs)).to(batch["inputs"].dtype),
                        labels=torch.from_numpy(m.apply(labels)).to(batch["labels"].dtype))
            with noisy_initial_state(head, latent_noise if j > 0 else 0.0, seed=j):
                _, outputs = run_rows(head, rows, threshold, device)
            candidates.append(inverse.apply(outputs["preds"].cpu().numpy()))
            confidences.append(torch.sigmoid(outputs["q_halt_logits"].float()).cpu().numpy())
        candidates, confidences = np.stack(candidates, 1), np.stack(confidences, 1)   # [B, N, S], [B, N]
        valid = None
        if checker is not None:
            valid = np.stack([checker(inputs, candidates[:, j]) for j in range(len(maps))], 1)
        for row in np.flatnonzero(real):
            exact_target = labels[row]
            for rule in rules:
                for n in counts:
                    chosen = vote(candidates[row, :n], confidences[row, :n], rule,
                                  None if valid is None else valid[row, :n])
                    answer = candidates[row, chosen]
                    correct[rule][n] += bool(((answer == exact_target) | (exact_target == IGNORE_LABEL_ID)).all())
        total += int(real.sum())
    return {rule: {n: add_wilson_intervals({"exact_accuracy": correct[rule][n] / max(total, 1)}, total)
                   | {"count": total} for n in counts} for rule in rules}


def format_width_table(results: Dict[str, Dict[int, Dict[str, float]]]) -> str:
    rules = list(results)
    lines = [f"{'votes':>5} " + " ".join(f"{rule + ' [95% CI]':<27}" for rule in rules)]
    for n in next(iter(results.values())):
        cells = []
        for rule in rules:
            r = results[rule][n]
            cells.append(f"{r['exact_accuracy']:.4f} [{r['exact_accuracy_ci_low']:.4f}, {r['exact_accuracy_ci_high']:.4f}]")
        lines.append(f"{n:>5} " + " ".join(f"{c:<27}" for c in cells))
    return "\n".join(lines)


def rule_checker(kind: Optional[str], metadata) -> Callable:
    """The Sudoku or Maze evaluator's rule check, `(inputs, preds) -> bool [B]` over token arrays."""
    if kind == "sudoku":
        from evaluators.sudoku import Sudoku
        return Sudoku(data_path="", eval_metadata=metadata).valid_rows
    if kind == "maze":
        from evaluators.maze import Maze
        return Maze(data_path="", eval_metadata=metadata).valid_rows
    raise UserError(f"vote=verifier needs a rule checker: Sudoku or Maze data, not {kind or 'data of no known kind'}")


def width_report(head, loader, metadata, kind: Optional[str], votes: int, rule: str, device: torch.device,
                 threshold: Optional[float] = None, max_batches: Optional[int] = None, seed: int = 0,
                 latent_noise: float = 0.0) -> Dict:
    """evaluate.py votes=N vote=<rule>: accuracy against the number of variants for every rule (`verifier` where
    the data has a checker), with `exact_accuracy` the chosen rule's at N. With latent_noise > 0 data without
    symmetries (other than Sudoku and Maze) is voted over noisy initial states of the unchanged puzzle."""
    if latent_noise > 0 and kind not in ("sudoku", "maze"):
        maps = [TokenMap("identity", np.arange(metadata.seq_len), np.arange(metadata.vocab_size))] * votes
    else:
        maps = symmetry_maps(kind, metadata.seq_len, metadata.vocab_size, votes, seed)
    checker = rule_checker(kind, metadata) if kind in ("sudoku", "maze") else None
    if rule == "verifier" and checker is None:
        rule_checker(kind, metadata)  # the one-line error
    results = evaluate_width(head, loader, maps, device, threshold, checker, max_batches, latent_noise)
    return {"votes": votes, "vote": rule, "maps": [m.name for m in maps], "latent_noise": latent_noise,
            "halt": "fixed" if threshold is None else "adaptive",
            "exact_accuracy": results[rule][votes]["exact_accuracy"], "results": results}
