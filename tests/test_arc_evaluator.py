import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataset.arc_codec import augment_grid, encode_grid, parse_augment_name
from dataset.build_arc_dataset import build
from evaluators.arc import ARC, vote
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig

PUZZLES = {
    "p1": {"train": [{"input": [[1, 1]], "output": [[2, 2]]}],
           "test": [{"input": [[1, 2], [3, 4]], "output": [[5, 6], [7, 8]]}]},
    "p2": {"train": [{"input": [[6]], "output": [[7]]}],
           "test": [{"input": [[1]], "output": [[2]]}, {"input": [[3, 3]], "output": [[4, 4]]}]},
}
# Per (puzzle, test pair): the prediction (original colours and orientation) and q_halt logit of augment v = 0..3.
PLAN = {
    ("p1", 0): [([[5, 6], [7, 8]], -2.0), ([[5, 6], [7, 8]], -2.0), ([[0]], 2.0), ([[0]], 2.0)],   # 2-2 tie, wrong has higher q
    ("p2", 0): [([[2]], 0.0), ([[2]], 0.0), ([[2]], 0.0), ([[9]], 5.0)],                          # majority right
    ("p2", 1): [([[1]], 1.0), ([[2]], 0.5), ([[3]], 0.0), ([[5]], -1.0)],                         # all wrong, ranked by q
}
EXPECTED = {"ARC/pass@1": (0 + 0.5) / 2, "ARC/pass@2": (1 + 0.5) / 2, "ARC/pass@5": 0.75, "ARC/pass@10": 0.75,
            "ARC/pass@100": 0.75, "ARC/pass@1000": 0.75}
EXPECTED_SUBMISSION = {"p1": [{"attempt_1": [[0]], "attempt_2": [[5, 6], [7, 8]]}],
                       "p2": [{"attempt_1": [[2]], "attempt_2": [[9]]}, {"attempt_1": [[1]], "attempt_2": [[2]]}]}


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    challenges = {n: {"train": p["train"], "test": [{"input": t["input"]} for t in p["test"]]} for n, p in PUZZLES.items()}
    (root / "x_ev_challenges.json").write_text(json.dumps(challenges))
    (root / "x_ev_solutions.json").write_text(json.dumps({n: [t["output"] for t in p["test"]] for n, p in PUZZLES.items()}))
    build(str(root / "x"), str(root / "data"), ["ev"], "ev", num_aug=3, seed=0, progress=False)
    return root / "data"


def planned_batches(data_dir, rank=0, world_size=1, batch_size=5):
    """Test batches of the real loader, with predictions following PLAN in each row's augmented frame."""
    names = json.loads((data_dir / "identifiers.json").read_text())
    first_id = {}
    for i, n in enumerate(names[1:], 1):
        first_id.setdefault(parse_augment_name(n)[0], i)
    ds = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(data_dir)], global_batch_size=batch_size, test_set_mode=True,
                                           epochs_per_iter=1, rank=rank, num_replicas=world_size), split="test")
    for _, batch, _ in ds:
        preds = torch.zeros_like(batch["inputs"])
        q = torch.zeros(len(preds))
        for row, identifier in enumerate(batch["puzzle_identifiers"].tolist()):
            if identifier == 0:
                continue  # padding row
            name, tid, colour_map = parse_augment_name(names[identifier])
            grid_in = batch["inputs"][row].numpy().reshape(30, 30)
            pair = next(i for i, t in enumerate(PUZZLES[name]["test"])
                        if np.array_equal(encode_grid(augment_grid(np.array(t["input"], np.uint8), tid, colour_map)), grid_in.reshape(-1)))
            grid, logit = PLAN[(name, pair)][identifier - first_id[name]]
            preds[row] = torch.from_numpy(encode_grid(augment_grid(np.array(grid, np.uint8), tid, colour_map)).astype(np.int32))
            q[row] = logit
        yield batch, {"preds": preds, "q_halt_logits": q}


def run_eval(data_dir, save_path=None, **kwargs):
    evaluator = ARC(str(data_dir), PuzzleDataset(PuzzleDatasetConfig(
        seed=0, dataset_paths=[str(data_dir)], global_batch_size=5, test_set_mode=True, epochs_per_iter=1, rank=0,
        num_replicas=1), split="test").metadata, **kwargs)
    evaluator.begin_eval()
    for batch, preds in planned_batches(data_dir):
        evaluator.update_batch(batch, preds)
    return evaluator, evaluator.result(save_path, rank=0, world_size=1, group=None)


def test_vote_orders_by_count_then_mean_q():
    assert vote([("a", 0.9), ("b", 0.1), ("b", 0.2), ("c", 0.8), ("c", 0.4)]) == \
        [("c", 2, pytest.approx(0.6)), ("b", 2, pytest.approx(0.15)), ("a", 1, 0.9)]


def test_pass_at_k_and_submission(arc_dir, tmp_path):
    assert json.loads((arc_dir / "identifiers.json").read_text()).__len__() == 1 + 2 * 4
    evaluator, metrics = run_eval(arc_dir, save_path=str(tmp_path))
    assert metrics == pytest.approx(EXPECTED)
    assert json.loads((tmp_path / "submission.json").read_text()) == EXPECTED_SUBMISSION
    # Aggregated voting: a second evaluation adds the same votes again, so the ranking (and result) is unchanged.
    evaluator.begin_eval()
    for batch, preds in planned_batches(arc_dir):
        evaluator.update_batch(batch, preds)
    assert evaluator.result(None, rank=0, world_size=1) == pytest.approx(EXPECTED)


def test_without_aggregated_voting_state_resets(arc_dir):
    evaluator, _ = run_eval(arc_dir, aggregated_voting=False, pass_Ks=(1, 2))
    evaluator.begin_eval()
    assert evaluator.result(None, rank=0, world_size=1) == {"ARC/pass@1": 0.0, "ARC/pass@2": 0.0}


def _distributed_worker(rank, world_size, data_dir, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluator = ARC(str(data_dir), PuzzleDataset(PuzzleDatasetConfig(
            seed=0, dataset_paths=[str(data_dir)], global_batch_size=6, test_set_mode=True, epochs_per_iter=1,
            rank=rank, num_replicas=world_size), split="test").metadata)
        evaluator.begin_eval()
        for batch, preds in planned_batches(data_dir, rank, world_size, batch_size=6):
            evaluator.update_batch(batch, preds)
        results[rank] = evaluator.result(None, rank=rank, world_size=world_size, group=None)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_results_gathered_to_rank_zero(arc_dir, tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_distributed_worker, args=(2, arc_dir, str(tmp_path / "init"), results), nprocs=2)
    assert results[1] is None
    assert results[0] == pytest.approx(EXPECTED)


def test_missing_files_clear_error(tmp_path, arc_dir):
    meta = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(arc_dir)], global_batch_size=5, test_set_mode=True,
                                             epochs_per_iter=1, rank=0, num_replicas=1), split="test").metadata
    with pytest.raises(FileNotFoundError, match="identifiers.json not found"):
        ARC(str(tmp_path), meta)
