"""ARC evaluator (docs/evaluation.md#arc-evaluator): map every augmented test prediction back to the original puzzle, vote across
augmentations, report both ARC scores and write an ARC Prize `submission.json` and a per-task report.

The two scores (README "ARC scores"): `ARC/task_mean_pass@K` (the reference's `ARC/pass@K`, kept under that name
too) averages, per task, the fraction of its test outputs solved, then averages over tasks; `ARC/test_output_pass@K`
(the ARC Prize's score at K = 2) counts every test output solved over all tasks and divides by their number.

Votes are kept per test output as a table prediction hash -> [count, sum of sigmoid(q_halt)], and gathered to rank 0
a chunk of test outputs at a time, so rank 0 holds a chunk's tables of every rank plus the winners, not every
prediction of every rank at once. Only the winners' grids travel, in a second round."""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dataset.arc_codec import crop_sizes, encode_grid, grid_hash, inverse_augment_grid, parse_augment_name, to_grid
from dataset.format import PuzzleDatasetMetadata
from utils.distributed import broadcast_from_rank0, gather_to_rank0
from utils.errors import MissingFile, UserError

Table = Dict[str, List[float]]   # prediction hash -> [votes, sum of sigmoid(q_halt)]
REPORT_CANDIDATES = 2            # candidates per test output in arc_report.json


def vote(candidates: Sequence[Tuple[str, float]]) -> List[Tuple[str, int, float]]:
    """(prediction hash, sigmoid(q_halt)) pairs -> [(hash, count, mean q)] best first: most votes, then highest mean q."""
    table: Table = {}
    for h, q in candidates:
        add_votes(table, h, 1, q)
    return rank_table(table)


def add_votes(table: Table, pred_hash: str, count: float, q_sum: float) -> None:
    entry = table.setdefault(pred_hash, [0, 0.0])
    entry[0] += count
    entry[1] += q_sum


def rank_table(table: Table) -> List[Tuple[str, int, float]]:
    """A vote table -> [(hash, count, mean q)], most votes first, then highest mean q, then hash (a fixed order)."""
    ranked = [(h, int(n), total / n) for h, (n, total) in table.items()]
    return sorted(ranked, key=lambda r: (-r[1], -r[2], r[0]))


