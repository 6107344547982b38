"""Device choice and the CPU allocator setting (training/device.py)."""
import sys

import pytest
import torch

from training.device import pick_device, resolve_forward_dtype, setup_device


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
