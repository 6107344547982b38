"""The GPU path's decisions (utils/device.py): bfloat16 only where native, a compile failure stops the run in one
line, and suppress_errors only where no C++ toolchain exists."""
import pytest
import torch
import torch._dynamo

import utils.device as device_module
from utils.device import choose_forward_dtype, compile_failures_stop_the_run, maybe_compile
from utils.errors import UserError


@pytest.mark.parametrize("capability, expected", [((6, 0), "float32"), ((7, 0), "float32"), ((7, 5), "float32"),
                                                  ((8, 0), "bfloat16"), ((8, 6), "bfloat16"), ((9, 0), "bfloat16"),
                                                  ((10, 0), "bfloat16"), (None, "float32")])
def test_cuda_gets_bfloat16_from_ampere_on(capability, expected):
    # P100/V100/T4 report is_bf16_supported() (emulated, slower than float32); A100, H100 and later compute it natively
    assert choose_forward_dtype("bfloat16", "cuda", cuda_capability=capability) == expected


def test_cpus_and_mps_get_bfloat16_only_with_native_instructions_and_other_dtypes_stay():
    for device_type in ("cpu", "mps"):
        assert choose_forward_dtype("bfloat16", device_type, bf16_native=True) == "bfloat16"
        assert choose_forward_dtype("bfloat16", device_type, bf16_native=False) == "float32"
    assert choose_forward_dtype("bfloat16", "cpu", cuda_capability=(9, 0)) == "float32"  # a GPU elsewhere is no reason
    for requested in ("float32", "float16"):
        assert choose_forward_dtype(requested, "cuda", cuda_capability=(6, 0)) == requested


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("no kernel for this op")


def test_a_compile_failure_stops_with_one_line_naming_how_to_turn_compilation_off(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)
    compiled = torch.compile(lambda x: x * 2 + 1, backend=_broken_backend)
    with pytest.raises(UserError) as info:
        with compile_failures_stop_the_run():
            compiled(torch.ones(3))
    message = str(info.value)
    assert "\n" not in message and message.startswith("torch.compile failed")
    assert "no kernel for this op" in message and "compile=False" in message and "DISABLE_COMPILE=1" in message
    with pytest.raises(ZeroDivisionError):  # other errors pass through untouched
        with compile_failures_stop_the_run():
            1 / 0


def test_suppress_errors_only_where_no_cpp_toolchain_exists(monkeypatch, capsys):
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)
    module = torch.nn.Linear(2, 2)
    monkeypatch.setattr(device_module, "cpp_toolchain_available", lambda: True)
    maybe_compile(module, True, torch.device("cpu"))
    assert torch._dynamo.config.suppress_errors is False
    monkeypatch.setattr(device_module, "cpp_toolchain_available", lambda: False)
    maybe_compile(module, True, torch.device("cpu"))
    assert torch._dynamo.config.suppress_errors is True
    assert "no C++ compiler found" in capsys.readouterr().out
    assert maybe_compile(module, False, torch.device("cpu")) is module
