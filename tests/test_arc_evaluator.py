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
# Worked by hand: p1's one test output is solved at K = 2 (second place), p2's first at K = 1, its second never.
# Task mean (the reference's pass@K): p1 counts 0 at K=1 and 1 from K=2, p2 counts 1/2 at every K.
# Per test output (the ARC Prize's score): 1 of 3 outputs at K=1, 2 of 3 from K=2.
TASK_MEAN = {1: (0 + 0.5) / 2, 2: (1 + 0.5) / 2, 5: 0.75, 10: 0.75, 100: 0.75, 1000: 0.75}
PER_OUTPUT = {1: 1 / 3, 2: 2 / 3, 5: 2 / 3, 10: 2 / 3, 100: 2 / 3, 1000: 2 / 3}
EXPECTED = {"ARC/task_count": 2.0, "ARC/test_output_count": 3.0,
            **{f"ARC/pass@{k}": v for k, v in TASK_MEAN.items()},
            **{f"ARC/task_mean_pass@{k}": v for k, v in TASK_MEAN.items()},
            **{f"ARC/test_output_pass@{k}": v for k, v in PER_OUTPUT.items()}}
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
    # Aggregated voting (the reference's, asked for): a second evaluation adds the same votes again, so the ranking
    # (and result) is unchanged.
    evaluator, _ = run_eval(arc_dir, aggregated_voting=True)
    evaluator.begin_eval()
    for batch, preds in planned_batches(arc_dir):
        evaluator.update_batch(batch, preds)
    assert evaluator.result(None, rank=0, world_size=1) == pytest.approx(EXPECTED)
    assert sum(sum(n for n, _ in t.values()) for t in evaluator._tables.values()) == 2 * 3 * 4  # 3 outputs x 4 augments


def test_each_evaluation_votes_afresh_by_default(arc_dir):
    evaluator, _ = run_eval(arc_dir, pass_Ks=(1, 2))
    evaluator.begin_eval()  # a later checkpoint's evaluation: nothing of the first one's votes is left
    metrics = evaluator.result(None, rank=0, world_size=1)
    assert {k: v for k, v in metrics.items() if "pass@" in k} == {
        "ARC/pass@1": 0.0, "ARC/pass@2": 0.0, "ARC/task_mean_pass@1": 0.0, "ARC/task_mean_pass@2": 0.0,
        "ARC/test_output_pass@1": 0.0, "ARC/test_output_pass@2": 0.0}


