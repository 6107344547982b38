"""Peak resident memory per rank at a fixed global batch, for 1..N CPU processes under torchrun.

    python -m bench.rank_memory --nproc 1 2 --global-batch-size 256

Trains a few steps of a Sudoku-sized TRM (generated 9x9 data) and prints each rank's peak RSS."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from utils.errors import user_errors

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = """
import atexit, os, resource, runpy, sys
atexit.register(lambda: print(f"PEAK_RSS rank={os.environ.get('RANK', '0')} mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peak_rss_per_rank(args, work: Path) -> dict:
    """{processes: {rank: peak RSS in MB}} of short pretrain.py runs on a small 9x9 Sudoku set built under `work`."""
    data = work / "sudoku9"
    subprocess.run([sys.executable, "-m", "dataset.build_sudoku_dataset", "--output-dir", str(data), "--size", "9",
                    "--generate", "64", "--generate-test", "8", "--num-aug", "16"], cwd=ROOT, check=True, capture_output=True)
    wrapper = work / "peak_rss.py"
    wrapper.write_text(WRAPPER)
    env = dict(os.environ, WANDB_MODE="disabled", DISABLE_COMPILE="1", OMP_NUM_THREADS="1")
    results = {}
    for nproc in args.nproc:
        overrides = [f"data_paths=[{data}]", "evaluators=[]", f"global_batch_size={args.global_batch_size}", "epochs=8",
                     "eval_interval=8", "eval_max_batches=1", "device=cpu", f"arch.hidden_size={args.hidden_size}",
                     "arch.mlp_t=True", "arch.pos_encodings=none", "arch.halt_max_steps=4", f"+checkpoint_path={work / f'run{nproc}'}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv_backend=c10d",
               "--rdzv_endpoint=localhost:0", "--nnodes=1", str(wrapper), str(ROOT / "pretrain.py"), *overrides]
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"run with {nproc} processes failed:\n{out.stderr[-2000:]}")
        peaks = {int(r): int(mb) for r, mb in re.findall(r"PEAK_RSS rank=(\d+) mb=(\d+)", out.stdout + out.stderr)}
        results[nproc] = peaks
        print(f"{nproc} process(es), global batch {args.global_batch_size}: peak RSS per rank (MB) "
              + ", ".join(f"rank {r}: {mb}" for r, mb in sorted(peaks.items())))
    return results


@user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--global-batch-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rank-memory-") as work:
        results = peak_rss_per_rank(args, Path(work))
    base = max(results[min(results)].values())
    for nproc, peaks in sorted(results.items()):
        print(f"{nproc} ranks: max per-rank peak {max(peaks.values())} MB = {max(peaks.values()) / base:.2f}x of {min(results)} rank(s)")
    print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
