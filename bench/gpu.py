"""One-shot check of the GPU path: about 8 minutes on one GPU, one table at the end.

    python -m bench.gpu                  # CUDA; without a CUDA GPU it refuses in one line
    python -m bench.gpu --device cpu     # a tiny smoke run of every part (tests/test_bench_gpu.py)

Parts, run in this order, each within what is left of --budget-seconds:
  tests  the tests that have a device variant (pytest -m device) with TEST_DEVICE=cuda
  eval   evaluation throughput of the compiled evaluation copy (as pretrain.py builds it) against eager, on the
         same batches, and whether their losses agree (before mfu: bench.mfu's fixed-halting inference of the same
         model can then find its compiled graph in Inductor's cache)
  mfu    python -m bench.mfu for sudoku_mlp at the paper's batch (768) and arc_att at 192, halved until it fits
  nccl   with 2 or more GPUs: pretrain.py on 2 NCCL ranks against 1 rank, the first steps' losses
The exit status is 1 when a part failed."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import torch

from bench.mfu import CASES, compose_config, synchronize, write_synthetic_dataset
from training.tracking import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "eval", "mfu", "nccl")
PAPER_BATCHES = {"sudoku_mlp": 768, "arc_att": 192}
SMOKE_BATCHES = {"sudoku_mlp": 4, "arc_att": 2}
# The tiny model of the CPU smoke run
SMOKE_ARCH = ["arch.hidden_size=16", "arch.num_heads=2", "arch.L_layers=1", "arch.L_cycles=1", "arch.H_cycles=2",
              "arch.halt_max_steps=2"]
EVAL_BATCHES = 4
NCCL_STEPS = 8
TOLERANCE = {"bfloat16": 1e-2, "float32": 1e-4}  # compiled vs eager losses: fused kernels round differently


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


def row(check: str, result: str, detail: str) -> Dict[str, str]:
    return {"check": check, "result": result, "detail": detail}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def device_tests(args, budget: Budget, work: Path) -> List[Dict[str, str]]:
    marker = "device and not slow" if args.device == "cpu" else "device"  # the smoke run stays short
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "tests"], cwd=ROOT,
                         env=dict(os.environ, TEST_DEVICE=args.device), capture_output=True, text=True,
                         timeout=budget.left())
    summary = [line for line in out.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    return [row(f"pytest -m '{marker}' on {args.device}", "ok" if out.returncode == 0 else "FAIL",
                summary[-1].strip("= ") if summary else last_line(out.stdout + out.stderr))]


def mfu_case(name: str, args, budget: Budget, work: Path) -> Dict[str, str]:
    """bench.mfu for one case, at the largest batch from the target down (halving) that fits in memory."""
    smoke = args.device == "cpu"
    batch = (SMOKE_BATCHES if smoke else PAPER_BATCHES)[name]
    while True:
        path = work / f"mfu_{name}_{batch}.json"
        cmd = [sys.executable, "-m", "bench.mfu", "--case", name, "--batch-size", str(batch), "--device", args.device,
               "--json", str(path)]
        cmd += (["--steps", "1", "--warmup", "1", "--compile", "off", "--peak-seconds", "0.02", "--override", *SMOKE_ARCH]
                if smoke else ["--steps", "3", "--warmup", "2"])
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget.left())
        if out.returncode == 0:
            break
        if "out of memory" not in out.stderr.lower() or batch == 1:
            return row(f"bench.mfu {name}", "FAIL", f"batch {batch}: {last_line(out.stderr)}")
        batch //= 2
    [r] = json.loads(path.read_text())
    fixed = r["inference"]["fixed"]["puzzles_per_s"]
    return row(f"bench.mfu {name}", "ok",
               f"batch {batch}, {r['dtype']}, compile {'on' if r['compile'] else 'off'}: {r['step_seconds']:.3f} s/step, "
               f"MFU {r['mfu']:.1%} ({r['achieved_gflops']:.0f} of {r['peak_gflops']:.0f} GFLOP/s), "
               f"{r['peak_memory_mb']:.0f} MB; inference {fixed:.1f} puzzles/s")


def mfu_cases(args, budget: Budget, work: Path) -> List[Dict[str, str]]:
    return [mfu_case(name, args, budget, work) for name in PAPER_BATCHES]


def eval_throughput(args, work: Path) -> Dict[str, str]:
    """In this process: the sudoku_mlp model's test batches through its EMA copy, eager and compiled."""
    from models.ema import EMAHelper
    from models.build import build_loss_head
    from training.builders import create_dataloader
    from utils.device import maybe_compile, resolve_forward_dtype, setup_device
    from utils.distributed import DistInfo
    from evaluation.loop import evaluate

    smoke = args.device == "cpu"
    case = replace(CASES["sudoku_mlp"], batch_size=(SMOKE_BATCHES if smoke else PAPER_BATCHES)["sudoku_mlp"])
    device = setup_device(args.device)
    write_synthetic_dataset(work / "eval_data", case, train_examples=case.batch_size,
                            test_examples=case.batch_size * EVAL_BATCHES)
    config = compose_config(case, work / "eval_data", SMOKE_ARCH if smoke else [])
    loader, metadata = create_dataloader(config.data_paths, "test", config.global_batch_size, DistInfo())
    dtype = resolve_forward_dtype(config.arch.model_extra.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = build_loss_head(config.arch, metadata, config.global_batch_size, dtype)
    ema = EMAHelper()
    ema.register(head)
    eval_head = ema.ema_copy(head).eval()
    measured = {}
    for mode, model in (("eager", eval_head), ("compiled", maybe_compile(eval_head, True, device))):
        evaluate(model, loader, metadata.sets, [], DistInfo(), device, max_batches=1)  # untimed: compiles
        synchronize(device)
        start = time.perf_counter()
        metrics = evaluate(model, loader, metadata.sets, [], DistInfo(), device)["all"]
        synchronize(device)
        measured[mode] = (metrics, time.perf_counter() - start)
    (eager, eager_s), (compiled, compiled_s) = measured["eager"], measured["compiled"]
    differences = {k: abs(compiled[k] - v) / max(abs(v), 1e-6) for k, v in eager.items()}
    # The losses must agree; accuracies of an untrained model may move where near-equal logits swap order.
    loss_difference = max(d for k, d in differences.items() if k.endswith("loss"))
    same = loss_difference <= TOLERANCE.get(dtype, TOLERANCE["float32"])
    return row("evaluation compiled vs eager", "ok" if same else "FAIL",
               f"sudoku_mlp batch {case.batch_size}, {dtype}: eager {eager['count'] / eager_s:.1f} puzzles/s, compiled "
               f"{compiled['count'] / compiled_s:.1f} ({eager_s / compiled_s:.2f}x); losses differ by "
               f"{loss_difference:.1e}, other metrics by {max(differences.values()):.1e} at most")


def eval_part(args, budget: Budget, work: Path) -> List[Dict[str, str]]:
    """eval_throughput in a child process, so the budget bounds it and its GPU memory is its own."""
    out = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", args.device, "--eval-in-process", str(work)],
                         cwd=ROOT, capture_output=True, text=True, timeout=budget.left())
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return [row("evaluation compiled vs eager", "FAIL", last_line(out.stderr))]
    return [json.loads(lines[-1][len("RESULT "):])]