def on_two_ranks(worker, *args) -> dict:
    """worker(rank, world_size, *args, results) on two gloo ranks; -> {rank: what it stored in results}."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, *args, results), nprocs=2)
        return dict(results)


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
    results = on_two_ranks(_distributed_worker, arc_dir, str(tmp_path / "init"))
    assert results[1] is None
    assert results[0] == pytest.approx(EXPECTED)


def test_missing_files_clear_error(tmp_path, arc_dir):
    meta = PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(arc_dir)], global_batch_size=5, test_set_mode=True,
                                             epochs_per_iter=1, rank=0, num_replicas=1), split="test").metadata
    with pytest.raises(FileNotFoundError, match="identifiers.json not found"):
        ARC(str(tmp_path), meta)


# ---------------------------------------------------------------- ensembles, ranks, the report, the format
# A second "checkpoint": its own predictions for the same test outputs (same augments v = 0..3).
PLAN_B = {
    ("p1", 0): [([[0]], 0.0), ([[5, 6], [7, 8]], 1.0), ([[5, 6], [7, 8]], 1.0), ([[3]], 3.0)],
    ("p2", 0): [([[9]], 0.0), ([[9]], 0.0), ([[9]], 0.0), ([[2]], 0.0)],
    ("p2", 1): [([[4, 4]], 0.0), ([[4, 4]], 0.0), ([[1]], 2.0), ([[5]], -1.0)],
}


def with_plan(plan, fn):
    global PLAN
    saved, PLAN = PLAN, plan
    try:
        return fn()
    finally:
        PLAN = saved


def metadata_of(data_dir):
    return PuzzleDataset(PuzzleDatasetConfig(seed=0, dataset_paths=[str(data_dir)], global_batch_size=5, test_set_mode=True,
                                             epochs_per_iter=1, rank=0, num_replicas=1), split="test").metadata


def test_an_ensemble_pools_the_members_votes(arc_dir, tmp_path):
    member_a, metrics_a = run_eval(arc_dir)
    member_b, metrics_b = with_plan(PLAN_B, lambda: run_eval(arc_dir))
    # Member B alone: p1 [[5,6],[7,8]] 2 votes beats [[0]] and [[3]] (1 each): solved at 1; p2/0 [[9]] wins 3-1,
    # [[2]] second; p2/1 [[4,4]] wins 2-1: solved at 1.
    assert (metrics_b["ARC/test_output_pass@1"], metrics_b["ARC/test_output_pass@2"]) == pytest.approx((2 / 3, 1.0))
    assert metrics_b["ARC/task_mean_pass@1"] == pytest.approx((1 + 0.5) / 2)
    ensemble = ARC(str(arc_dir), metadata_of(arc_dir))
    ensemble.begin_eval()
    ensemble.absorb(member_a)
    ensemble.absorb(member_b)
    pooled = ensemble.result(str(tmp_path), rank=0, world_size=1)
    # Pooled by hand. p1: [[5,6],[7,8]] 2 + 2 = 4 votes, [[0]] 2 + 1 = 3, [[3]] 1 -> solved at 1.
    # p2/0: [[2]] 3 + 1 = 4, [[9]] 1 + 3 = 4; mean q: [[2]] (3 * 0.5 + 0.5) / 4 = 0.5, [[9]] (sigmoid(5) + 3 * 0.5) / 4
    # = 0.623 -> [[9]] first, [[2]] second: solved at 2. p2/1: [[4,4]] 2 votes, [[1]] 1 + 1 = 2 with mean
    # (sigmoid(1) + sigmoid(2)) / 2 = 0.806 > 0.5 -> [[1]] first, [[4,4]] second: solved at 2.
    assert pooled["ARC/test_output_pass@1"] == pytest.approx(1 / 3)
    assert pooled["ARC/test_output_pass@2"] == pytest.approx(1.0)
    assert pooled["ARC/task_mean_pass@1"] == pytest.approx((1 + 0) / 2)
    assert json.loads((tmp_path / "submission.json").read_text()) == {
        "p1": [{"attempt_1": [[5, 6], [7, 8]], "attempt_2": [[0]]}],
        "p2": [{"attempt_1": [[9]], "attempt_2": [[2]]}, {"attempt_1": [[1]], "attempt_2": [[4, 4]]}]}
    # the members kept their own votes
    assert member_a.result(None, rank=0, world_size=1) == pytest.approx(metrics_a)


def test_report_lists_every_test_output_with_its_top_two(arc_dir, tmp_path):
    run_eval(arc_dir, save_path=str(tmp_path), report_images=["p2"])
    report = json.loads((tmp_path / "arc_report.json").read_text())
    assert report["scores"] == pytest.approx(EXPECTED)
    p1, p2 = report["tasks"]["p1"], report["tasks"]["p2"]
    assert p1["solved_fraction"] == 1.0 and p2["solved_fraction"] == 0.5
    first = p1["test_outputs"][0]
    assert (first["solved"], first["label_place"], first["votes"], first["distinct_candidates"]) == (True, 2, 4, 2)
    assert [(c["grid"], c["votes"], c["correct"]) for c in first["candidates"]] == [([[0]], 2, False), ([[5, 6], [7, 8]], 2, True)]
    assert first["candidates"][0]["mean_confidence"] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    assert [o["solved"] for o in p2["test_outputs"]] == [True, False] and p2["test_outputs"][1]["label_place"] is None
    images = sorted(p.name for p in (tmp_path / "report_images").iterdir())
    assert images == ["p2_0.png", "p2_1.png"]
    from PIL import Image
    assert Image.open(tmp_path / "report_images" / "p2_0.png").size[0] > 3 * 12  # input, expected, two attempts


def test_unlabelled_tasks_report_counts_only(arc_dir, tmp_path):
    _, metrics = run_eval(arc_dir, save_path=str(tmp_path), labelled=False)
    assert metrics == {"ARC/task_count": 2.0, "ARC/test_output_count": 3.0}
    report = json.loads((tmp_path / "arc_report.json").read_text())
    assert report["tasks"]["p1"]["test_outputs"][0]["solved"] is None
    assert json.loads((tmp_path / "submission.json").read_text()) == EXPECTED_SUBMISSION


def test_submission_format_check():
    from evaluators.arc import submission_problems
    challenges = {n: {"train": p["train"], "test": [{"input": t["input"]} for t in p["test"]]} for n, p in PUZZLES.items()}
    assert submission_problems(EXPECTED_SUBMISSION, challenges) == []
    bad = {"p1": [{"attempt_1": [[0]], "attempt_3": [[0]]}],
           "p2": [{"attempt_1": [[1, 2], [3]], "attempt_2": [[0]]}, {"attempt_1": [[10]], "attempt_2": [[0] * 31]}],
           "p3": [{"attempt_1": [[True]], "attempt_2": [[0.5]]}]}
    problems = submission_problems(bad, challenges)
    assert any("extra ['p3']" in p for p in problems)
    assert any(p.startswith("p1[0]: keys") for p in problems)
    assert "p2[0].attempt_1: not a rectangular grid of integers 0-9, 1-30 x 1-30" in problems
    assert any(p.startswith("p2[1].attempt_1") for p in problems) and any(p.startswith("p2[1].attempt_2") for p in problems)
    assert any(p.startswith("p3[0].attempt_1") for p in problems) and any(p.startswith("p3[0].attempt_2") for p in problems)
    assert submission_problems({"p1": []}) == ["p1: not a non-empty list of test-input entries"]


def _ranks_worker(rank, world_size, data_dir, init_file, out_dir, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        members = []
        for plan in (PLAN, PLAN_B):
            def one():
                evaluator = ARC(str(data_dir), metadata_of(data_dir), gather_chunk=1)  # a gather per test output
                evaluator.begin_eval()
                for batch, preds in planned_batches(data_dir, rank, world_size, batch_size=6):
                    evaluator.update_batch(batch, preds)
                return evaluator
            members.append(with_plan(plan, one))
        ensemble = ARC(str(data_dir), metadata_of(data_dir), gather_chunk=2)
        for member in members:
            ensemble.absorb(member)
        results[rank] = [members[0].result(f"{out_dir}/a" if rank == 0 else None, rank, world_size),
                         ensemble.result(f"{out_dir}/ens" if rank == 0 else None, rank, world_size)]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_single_rank_results(arc_dir, tmp_path):
    results = on_two_ranks(_ranks_worker, arc_dir, str(tmp_path / "init"), str(tmp_path / "two"))
    assert results[1] == [None, None]
    single = run_eval(arc_dir, save_path=str(tmp_path / "one_a"))
    member_b, _ = with_plan(PLAN_B, lambda: run_eval(arc_dir))
    ensemble = ARC(str(arc_dir), metadata_of(arc_dir))
    ensemble.absorb(single[0])
    ensemble.absorb(member_b)
    assert results[0][0] == pytest.approx(single[1])
    assert results[0][1] == pytest.approx(ensemble.result(str(tmp_path / "one_ens"), rank=0, world_size=1))
    for two, one in (("two/a", "one_a"), ("two/ens", "one_ens")):
        for name in ("submission.json", "arc_report.json"):
            assert json.loads((tmp_path / two / name).read_text()) == json.loads((tmp_path / one / name).read_text())


def test_the_gather_sends_small_tables_a_chunk_at_a_time(arc_dir, monkeypatch):
    import evaluators.arc as arc_module
    sent = []
    real = arc_module.gather_to_rank0

    def recording(obj, rank, world_size, group=None):
        sent.append(obj)
        return real(obj, rank, world_size, group)
    monkeypatch.setattr(arc_module, "gather_to_rank0", recording)
    evaluator, metrics = run_eval(arc_dir, gather_chunk=2)
    assert metrics == pytest.approx(EXPECTED)
    tables, grids = sent[:-1], sent[-1]
    assert [len(chunk) for chunk in tables] == [2, 1]  # 3 test outputs, 2 per gather
    for chunk in tables:  # per test output: prediction hash -> [votes, summed confidence], no grids
        assert all(isinstance(h, str) and len(entry) == 2 for table in chunk for h, entry in table.items())
    assert sum(entry[0] for chunk in tables for table in chunk for entry in table.values()) == 3 * 4
    assert grids == {}  # rank 0 has every winner's grid itself: nothing more travels
