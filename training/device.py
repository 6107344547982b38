"""Pick the device, the forward dtype it supports, and whether to torch.compile."""
import os
from typing import Optional

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA GPU is visible: use device=auto or device=cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise RuntimeError("device=mps but MPS is not available: use device=auto or device=cpu")
    return torch.device(requested)


def setup_device(requested: str = "auto") -> torch.device:
    """pick_device, then the process-wide settings that device runs fastest with."""
    device = pick_device(requested)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    return device


def _cpu_has_fast_bf16() -> bool:
    # Without native bf16 instructions (AVX512-BF16, AMX) bfloat16 matmuls are emulated and slower than float32.
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return native and _bf16_matmul_works()


def _bf16_matmul_works() -> bool:
    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool(torch.allclose((a @ a).float(), torch.full((4, 4), 4.0)))
    except RuntimeError:
        return False


def resolve_forward_dtype(requested: str, device: torch.device) -> str:
    """bfloat16 where the device supports it, else float32 (the name, as the model config wants it)."""
    if requested != "bfloat16":
        return requested
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "mps":
        return "bfloat16" if _bf16_matmul_works() else "float32"
    return "bfloat16" if _cpu_has_fast_bf16() else "float32"


def should_compile(requested: Optional[bool], device: torch.device) -> bool:
    if os.environ.get("DISABLE_COMPILE", "0") not in ("", "0"):
        return False
    if requested is None:
        return device.type == "cuda"
    return requested


def maybe_compile(module: torch.nn.Module, requested: Optional[bool], device: torch.device) -> torch.nn.Module:
    """torch.compile when asked (or by default on CUDA). A machine without a working C++ toolchain for the CPU
    backend falls back to eager with a warning instead of failing the run."""
    if not should_compile(requested, device):
        return module
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True
    return torch.compile(module)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameters (malloc.h)


def keep_freed_cpu_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse instead of returning it to the OS.

    CPU tensors of a few MB and more are otherwise mmap-ed fresh and unmapped on every allocation, so each
    step pays page faults and kernel zeroing for every large activation: up to 3x on a single GEMM's
    output here. CUDA and MPS have caching allocators already. Returns False where malloc is not glibc's."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