def nccl_losses(nproc: int, data: Path, work: Path, budget: Budget) -> List[float]:
    """The per-step training losses of a short pretrain.py run on `nproc` GPUs (float32, no TF32, no exploration:
    the ranks' split of the batch is then the only difference)."""
    run_dir = work / f"nccl_{nproc}"
    overrides = [f"data_paths=[{data}]", "data_build=null", "evaluators=[]", "global_batch_size=64", "epochs=1",
                 "eval_interval=1", "eval_max_batches=1", "lr=1e-3", "lr_warmup_steps=2", "device=cuda", "compile=False",
                 "arch.hidden_size=128", "arch.num_heads=4", "arch.puzzle_emb_ndim=128", "arch.H_cycles=2",
                 "arch.L_cycles=2", "arch.halt_max_steps=4", "arch.forward_dtype=float32", "arch.halt_exploration_prob=0.0",
                 f"+checkpoint_path={run_dir}"]
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv_backend=c10d",
        "--rdzv_endpoint=localhost:0", "--nnodes=1"]
    env = dict(os.environ, WANDB_MODE="disabled", NVIDIA_TF32_OVERRIDE="0")
    out = subprocess.run([*launcher, str(ROOT / "pretrain.py"), *overrides], cwd=work, env=env, capture_output=True,
                         text=True, timeout=budget.left())
    if out.returncode != 0:
        raise RuntimeError(f"{nproc} rank(s): {last_line(out.stderr)}")
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [r["train/lm_loss"] for r in records if r.get("train/lm_loss") is not None]


def nccl_part(args, budget: Budget, work: Path) -> List[Dict[str, str]]:
    check = "2 NCCL ranks = 1 rank"
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus < 2:
        return [row(check, "skipped", f"needs 2 CUDA GPUs, {gpus} visible")]
    data = work / "nccl_data"
    write_synthetic_dataset(data, CASES["quickstart"], train_examples=64 * NCCL_STEPS, test_examples=64)
    try:
        one, two = (nccl_losses(n, data, work, budget)[:NCCL_STEPS] for n in (1, 2))
    except RuntimeError as e:
        return [row(check, "FAIL", str(e))]
    worst = max((abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one, two)), default=float("inf"))
    ok = len(one) == len(two) == NCCL_STEPS and worst <= TOLERANCE["float32"]
    return [row(check, "ok" if ok else "FAIL", f"first {len(one)}/{len(two)} steps' losses differ by {worst:.1e} at most")]


RUNNERS = {"tests": device_tests, "mfu": mfu_cases, "eval": eval_part, "nccl": nccl_part}


def format_table(rows: List[Dict[str, str]]) -> str:
    cells = [("check", "result", "detail")] + [(r["check"], r["result"], r["detail"]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    text = ["| " + " | ".join(value.ljust(width) for value, width in zip(c, widths)) + " |" for c in cells]
    return "\n".join([text[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *text[1:]])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a tiny smoke run of every part")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget-seconds", type=float, default=470.0, help="for all parts together")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--eval-in-process", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible; python -m bench.gpu checks the GPU path (--device cpu: a tiny smoke run)")
    if args.eval_in_process:
        print("RESULT " + json.dumps(eval_throughput(args, Path(args.eval_in_process))))
        return
    budget = Budget(args.budget_seconds)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        for part in args.parts:
            start = time.monotonic()
            try:
                rows += RUNNERS[part](args, budget, Path(work))
            except subprocess.TimeoutExpired:
                rows.append(row(part, "FAIL", "out of time (--budget-seconds)"))
            print(f"[bench.gpu] {part}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if any(r["result"] == "FAIL" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
