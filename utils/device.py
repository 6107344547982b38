"""Pick the device, the forward dtype it supports, and whether to torch.compile."""
import contextlib
import os
import shutil
from typing import Dict, Optional, Tuple

import torch

from utils.errors import UserError


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def pick_device(requested: str = "auto", flag: str = "device=") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag}cuda but no CUDA GPU is visible: use {flag}auto or {flag}cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UserError(f"{flag}mps but MPS is not available: use {flag}auto or {flag}cpu")
    return torch.device(requested)


def setup_device(requested: str = "auto") -> torch.device:
    """pick_device, then the process-wide settings that device runs fastest with."""
    device = pick_device(requested)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    enable_tf32(device)
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


# The first CUDA compute capability with bfloat16 and TF32 tensor cores (Ampere); older GPUs emulate bfloat16, slower.
AMPERE = (8, 0)


def ampere_or_newer(cuda_capability: Optional[Tuple[int, int]]) -> bool:
    return cuda_capability is not None and tuple(cuda_capability) >= AMPERE


def choose_forward_dtype(requested: str, device_type: str, cuda_capability: Optional[Tuple[int, int]] = None,
                         bf16_native: bool = False) -> str:
    """bfloat16 only where the hardware computes it natively, else float32. CUDA decides by compute capability
    (torch.cuda.is_bf16_supported() also counts emulation); MPS and CPUs by `bf16_native`."""
    if requested != "bfloat16":
        return requested
    native = ampere_or_newer(cuda_capability) if device_type == "cuda" else bf16_native
    return "bfloat16" if native else "float32"


def resolve_forward_dtype(requested: str, device: torch.device) -> str:
    """bfloat16 where the device supports it natively, else float32 (the name, as the model config wants it)."""
    if requested != "bfloat16":
        return requested
    if device.type == "cuda":
        return choose_forward_dtype(requested, "cuda", cuda_capability=torch.cuda.get_device_capability(device))
    native = _bf16_matmul_works() if device.type == "mps" else _cpu_has_fast_bf16()
    return choose_forward_dtype(requested, device.type, bf16_native=native)


def enable_tf32(device: torch.device) -> bool:
    """float32 matrix products on TF32 tensor cores where the GPU has them (~8x the float32 rate, 10-bit mantissa
    inputs with float32 accumulation, as PyTorch's `high` precision); True when turned on."""
    if device.type != "cuda" or not ampere_or_newer(torch.cuda.get_device_capability(device)):
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def describe_precision(forward_dtype: str, device: torch.device) -> str:
    """The start-up line's dtype: the forward dtype, and whether float32 products run on TF32."""
    tf32 = device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    return f"{forward_dtype} (TF32 matmuls)" if tf32 and forward_dtype == "float32" else forward_dtype


def should_compile(requested: Optional[bool], device: torch.device) -> bool:
    if os.environ.get("DISABLE_COMPILE", "0") not in ("", "0"):
        return False
    if requested is None:
        return device.type == "cuda"
    return requested


def cpp_toolchain_available() -> bool:
    """Whether a C++ compiler is on PATH: the CPU backend of torch.compile builds its kernels with it."""
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def maybe_compile(module: torch.nn.Module, requested: Optional[bool], device: torch.device) -> torch.nn.Module:
    """torch.compile when asked (or by default on CUDA). A compile failure stops the run (see
    compile_failures_stop_the_run), except on a CPU machine without a C++ toolchain, where each graph that cannot
    be built falls back to eager with a warning."""
    if not should_compile(requested, device):
        return module
    if device.type == "cpu" and not cpp_toolchain_available():
        import torch._dynamo as dynamo  # `import torch._dynamo` would make `torch` local to this function
        print("warning: no C++ compiler found (g++/clang++): torch.compile runs what it cannot build eagerly; "
              "install one, or set compile=False to skip compiling")
        dynamo.config.suppress_errors = True
    global _compile_announced
    if not _compile_announced:  # once per process: training and evaluation models are compiled separately
        print("torch.compile: the model compiles on its first steps and first evaluation (a minute or more); "
              "compile=False skips it")
        _compile_announced = True
    return torch.compile(module)


_compile_announced = False


COMPILE_OFF_HINT = "run without compiling with compile=False (or DISABLE_COMPILE=1)"


def compile_failure(exc: BaseException) -> Optional[str]:
    """One line for an exception raised by torch.compile (Dynamo, Inductor, the C++ or Triton toolchain), else None."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler, OperatorIssue
    if not isinstance(exc, (TorchDynamoException, CppCompileError, InvalidCxxCompiler, OperatorIssue)):
        return None
    detail = " ".join(str(exc).split())[:300] or "no detail"
    return f"torch.compile failed ({type(exc).__name__}: {detail}); {COMPILE_OFF_HINT}"


@contextlib.contextmanager
def compile_failures_stop_the_run():
    """A compile failure is never silent: it becomes one UserError line that names how to turn compilation off."""
    try:
        yield
    except Exception as e:
        message = compile_failure(e)
        if message is None:
            raise
        raise UserError(message) from e


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


# ------------------------------------------------------------------ intra-op threads
def usable_cpu_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_num_threads(usable_cores: int, local_world_size: int, omp_num_threads: Optional[str]) -> Tuple[int, str]:
    """(threads, why). OMP_NUM_THREADS wins when the user set it. torchrun sets it to 1 itself for several local
    ranks, which wastes the rest of a CPU node, so there "1" counts as unset and each rank gets its share of the
    cores instead. More threads than cores only adds barrier waits (a 2-core run slowed 4x when oversubscribed)."""
    if omp_num_threads and not (omp_num_threads.strip() == "1" and local_world_size > 1):
        try:
            return max(1, int(omp_num_threads)), "OMP_NUM_THREADS"
        except ValueError:
            raise UserError(f"OMP_NUM_THREADS={omp_num_threads!r} is not a whole number: set it to e.g. 2, or unset it")
    share = max(1, usable_cores // max(1, local_world_size))
    why = f"{usable_cores} cores" + (f" / {local_world_size} local ranks" if local_world_size > 1 else "")
    return share, why


_threads_why = "as set by the caller"


def set_intra_op_threads() -> int:
    """Apply choose_num_threads to this process (torchrun's LOCAL_WORLD_SIZE ranks share the node's cores). Called by
    the command-line entry points only: code that imports ours keeps its own torch.set_num_threads."""
    global _threads_why
    threads, _threads_why = choose_num_threads(usable_cpu_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                               os.environ.get("OMP_NUM_THREADS"))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def describe_threads() -> str:
    """For start-up lines: "threads 2 (2 cores)"."""
    return f"threads {torch.get_num_threads()} ({_threads_why})"
