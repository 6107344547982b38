import numpy as np
import pytest
import torch

from dataset.format import PuzzleDatasetMetadata, write_split
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig, train_batch_indices

SEQ_LEN = 4


def make_dataset(root, group_puzzle_sizes, split="train", seq_len=SEQ_LEN, vocab=10, first_id=1, sets=("all",)):
    """Groups of puzzles with the given example counts. Every example's inputs hold its global example index
    (so batches can be traced back), labels hold the puzzle index with every other position = ignore id 0."""
    sizes = [s for group in group_puzzle_sizes for s in group]
    num_examples = sum(sizes)
    inputs = np.repeat(np.arange(num_examples, dtype=np.int32)[:, None], seq_len, axis=1)
    puzzle_of_example = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.repeat(puzzle_of_example[:, None] + 1, seq_len, axis=1).astype(np.int32)
    labels[:, ::2] = 0
    fields = {"inputs": inputs, "labels": labels,
              "puzzle_identifiers": np.arange(first_id, first_id + len(sizes), dtype=np.int32),
              "puzzle_indices": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
              "group_indices": np.concatenate([[0], np.cumsum([len(g) for g in group_puzzle_sizes])]).astype(np.int32)}
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                                 num_puzzle_identifiers=first_id + len(sizes), total_groups=len(group_puzzle_sizes),
                                 mean_puzzle_examples=num_examples / len(sizes), total_puzzles=len(sizes), sets=list(sets))
    write_split(root / split, meta, {s: fields for s in sets})
    return fields


def config(paths, batch, rank=0, replicas=1, test=False, epochs=1, seed=0):
    return PuzzleDatasetConfig(seed=seed, dataset_paths=[str(p) for p in paths], global_batch_size=batch,
                               test_set_mode=test, epochs_per_iter=epochs, rank=rank, num_replicas=replicas)


GROUPS = [[3, 1], [2], [5, 4, 1], [1], [2, 2], [4], [1, 1, 1], [3]]


def test_sampler_epoch_properties(tmp_path):
    fields = make_dataset(tmp_path, GROUPS)
    puzzle_indices, group_indices = fields["puzzle_indices"], fields["group_indices"]
    group_of_puzzle = np.repeat(np.arange(len(GROUPS)), [len(g) for g in GROUPS])
    rng = np.random.Generator(np.random.Philox(seed=1))
    order = rng.permutation(len(GROUPS))
    batch_size = 4
    batches = list(train_batch_indices(rng, order, puzzle_indices, group_indices, batch_size))
    assert batches and all(len(e) == batch_size for e, _ in batches)  # drop-last: only full batches
    visited_groups = []
    for examples, puzzles in batches:
        # examples belong to their puzzle; within a puzzle no example repeats
        assert np.all((examples >= puzzle_indices[puzzles]) & (examples < puzzle_indices[puzzles + 1]))
        for p in np.unique(puzzles):
            assert len(set(examples[puzzles == p])) == (puzzles == p).sum()
        # a puzzle's examples are contiguous in the batch, and groups come in the shuffled order
        changes = np.flatnonzero(np.diff(puzzles)) + 1
        visited_groups += list(group_of_puzzle[puzzles[np.concatenate([[0], changes])]])
    # each group at most once per epoch, in the permutation's order, none skipped before the dropped tail
    assert visited_groups == list(order[:len(visited_groups)])
    # a batch is cut only in its last puzzle: the next batch starts at the next group
    assert len(visited_groups) == len(set(visited_groups))


def test_last_incomplete_batch_dropped(tmp_path):
    make_dataset(tmp_path, [[1, 1]] * 10)  # every puzzle one example: a group adds exactly one example
    batches = list(PuzzleDataset(config([tmp_path], 3, epochs=2)))
    assert len(batches) == 20 // 3 and all(b["inputs"].shape[0] == 3 for _, b, _ in batches)


def test_every_group_visited_once_per_epoch(tmp_path):
    make_dataset(tmp_path, GROUPS)
    # A batch of 1 example consumes exactly one group, so nothing is dropped and every group appears once.
    for epochs in (1, 3):
        ds = PuzzleDataset(config([tmp_path], 1, epochs=epochs, seed=5))
        batches = list(ds)
        assert len(batches) == len(GROUPS) * epochs
        group_of_puzzle = np.repeat(np.arange(len(GROUPS)), [len(g) for g in GROUPS])
        groups = [group_of_puzzle[int(b["puzzle_identifiers"][0]) - 1] for _, b, _ in batches]
        for e in range(epochs):
            assert sorted(groups[e * len(GROUPS):(e + 1) * len(GROUPS)]) == list(range(len(GROUPS)))