class ARC:
    required_outputs = {"inputs", "puzzle_identifiers", "q_halt_logits", "preds"}

    def __init__(self, data_path: str, eval_metadata: PuzzleDatasetMetadata, submission_K: int = 2,
                 pass_Ks: Sequence[int] = (1, 2, 5, 10, 100, 1000), aggregated_voting: bool = False,
                 labelled: bool = True, report_images: Union[int, List[str]] = 0, gather_chunk: int = 256):
        for required in ("identifiers.json", "test_puzzles.json"):
            if not os.path.isfile(os.path.join(data_path, required)):
                raise MissingFile(f"{os.path.join(data_path, required)} not found: the ARC evaluator needs a dataset "
                                  f"built by dataset/build_arc_dataset.py (or drop arc@ARC from evaluators)")
        if submission_K < 1 or gather_chunk < 1 or not pass_Ks or min(pass_Ks) < 1:
            raise UserError(f"arc@ARC: submission_K={submission_K}, gather_chunk={gather_chunk} and pass_Ks={list(pass_Ks)} "
                            f"must be positive (the competition's submission_K is 2)")
        with open(os.path.join(data_path, "identifiers.json")) as f:
            self.identifier_names: List[str] = json.load(f)
        with open(os.path.join(data_path, "test_puzzles.json")) as f:
            self.test_puzzles: Dict[str, dict] = json.load(f)
        self.blank_identifier_id = eval_metadata.blank_identifier_id
        self.submission_K = submission_K
        self.pass_Ks = tuple(pass_Ks)
        self.aggregated_voting = aggregated_voting
        self.labelled = labelled            # False: the test outputs are placeholders (a challenges file, no solutions)
        self.report_images = report_images  # tasks drawn as PNG: the first N, or these ids
        self.gather_chunk = gather_chunk    # test outputs per gather
        self._grids: Dict[str, np.ndarray] = {}                 # prediction hash -> grid
        self._tables: Dict[Tuple[str, str], Table] = {}         # (puzzle, test input hash) -> vote table

    # ------------------------------------------------------------------ collecting votes
    def begin_eval(self):
        # Each evaluation votes afresh: one checkpoint's predictions never pool with another's. aggregated_voting=True
        # keeps the votes of earlier evaluations (the reference's behaviour); ensembles pool with absorb().
        if not self.aggregated_voting:
            self._grids, self._tables = {}, {}

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
            add_votes(self._tables.setdefault((name, grid_hash(grid_in)), {}), pred_hash, 1, float(q_halt[i]))

    def absorb(self, other: "ARC") -> None:
        """Add another evaluator's votes (this rank's share) to these: an explicit ensemble of checkpoints."""
        self._grids.update(other._grids)
        for key, table in other._tables.items():
            mine = self._tables.setdefault(key, {})
            for pred_hash, (count, q_sum) in table.items():
                add_votes(mine, pred_hash, count, q_sum)

    # ------------------------------------------------------------------ voting over every rank
    def test_outputs(self) -> List[Tuple[str, int, str, Optional[str]]]:
        """(task, test index, input hash, label hash or None when unlabelled) in test_puzzles.json order."""
        keys = []
        for name, puzzle in self.test_puzzles.items():
            for i, pair in enumerate(puzzle["test"]):
                input_hash = grid_hash(to_grid(pair["input"], f"test_puzzles.json: puzzle {name} test input {i}"))
                label = pair.get("output") if self.labelled else None
                label_hash = grid_hash(to_grid(label, f"test_puzzles.json: puzzle {name} test output {i}")) if label is not None else None
                keys.append((name, i, input_hash, label_hash))
        return keys

    def gathered_votes(self, keys, rank: int, world_size: int, group) -> Optional[List[dict]]:
        """Per test output (rank 0): the label's place in the ranking (None: not among the candidates), the number
        of votes and candidates, and the best candidates with their grids; None on the other ranks."""
        top = max(self.submission_K, REPORT_CANDIDATES) + 1  # + 1: an empty prediction is never an attempt
        outcomes: List[dict] = []
        for start in range(0, len(keys), self.gather_chunk):
            chunk = keys[start:start + self.gather_chunk]
            local = [self._tables.get((name, input_hash), {}) for name, _, input_hash, _ in chunk]
            gathered = gather_to_rank0(local, rank, world_size, group)
            if gathered is None:
                continue
            for j, (_, _, _, label_hash) in enumerate(chunk):
                table: Table = {}
                for rank_tables in gathered:
                    for pred_hash, (count, q_sum) in rank_tables[j].items():
                        add_votes(table, pred_hash, count, q_sum)
                ranked = rank_table(table)
                place = next((p for p, (h, _, _) in enumerate(ranked) if h == label_hash), None)
                outcomes.append(dict(place=place, votes=sum(n for _, n, _ in ranked), candidates=len(ranked),
                                     best=ranked[:top]))
            del gathered
        # Second round: the grids of the winners, from whichever rank predicted them.
        wanted = broadcast_from_rank0(sorted({h for o in outcomes for h, _, _ in o["best"]} - self._grids.keys())
                                      if rank == 0 else None, rank, world_size, group)
        replies = gather_to_rank0({h: self._grids[h] for h in wanted if h in self._grids}, rank, world_size, group)
        if replies is None:
            return None
        grids = dict(self._grids)
        for reply in replies:
            grids.update(reply)
        for outcome in outcomes:
            outcome["best"] = [(h, n, q, grids[h]) for h, n, q in outcome["best"]]
        return outcomes

    # ------------------------------------------------------------------ scores, submission, report
    def result(self, save_path: Optional[str], rank: int, world_size: int, group=None) -> Optional[Dict[str, float]]:
        keys = self.test_outputs()
        outcomes = self.gathered_votes(keys, rank, world_size, group)
        if outcomes is None:
            return None

        submission: Dict[str, List[Dict[str, list]]] = {name: [] for name in self.test_puzzles}
        report: Dict[str, dict] = {}
        for (name, index, _, label_hash), outcome in zip(keys, outcomes):
            # One entry per test input (the format is positional); repeat the best guess to fill K attempts.
            attempts = [grid.tolist() for _, _, _, grid in outcome["best"] if grid.size][:self.submission_K] or [[[0]]]
            attempts += [attempts[0]] * (self.submission_K - len(attempts))
            submission[name].append({f"attempt_{i + 1}": grid for i, grid in enumerate(attempts)})
            place = outcome["place"]
            task = report.setdefault(name, {"test_outputs": []})
            task["test_outputs"].append({
                "index": index,
                "solved": (place is not None and place < self.submission_K) if self.labelled else None,
                "label_place": (place + 1 if place is not None else None) if self.labelled else None,
                "votes": outcome["votes"], "distinct_candidates": outcome["candidates"],
                "candidates": [{"votes": n, "mean_confidence": q, "correct": (p == place) if self.labelled else None,
                                "grid": grid.tolist()}
                               for p, (_, n, q, grid) in enumerate(outcome["best"]) if p < REPORT_CANDIDATES]})

        metrics = self.scores(keys, outcomes)
        for name, task in report.items():
            solved = [o["solved"] for o in task["test_outputs"]]
            task["solved_fraction"] = sum(solved) / len(solved) if self.labelled else None
        if save_path is not None:
            os.makedirs(save_path, exist_ok=True)
            with open(os.path.join(save_path, "submission.json"), "w") as f:
                json.dump(submission, f)
            with open(os.path.join(save_path, "arc_report.json"), "w") as f:
                json.dump({"scores": metrics, "submission_K": self.submission_K, "labelled": self.labelled,
                           "tasks": report}, f)
            self.draw(save_path, report)
        return metrics

    def scores(self, keys, outcomes) -> Dict[str, float]:
        """Both scores at every K, and the counts they divide by."""
        metrics = {"ARC/task_count": float(len(self.test_puzzles)), "ARC/test_output_count": float(len(keys))}
        if not self.labelled:
            return metrics
        per_task: Dict[str, List[np.ndarray]] = {}
        for (name, _, _, _), outcome in zip(keys, outcomes):
            place = outcome["place"]
            per_task.setdefault(name, []).append(np.array([place is not None and place < k for k in self.pass_Ks], float))
        task_mean = np.mean([np.mean(v, axis=0) for v in per_task.values()], axis=0) if per_task else np.zeros(len(self.pass_Ks))
        per_output = np.mean([r for v in per_task.values() for r in v], axis=0) if per_task else np.zeros(len(self.pass_Ks))
        for i, k in enumerate(self.pass_Ks):
            metrics[f"ARC/pass@{k}"] = float(task_mean[i])  # the reference's name for the task mean
            metrics[f"ARC/task_mean_pass@{k}"] = float(task_mean[i])
            metrics[f"ARC/test_output_pass@{k}"] = float(per_output[i])
        return metrics

    def draw(self, save_path: str, report: Dict[str, dict]) -> List[str]:
        """PNG per test output of the chosen tasks: input, expected (when labelled) and the attempts with their votes."""
        chosen = self.report_images
        names = list(self.test_puzzles)[:chosen] if isinstance(chosen, int) else [n for n in chosen if n in report]
        if not names:
            return []
        from visualize.images import compose, grid_image
        written = []
        os.makedirs(os.path.join(save_path, "report_images"), exist_ok=True)
        for name in names:
            for entry in report[name]["test_outputs"]:
                pair = self.test_puzzles[name]["test"][entry["index"]]
                panels = [("input", grid_image(encode_grid(np.array(pair["input"], np.uint8)), "arc"))]
                if self.labelled:
                    panels.append(("expected", grid_image(encode_grid(np.array(pair["output"], np.uint8)), "arc")))
                for i, candidate in enumerate(entry["candidates"]):
                    mark = "" if candidate["correct"] is None else (" ok" if candidate["correct"] else " x")
                    panels.append((f"attempt {i + 1}: {candidate['votes']} votes{mark}",
                                   grid_image(encode_grid(np.array(candidate["grid"], np.uint8)), "arc")))
                path = os.path.join(save_path, "report_images", f"{name}_{entry['index']}.png")
                compose(panels).save(path, format="PNG")
                written.append(path)
        return written


