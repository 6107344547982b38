"""ARC evaluator (docs/evaluation.md#arc-evaluator): map every augmented test prediction back to the original puzzle, vote across
augmentations, report pass@K and write an ARC Prize `submission.json`."""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dataset.arc_codec import crop_sizes, grid_hash, inverse_augment_grid, parse_augment_name, to_grid
from dataset.format import PuzzleDatasetMetadata
from utils.distributed import gather_to_rank0
from utils.errors import MissingFile


def vote(candidates: Sequence[Tuple[str, float]]) -> List[Tuple[str, int, float]]:
    """(prediction hash, sigmoid(q_halt)) pairs -> [(hash, count, mean q)] best first: most votes, then highest mean q."""
    stats: Dict[str, List[float]] = {}
    for h, q in candidates:
        s = stats.setdefault(h, [0, 0.0])
        s[0] += 1
        s[1] += q
    ranked = [(h, int(n), total / n) for h, (n, total) in stats.items()]
    return sorted(ranked, key=lambda r: (r[1], r[2]), reverse=True)


class ARC:
    required_outputs = {"inputs", "puzzle_identifiers", "q_halt_logits", "preds"}

    def __init__(self, data_path: str, eval_metadata: PuzzleDatasetMetadata, submission_K: int = 2,
                 pass_Ks: Sequence[int] = (1, 2, 5, 10, 100, 1000), aggregated_voting: bool = True):
        for required in ("identifiers.json", "test_puzzles.json"):
            if not os.path.isfile(os.path.join(data_path, required)):
                raise MissingFile(f"{os.path.join(data_path, required)} not found: the ARC evaluator needs a dataset "
                                        f"built by dataset/build_arc_dataset.py (or drop arc@ARC from evaluators)")
        with open(os.path.join(data_path, "identifiers.json")) as f:
            self.identifier_names: List[str] = json.load(f)
        with open(os.path.join(data_path, "test_puzzles.json")) as f:
            self.test_puzzles: Dict[str, dict] = json.load(f)
        self.blank_identifier_id = eval_metadata.blank_identifier_id
        self.submission_K = submission_K
        self.pass_Ks = tuple(pass_Ks)
        self.aggregated_voting = aggregated_voting
        self._grids: Dict[str, np.ndarray] = {}                           # prediction hash -> grid
        self._votes: Dict[str, Dict[str, List[Tuple[str, float]]]] = {}  # puzzle -> input hash -> [(pred hash, q)]

    def begin_eval(self):
        # With aggregated voting, predictions from earlier evaluations keep their votes (the reference behaviour).
        if not self.aggregated_voting:
            self._grids, self._votes = {}, {}

    def update_batch(self, batch: Dict[str, torch.Tensor], preds: Dict[str, torch.Tensor]):
        merged = {k: v for collection in (batch, preds) for k, v in collection.items() if k in self.required_outputs}
        missing = self.required_outputs - merged.keys()
        if missing:
            raise KeyError(f"ARC evaluator needs outputs {sorted(missing)}; request them in return_keys")
        identifiers = merged["puzzle_identifiers"].cpu().numpy()
        keep = identifiers != self.blank_identifier_id  # padding rows of the last test batch
        identifiers = identifiers[keep]
        inputs = merged["inputs"].cpu().numpy()[keep]
        predictions = merged["preds"].cpu().numpy()[keep]
        q_halt = merged["q_halt_logits"].detach().to(torch.float64).sigmoid().cpu().numpy()[keep]

        in_h, in_w = crop_sizes(inputs)
        pred_h, pred_w = crop_sizes(predictions)
        for i, identifier in enumerate(identifiers):
            name, tid, colour_map = parse_augment_name(self.identifier_names[identifier])
            grid_in = inverse_augment_grid((inputs[i].reshape(30, 30)[:in_h[i], :in_w[i]] - 2).astype(np.uint8), tid, colour_map)
            grid_pred = inverse_augment_grid((predictions[i].reshape(30, 30)[:pred_h[i], :pred_w[i]] - 2).astype(np.uint8), tid, colour_map)
            pred_hash = grid_hash(grid_pred)
            self._grids[pred_hash] = grid_pred
            self._votes.setdefault(name, {}).setdefault(grid_hash(grid_in), []).append((pred_hash, float(q_halt[i])))

    def result(self, save_path: Optional[str], rank: int, world_size: int, group=None) -> Optional[Dict[str, float]]:
        gathered = gather_to_rank0((self._grids, self._votes), rank, world_size, group)
        if gathered is None:
            return None

        grids: Dict[str, np.ndarray] = {}
        votes: Dict[str, Dict[str, List[Tuple[str, float]]]] = {}
        for rank_grids, rank_votes in gathered:
            grids.update(rank_grids)
            for name, per_input in rank_votes.items():
                for input_hash, candidates in per_input.items():
                    votes.setdefault(name, {}).setdefault(input_hash, []).extend(candidates)

        submission: Dict[str, List[Dict[str, list]]] = {}
        solved = np.zeros(len(self.pass_Ks))
        for name, puzzle in self.test_puzzles.items():
            submission[name] = []
            correct = np.zeros(len(self.pass_Ks))
            for pair in puzzle["test"]:
                input_hash = grid_hash(to_grid(pair["input"], f"test_puzzles.json: puzzle {name} test input"))
                label_hash = grid_hash(to_grid(pair["output"], f"test_puzzles.json: puzzle {name} test output"))
                ranked = vote(votes.get(name, {}).get(input_hash, []))
                hashes = [h for h, _, _ in ranked]
                correct += [label_hash in hashes[:k] for k in self.pass_Ks]
                # Keep one entry per test input (the format is positional); repeat the best guess to fill K attempts.
                attempts = [grids[h].tolist() for h in hashes[:self.submission_K]] or [[[0]]]
                attempts += [attempts[0]] * (self.submission_K - len(attempts))
                submission[name].append({f"attempt_{i + 1}": grid for i, grid in enumerate(attempts)})
            solved += correct / len(puzzle["test"])

        if save_path is not None:
            os.makedirs(save_path, exist_ok=True)
            with open(os.path.join(save_path, "submission.json"), "w") as f:
                json.dump(submission, f)
        num_puzzles = max(len(self.test_puzzles), 1)
        return {f"ARC/pass@{k}": float(solved[i] / num_puzzles) for i, k in enumerate(self.pass_Ks)}
