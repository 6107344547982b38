"""Device choice and the CPU allocator setting (utils/device.py)."""
import sys

import pytest
import torch

from utils.device import pick_device, resolve_forward_dtype, setup_device


def test_cpu_device_and_float32_stay_as_asked():
    assert pick_device("cpu") == torch.device("cpu")
    assert resolve_forward_dtype("float32", torch.device("cpu")) == "float32"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_setup_device_keeps_large_cpu_allocations_working():
    assert setup_device("cpu") == torch.device("cpu")
    for _ in range(3):   # 64 MB tensors freed and reallocated: served from the kept heap, contents intact
        x = torch.full((16, 1024, 1024), 2.0)
        assert x.sum().item() == 2.0 * 16 * 1024 * 1024
        del x


def test_thread_count_respects_the_user_and_splits_cores_among_local_ranks():
    from utils.device import choose_num_threads
    assert choose_num_threads(8, 1, None) == (8, "8 cores")
    assert choose_num_threads(8, 1, "3") == (3, "OMP_NUM_THREADS")          # the user's setting wins
    assert choose_num_threads(8, 4, None) == (2, "8 cores / 4 local ranks")
    assert choose_num_threads(8, 4, "1") == (2, "8 cores / 4 local ranks")  # torchrun's own default, not the user's
    assert choose_num_threads(8, 4, "3") == (3, "OMP_NUM_THREADS")
    assert choose_num_threads(2, 4, None)[0] == 1                          # never zero
    assert choose_num_threads(2, 1, "1") == (1, "OMP_NUM_THREADS")


def test_a_non_numeric_thread_setting_is_one_user_error():
    from utils.device import choose_num_threads
    from utils.errors import UserError
    with pytest.raises(UserError, match="OMP_NUM_THREADS='many'"):
        choose_num_threads(2, 1, "many")


def test_set_intra_op_threads_applies_the_choice_and_describes_it(monkeypatch):
    from utils.device import describe_threads, set_intra_op_threads
    previous = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        assert set_intra_op_threads() == 1 and torch.get_num_threads() == 1
        assert describe_threads() == "threads 1 (OMP_NUM_THREADS)"
    finally:
        torch.set_num_threads(previous)