def submission_problems(submission, challenges: Optional[Dict[str, dict]] = None, attempts: int = 2) -> List[str]:
    """What keeps `submission` from the ARC Prize format (empty: none): a dict of task id -> one entry per test
    input, each {"attempt_1": grid, "attempt_2": grid} with grids of integers 0-9, 1-30 rows x 1-30 columns;
    with `challenges`, exactly its task ids and its number of test inputs per task."""
    problems: List[str] = []
    if not isinstance(submission, dict):
        return [f"the submission is a {type(submission).__name__}, not an object of task ids"]
    if challenges is not None:
        missing, extra = sorted(set(challenges) - set(submission)), sorted(set(submission) - set(challenges))
        if missing or extra:
            problems.append(f"task ids differ from the challenges: missing {missing[:5]}, extra {extra[:5]}")
    names = [f"attempt_{i + 1}" for i in range(attempts)]
    for task, entries in submission.items():
        if not isinstance(entries, list) or not entries:
            problems.append(f"{task}: not a non-empty list of test-input entries")
            continue
        if challenges is not None and task in challenges and len(entries) != len(challenges[task]["test"]):
            problems.append(f"{task}: {len(entries)} entries for {len(challenges[task]['test'])} test inputs")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or sorted(entry) != names:
                problems.append(f"{task}[{i}]: keys {sorted(entry) if isinstance(entry, dict) else entry!r}, expected {names}")
                continue
            for name in names:
                grid = entry[name]
                ok = (isinstance(grid, list) and 1 <= len(grid) <= 30 and all(isinstance(r, list) for r in grid)
                      and len({len(r) for r in grid}) == 1 and 1 <= len(grid[0]) <= 30
                      and all(type(c) is int and 0 <= c <= 9 for r in grid for c in r))
                if not ok:
                    problems.append(f"{task}[{i}].{name}: not a rectangular grid of integers 0-9, 1-30 x 1-30")
    return problems