def test_batches_content_dtypes_and_reproducibility(tmp_path):
    fields = make_dataset(tmp_path, GROUPS)
    ds = PuzzleDataset(config([tmp_path], 6, seed=7))
    first = list(ds)
    for set_name, batch, effective in first:
        assert set_name == "all" and effective == 6
        assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {
            "inputs": (torch.int32, (6, SEQ_LEN)), "labels": (torch.int32, (6, SEQ_LEN)), "puzzle_identifiers": (torch.int32, (6,))}
        examples = batch["inputs"][:, 0].numpy()
        puzzles = batch["puzzle_identifiers"].numpy() - 1
        assert np.all((examples >= fields["puzzle_indices"][puzzles]) & (examples < fields["puzzle_indices"][puzzles + 1]))
        assert (batch["labels"][:, ::2] == -100).all() and (batch["labels"][:, 1::2].numpy() == puzzles[:, None] + 1).all()
    # the same seed and iteration replays the same batches; the next pass differs
    again = list(PuzzleDataset(config([tmp_path], 6, seed=7)))
    assert all((a[1]["inputs"] == b[1]["inputs"]).all() for a, b in zip(first, again)) and len(first) == len(again)
    second_pass = list(ds)
    assert any(not (a[1]["inputs"] == b[1]["inputs"]).all() for a, b in zip(first, second_pass))


def test_rank_slices_disjoint_and_cover_global_batch(tmp_path):
    make_dataset(tmp_path, GROUPS)
    full = list(PuzzleDataset(config([tmp_path], 6, epochs=4)))
    per_rank = [list(PuzzleDataset(config([tmp_path], 6, rank=r, replicas=3, epochs=4))) for r in range(3)]
    assert all(len(r) == len(full) for r in per_rank)
    for i, (_, batch, effective) in enumerate(full):
        parts = [per_rank[r][i][1] for r in range(3)]
        assert all(p["inputs"].shape[0] == 2 and per_rank[r][i][2] == effective == 6 for r, p in enumerate(parts))
        for key in batch:
            assert (np.concatenate([p[key].numpy() for p in parts]) == batch[key].numpy()).all()


def test_test_iteration_covers_every_example_once_with_padding(tmp_path):
    fields = make_dataset(tmp_path, GROUPS, split="test")
    num_examples = len(fields["inputs"])  # 31
    seen = []
    for rank in range(2):
        batches = list(PuzzleDataset(config([tmp_path], 8, rank=rank, replicas=2, test=True), split="test"))
        assert len(batches) == -(-num_examples // 8)
        assert [e for _, _, e in batches] == [8, 8, 8, 7]
        for _, batch, _ in batches:
            assert batch["inputs"].shape == (4, SEQ_LEN)
            real = batch["puzzle_identifiers"] != 0
            examples = batch["inputs"][real][:, 0].numpy()
            puzzles = batch["puzzle_identifiers"][real].numpy() - 1
            assert np.all((examples >= fields["puzzle_indices"][puzzles]) & (examples < fields["puzzle_indices"][puzzles + 1]))
            seen += list(examples)
            pad = ~real
            assert (batch["inputs"][pad] == 0).all() and (batch["labels"][pad] == -100).all()
            assert real.numpy().tolist() == sorted(real.numpy().tolist(), reverse=True)  # padding only at the end
    assert sorted(seen) == list(range(num_examples))


def test_multiple_paths_merge_and_disagree(tmp_path):
    make_dataset(tmp_path / "a", GROUPS)
    make_dataset(tmp_path / "b", [[2, 2], [1]], first_id=100)
    ds = PuzzleDataset(config([tmp_path / "a", tmp_path / "b"], 2))
    m = ds.metadata
    assert m.sets == ["all", "all1"] and m.total_groups == len(GROUPS) + 2 and m.total_puzzles == 14 + 3
    assert m.num_puzzle_identifiers == 15 + 103
    assert m.mean_puzzle_examples == pytest.approx((31 + 5) / 17)
    names = {s for s, _, _ in ds}
    assert names == {"all", "all1"}
    assert {int(i) for s, b, _ in ds if s == "all1" for i in b["puzzle_identifiers"]} <= {100, 101, 102}

    make_dataset(tmp_path / "c", GROUPS, seq_len=6)
    with pytest.raises(ValueError, match=r"dataset_paths disagree: .*c has seq_len=6 but .*a has 4"):
        PuzzleDataset(config([tmp_path / "a", tmp_path / "c"], 2))
    make_dataset(tmp_path / "d", GROUPS, sets=("other",))
    with pytest.raises(ValueError, match="sets="):
        PuzzleDataset(config([tmp_path / "a", tmp_path / "d"], 2))
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        PuzzleDataset(config([tmp_path / "a", tmp_path / "missing"], 2))
    with pytest.raises(ValueError, match="not divisible"):
        PuzzleDataset(config([tmp_path / "a"], 5, replicas=2))


def test_resume_continues_exactly(tmp_path):
    make_dataset(tmp_path, GROUPS)
    ds = PuzzleDataset(config([tmp_path], 3, epochs=2, seed=11))
    list(ds)  # one whole pass
    it = iter(ds)
    consumed = [next(it) for _ in range(2)]
    state = ds.state_dict()
    assert state == {"iters": 1, "position": 2}
    rest = list(it)
    assert ds.state_dict() == {"iters": 2, "position": 0}

    resumed = PuzzleDataset(config([tmp_path], 3, epochs=2, seed=11))
    resumed.load_state_dict(state)
    replay = list(resumed)
    assert len(replay) == len(rest) and len(consumed) + len(rest) > 2
    assert all((a[1]["inputs"] == b[1]["inputs"]).all() for a, b in zip(replay, rest))
    # and the pass after that matches too
    ds_next, resumed_next = list(ds), list(resumed)
    assert all((a[1]["inputs"] == b[1]["inputs"]).all() for a, b in zip(ds_next, resumed_next))
