"""Before any heavy work: the datasets a run reads are checked as `python -m dataset.validate` checks them (shapes,
lengths, value ranges, identifiers; every array read once), and sizes the run could not fit stop with one line."""
import os
from typing import Dict, List, Optional

from dataset.validate import check_dataset
from training.config import PretrainConfig
from utils.errors import UserError

# Entries of one pass's group order (int64) before it would take gigabytes of memory.
MAX_GROUP_ORDER = 1 << 28


def test_paths_of(config: PretrainConfig) -> List[str]:
    """data_paths_test, else the test splits of data_paths: all of them or none."""
    if config.data_paths_test:
        return list(config.data_paths_test)
    present = [p for p in config.data_paths if os.path.isdir(os.path.join(p, "test"))]
    if present and len(present) != len(config.data_paths):
        missing = next(p for p in config.data_paths if p not in present)
        raise UserError(f"{present[0]} has a test split but {missing} has none: give data_paths_test=[...] to "
                        f"choose the evaluation data")
    return present


def check_run_data(config: PretrainConfig) -> Optional[int]:
    """Check the data; -> the batches one pass yields when every puzzle has one example (else None: they vary)."""
    sizes: Dict[str, Dict[str, Dict[str, int]]] = {}
    examples_per_epoch, batches, exact = 0.0, 0, True
    test_paths = test_paths_of(config)
    metas = {}
    for path in config.data_paths:  # with its own test split: check_dataset also compares the two
        splits = ("train", "test") if path in test_paths else ("train",)
        metas.update({(path, split): meta for split, meta in check_dataset(
            path, splits, identifiers_required=False, set_sizes=sizes.setdefault(path, {})).items()})
    train = metas[(config.data_paths[0], "train")]
    for path in test_paths:
        test = metas.get((path, "test")) or check_dataset(path, ("test",), identifiers_required=False)["test"]
        for key in ("seq_len", "vocab_size"):
            if getattr(test, key) != getattr(train, key):
                raise UserError(f"data_paths_test {path} has {key} {getattr(test, key)} but the training data "
                                f"{config.data_paths[0]} has {getattr(train, key)}: evaluate on data built like it")
    if not test_paths:
        print(f"note: {', '.join(config.data_paths)} has no test split: training without evaluation "
              f"(give data_paths_test=[...] to evaluate)")
    for path in config.data_paths:
        for name, s in sizes[path]["train"].items():
            order = config.epochs_per_iter * s["groups"]
            if order > MAX_GROUP_ORDER:
                raise UserError(f"one pass over {path} ({config.epochs_per_iter} epochs x {s['groups']} groups) needs a "
                                f"group order of {order:,} entries ({order * 8 / 2 ** 30:.0f} GiB): set eval_interval "
                                f"to at most {MAX_GROUP_ORDER // s['groups']:,} epochs")
            examples_per_epoch += s["groups"] * s["examples"] / max(s["puzzles"], 1)
            exact = exact and s["examples"] == s["puzzles"]
            batches += config.epochs_per_iter * s["groups"] // config.global_batch_size
    per_pass = int(examples_per_epoch * config.epochs_per_iter)
    if config.global_batch_size > per_pass:  # not one step, and the test batches would be padded to this size
        raise UserError(f"global_batch_size={config.global_batch_size} is larger than the {per_pass} examples one pass "
                        f"over {', '.join(config.data_paths)} draws ({config.epochs_per_iter} epochs of "
                        f"{examples_per_epoch:.0f}): choose global_batch_size <= {per_pass}")
    if exact and batches == 0:
        raise UserError(f"global_batch_size={config.global_batch_size} fills no batch: each training set draws fewer "
                        f"examples in one pass ({config.epochs_per_iter} epochs); choose a smaller global_batch_size")
    return batches if exact else None


def planned_steps(batches_per_pass: Optional[int], config: PretrainConfig, schedule_steps: int) -> str:
    """The steps the run will take: the schedule's count (docs/network.md#learning-rate-schedule) or fewer where the sampler's passes end sooner
    (the last incomplete batch of every pass is dropped)."""
    if batches_per_pass is None:
        return f"up to {schedule_steps} steps"
    return f"{min(schedule_steps, batches_per_pass * config.epochs // config.epochs_per_iter)} steps"
