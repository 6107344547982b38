"""Training and inference throughput, analytic model FLOPs and MFU of TRM configurations on this machine.

    python -m bench.mfu                                         # sudoku_mlp, arc_att, quickstart
    python -m bench.mfu --case sudoku_mlp --compile off         # eager
    python -m bench.mfu --case quickstart --checkpoint checkpoints/Sudoku6-quick-ACT-torch/<run>/step_1000

Each case runs in a process of its own (so its peak memory is its own): the model comes from the experiment's
YAML, `--steps` real training steps (loss head, AdamATan2 + sign-SGD, ACT carry, LR schedule) run on batches that
the real loader draws from a synthetic dataset of the task's shape, then inference with fixed and adaptive
halting. The peak is the best rate of large square matrix products measured in the same process, device and
dtype, right after each timed step; MFU = (analytic model FLOPs per step / median step time) / median peak.
Prints a table and the results as JSON."""
import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from utils.errors import user_errors

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    experiment: str
    batch_size: int
    seq_len: int
    vocab_size: int
    note: str


CASES: Dict[str, Case] = {
    "sudoku_mlp": Case("sudoku_mlp", 32, 81, 11, "TRM-MLP, Sudoku paper size (hidden 512, H3 x L6)"),
    "arc_att": Case("arc1", 8, 900, 12, "TRM attention, ARC paper size (hidden 512, H3 x L4, 30x30 grids)"),
    "quickstart": Case("quickstart", 128, 36, 8, "the README quickstart (hidden 64, H2 x L2, 6x6 Sudoku)"),
}
NUM_PUZZLE_IDS = 1000   # rows of the synthetic puzzle-embedding table (only the batch's rows are touched)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 0.3) -> float:
    """Best FLOP/s of n x n x n products (output preallocated): what the matrix units deliver at best here.
    Each size runs for `seconds`; only its second half counts (the first warms clocks, caches and kernel choice)."""
    best = 0.0
    for n in ((4096, 8192) if device.type == "cuda" else (1024, 2048)):   # the sizes that run fastest there
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=dtype)
        rates = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(rates) < 6:
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            synchronize(device)
            rates.append(2 * n ** 3 / (time.perf_counter() - start))
        best = max(best, max(rates[len(rates) // 2:]))
    return best


def write_synthetic_dataset(path: Path, case: Case, train_examples: int, test_examples: int, seed: int = 0) -> None:
    """Random tokens of the task's shape, one example per puzzle and group (the Sudoku/Maze layout)."""
    from dataset.format import single_example_layout, single_set_metadata, write_identifiers, write_split
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_examples), ("test", test_examples)):
        layout = single_example_layout(count, 1)
        layout["puzzle_identifiers"] = rng.integers(1, NUM_PUZZLE_IDS, count, dtype=np.int32)
        tokens = lambda: rng.integers(1, case.vocab_size, (count, case.seq_len), dtype=np.uint8)
        metadata = single_set_metadata(case.seq_len, case.vocab_size, count, 1).model_copy(
            update={"num_puzzle_identifiers": NUM_PUZZLE_IDS})
        write_split(path / split, metadata, {"all": {"inputs": tokens(), "labels": tokens(), **layout}})
    write_identifiers(path)


def compose_config(case: Case, data_path: Path, overrides: List[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from training.config import validate_config
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        cfg = compose("cfg_pretrain", overrides=[f"+experiment={case.experiment}", f"global_batch_size={case.batch_size}",
                                                 f"data_paths=[{data_path}]", "data_build=null", "evaluators=[]",
                                                 "ema=False", *overrides])
    return validate_config(OmegaConf.to_container(cfg, resolve=True)).fill_defaults()


def trm_shape(inner, case: Case):
    from bench.flops import TRMShape
    c = inner.config
    return TRMShape(batch_size=case.batch_size, seq_len=case.seq_len, puzzle_emb_len=inner.puzzle_emb_len,
                    vocab_size=case.vocab_size, hidden_size=c.hidden_size, expansion=c.expansion, num_heads=c.num_heads,
                    mlp_t=c.mlp_t, L_layers=c.L_layers, H_cycles=c.H_cycles, L_cycles=c.L_cycles)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def time_inference(model, loader, runner, device) -> Dict[str, float]:
    """Puzzles and examples x ACT steps per second over the whole synthetic test split."""
    puzzles = act_steps = 0
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _, _, metrics, _ in runner(model, loader, [], device):
            puzzles += int(metrics["count"])
            act_steps += int(metrics["steps"])
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"puzzles_per_s": puzzles / seconds, "example_steps_per_s": act_steps / seconds,
            "mean_steps": act_steps / max(puzzles, 1)}


def time_training(name: str, runs, train_loader, config, args, device, dtype):
    """Training steps of each run in `runs` ((label, model, optimizers, base_lrs)), taken in turn so that the host's
    drift affects them alike. Returns each run's step times after --warmup untimed steps, the matmul peak measured
    right after each step of the first run, and the seconds spent loading that run's batches."""
    from utils.distributed import DistInfo
    from training.loop import TrainState, train_batch
    from training.schedule import Schedule
    dist = DistInfo()
    schedule = Schedule(total_steps=10 ** 6, warmup_steps=config.lr_warmup_steps, min_ratio=config.lr_min_ratio)
    states = [TrainState(model=model, optimizers=opt, base_lrs=lrs, schedule=schedule) for _, model, opt, lrs in runs]
    load_seconds, step_times, peaks = 0.0, [[] for _ in runs], []
    batches = [iter(train_loader) for _ in runs]
    for i in range(args.warmup + args.steps):
        for r, ((label, model, _, _), state) in enumerate(zip(runs, states)):
            model.train()
            start = time.perf_counter()
            _, batch, global_batch_size = next(batches[r])
            loaded = time.perf_counter()
            train_batch(state, batch, global_batch_size, dist, device)
            synchronize(device)
            step_time = time.perf_counter() - loaded
            if i >= args.warmup:
                step_times[r].append(step_time)
                if r == 0:
                    load_seconds += loaded - start
                    # Right after each step: the machine's pace drifts (shared hosts, clocks), so the peak is paired.
                    peaks.append(matmul_peak(dtype, device, seconds=args.peak_seconds))
            print(f"[{name}] {label} train step {i + 1}/{args.warmup + args.steps}: {step_time:.2f} s", file=sys.stderr)
    return step_times, peaks, load_seconds


def run_case(name: str, args, work: Path) -> dict:
    """Train, time and infer one case; its synthetic dataset goes under `work`."""
    from evaluation.halting import AdaptiveHalting
    from models.build import build_loss_head
    from training.builders import create_dataloader, create_optimizers
    from training.checkpoint import load_weights_file
    from utils.device import maybe_compile, pick_device, resolve_forward_dtype, setup_device
    from utils.distributed import DistInfo
    from evaluation.halting import run_to_max_steps
    from bench.flops import act_step_flops
    from bench.plain_trm import use_plain_network

    case = CASES[name]
    if args.batch_size:
        case = replace(case, batch_size=args.batch_size)
    device = pick_device(args.device) if args.release_freed_memory else setup_device(args.device)
    torch.manual_seed(0)
    steps = args.warmup + args.steps
    write_synthetic_dataset(work / "data", case, train_examples=case.batch_size * (steps + 1),
                            test_examples=case.batch_size * args.infer_batches)
    config = compose_config(case, work / "data", args.override)
    dist = DistInfo()
    train_loader, metadata = create_dataloader(config.data_paths, "train", config.global_batch_size, dist, seed=config.seed)
    test_loader, _ = create_dataloader(config.data_paths, "test", config.global_batch_size, dist)
    dtype_name = resolve_forward_dtype(config.arch.model_extra.get("forward_dtype", "bfloat16"), device)
    with torch.device(device):
        head = build_loss_head(config.arch, metadata, config.global_batch_size, dtype_name)
    if args.checkpoint:
        load_weights_file(head, args.checkpoint, what="--checkpoint")
    optimizers, base_lrs = create_optimizers(config, head, 1)
    compiled = args.compile == "on"
    model = maybe_compile(head, compiled, device)
    shape = trm_shape(head.model.inner, case)
    dtype = getattr(torch, dtype_name)

    runs = [("ours", model, optimizers, base_lrs)]
    if args.versus_plain:  # the same equations and initial weights, written plainly (bench/plain_trm.py)
        plain_head = copy.deepcopy(head)
        use_plain_network(plain_head)
        runs.append(("plain", maybe_compile(plain_head, compiled, device), *create_optimizers(config, plain_head, 1)))
    all_step_times, peaks, load_seconds = time_training(name, runs, train_loader, config, args, device, dtype)
    step_times = all_step_times[0]
    plain_step = float(np.median(all_step_times[1])) if args.versus_plain else None
    model.eval()
    inference = {}
    for mode, runner in (("fixed", run_to_max_steps), ("adaptive", AdaptiveHalting(threshold=0.5))):
        time_inference(model, test_loader, runner, device)   # untimed: torch.compile builds this mode's graphs
        inference[mode] = time_inference(model, test_loader, runner, device)
        print(f"[{name}] inference {mode}: {inference[mode]['puzzles_per_s']:.1f} puzzles/s", file=sys.stderr)

    train_flops = act_step_flops(shape, training=True)
    step_time, peak = float(np.median(step_times)), float(np.median(peaks))
    achieved = train_flops / step_time
    return {
        "case": name, "note": case.note, "device": str(device), "dtype": dtype_name, "compile": compiled,
        "threads": torch.get_num_threads(), "batch_size": case.batch_size,
        "params": sum(p.numel() for p in head.parameters()),
        "train_gflop_per_step": train_flops / 1e9, "step_seconds": step_time,
        "train_example_steps_per_s": case.batch_size / step_time,
        "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "mfu": achieved / peak,
        "data_loading_share": load_seconds / (load_seconds + sum(step_times)),
        "inference_gflop_per_act_step": act_step_flops(shape, training=False) / 1e9,
        "inference": inference, "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "CUDA allocated" if device.type == "cuda" else "process RSS",
        **({"plain_step_seconds": plain_step, "speedup_over_plain": plain_step / step_time} if plain_step else {}),
    }


def format_table(results: List[dict]) -> str:
    rows = [("case", "device", "dtype", "compile", "batch", "GFLOP/step", "step s", "train ex*steps/s", "achieved GFLOP/s",
             "peak GFLOP/s", "MFU", "data load", "fixed puzzles/s", "adaptive puzzles/s (steps)", "peak MB")]
    for r in results:
        inf = r["inference"]
        rows.append((r["case"], f"{r['device']} x{r['threads']}" if r["device"] == "cpu" else r["device"], r["dtype"],
                     "on" if r["compile"] else "off", str(r["batch_size"]), f"{r['train_gflop_per_step']:.0f}",
                     f"{r['step_seconds']:.3f}", f"{r['train_example_steps_per_s']:.1f}", f"{r['achieved_gflops']:.0f}",
                     f"{r['peak_gflops']:.0f}", f"{r['mfu']:.1%}", f"{r['data_loading_share']:.2%}",
                     f"{inf['fixed']['puzzles_per_s']:.1f}",
                     f"{inf['adaptive']['puzzles_per_s']:.1f} ({inf['adaptive']['mean_steps']:.2f})",
                     f"{r['peak_memory_mb']:.0f}"))
    if any("speedup_over_plain" in r for r in results):
        rows = [row + (("plain step s", "speed-up") if i == 0 else
                       (f"{results[i - 1].get('plain_step_seconds', float('nan')):.3f}",
                        f"{results[i - 1].get('speedup_over_plain', float('nan')):.2f}x"))
                for i, row in enumerate(rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size for every case (default: each case's; the paper used 768 on 8 GPUs)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (torch.compile compiles here)")
    p.add_argument("--infer-batches", type=int, default=1, help="test batches for each inference mode")
    p.add_argument("--compile", choices=["on", "off"], default="on")
    p.add_argument("--peak-seconds", type=float, default=0.3, help="time per matrix size of each peak measurement")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--checkpoint", default=None, help="weights to load (e.g. a trained quickstart step_N) so that "
                                                      "adaptive halting stops when the model is confident")
    p.add_argument("--release-freed-memory", action="store_true",
                   help="CPU: leave glibc malloc returning freed memory to the OS (the default allocator behaviour)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides, e.g. arch.hidden_size=256")
    p.add_argument("--versus-plain", action="store_true",
                   help="also time a plain eager-style implementation of the same network (bench/plain_trm.py), "
                        "compiled like ours, in alternating steps, and print our speed-up over it")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@user_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.in_process:
        with tempfile.TemporaryDirectory(prefix="bench-mfu-") as work:
            print("RESULT " + json.dumps(run_case(args.case[0], args, Path(work))))
        return
    results = []
    for name in args.case:
        # argparse keeps the last --case, so the child runs just this one; only the parent writes --json
        child = [sys.executable, "-m", "bench.mfu", *(argv if argv is not None else sys.argv[1:]), "--in-process",
                 "--case", name]
        out = subprocess.run(child, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"error: case {name} failed (exit {out.returncode}); run python -m bench.mfu --case {name} --in-process")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    print(format_table(results))
    print(json.dumps(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
