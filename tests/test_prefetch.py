"""The training batches' read-ahead thread (training/prefetch.py): same batches in the same order, and a position
for checkpoints that counts the batches handed out, not those read ahead."""
import pytest
import torch

from bench.mfu import Case, write_synthetic_dataset
from models.adam_atan2 import AdamATan2
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from utils.distributed import DistInfo
from training.loop import TrainState, train_batch
from training.schedule import Schedule
from training.prefetch import Prefetcher, prefetch_depth, prefetched
from tests.helpers import tiny_head


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_dataset(path, Case("quickstart", 4, 6, 5, "tiny"), train_examples=40, test_examples=4)
    return path


def loader(data_path, batch_size=4):
    return PuzzleDataset(PuzzleDatasetConfig(seed=3, dataset_paths=[str(data_path)], global_batch_size=batch_size,
                                             test_set_mode=False, epochs_per_iter=1, rank=0, num_replicas=1))


def inputs(batches):
    return [batch["inputs"].clone() for _, batch, _ in batches]


@pytest.mark.device
def test_a_resume_from_the_prefetchers_position_continues_with_the_next_unconsumed_batch(data_path, device):
    pin = device.type == "cuda"
    plain = loader(data_path)
    expected = inputs(plain) + inputs(plain)  # two passes: 10 batches each
    consumed = 4

    ahead = Prefetcher(loader(data_path), depth=3, pin=pin)
    taken = []
    for _, batch, _ in ahead:
        assert batch["inputs"].is_pinned() == pin
        taken.append(batch["inputs"].clone())
        if len(taken) == consumed:
            break
    reference = loader(data_path)
    batches = iter(reference)
    for _ in range(consumed):
        next(batches)
    assert ahead.state_dict() == reference.state_dict() == {"iters": 0, "position": consumed}

    resumed = Prefetcher(loader(data_path), depth=3, pin=pin)
    resumed.load_state_dict(ahead.state_dict())
    rest = inputs(resumed)
    assert resumed.state_dict() == {"iters": 1, "position": 0}  # the pass is done: the next one starts afresh
    rest += inputs(resumed)
    assert len(taken + rest) == len(expected) == 20
    assert all(torch.equal(a, b) for a, b in zip(taken + rest, expected))
    # the pass left early rewound its loader to the batches handed out
    assert all(torch.equal(a, b) for a, b in zip(inputs(ahead.loader), expected[consumed:10]))


class Failing:
    def __iter__(self):
        yield "all", {"inputs": torch.zeros(2)}, 2
        raise OSError("disk went away")

    def state_dict(self):
        return {}


def test_an_error_in_the_loader_reaches_the_training_loop_and_depth_zero_is_the_loader():
    batches = iter(Prefetcher(Failing(), depth=2))
    assert next(batches)[0] == "all"
    with pytest.raises(OSError, match="disk went away"):
        next(batches)
    plain = Failing()
    assert prefetched(plain, 0) is plain and isinstance(prefetched(plain, 2), Prefetcher)
    assert prefetch_depth(None, torch.device("cpu")) == 0 and prefetch_depth(None, torch.device("cuda")) == 3
    assert prefetch_depth(2, torch.device("cpu")) == 2


@pytest.mark.device
def test_training_on_prefetched_pinned_batches_gives_the_losses_of_plain_batches(tmp_path, device):
    """On CUDA the batches are pinned and copied with non_blocking: the step must still see each batch whole."""
    write_synthetic_dataset(tmp_path, Case("quickstart", 3, 4, 5, "tiny_head's shape"), train_examples=30, test_examples=3)

    def losses(batches):
        torch.manual_seed(0)
        with torch.device(device):
            head = tiny_head(num_puzzle_identifiers=1000)
        state = TrainState(model=head, optimizers=[AdamATan2(head.parameters(), lr=0)], base_lrs=[1e-2],
                           schedule=Schedule(total_steps=10, warmup_steps=0, min_ratio=1.0))
        return [train_batch(state, batch, size, DistInfo(), device)["train/lm_loss"] for _, batch, size in batches]

    plain = losses(loader(tmp_path, batch_size=3))
    assert len(plain) == 10
    prefetched_losses = losses(Prefetcher(loader(tmp_path, batch_size=3), depth=3, pin=device.type == "cuda"))
    assert prefetched_losses == pytest.approx(plain, rel=1e-5)
