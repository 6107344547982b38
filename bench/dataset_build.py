"""Time the two dataset builds the README reports (wall, CPU = user + sys, peak memory, size on disk).

Each build runs as its own process, exactly the README command, into a fresh temporary directory that is deleted
afterwards (the ARC build writes 6.8 GB). Prints a table and one JSON line. Not part of the test suite (minutes).

    python bench/dataset_build.py                       # both builds
    python bench/dataset_build.py --which sudoku --repeats 3
    taskset -c 1 python bench/dataset_build.py --which arc --tmp-dir /tmp
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from utils.errors import UserError, user_errors

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARC_PREFIX = ROOT.parent / "shared" / "data" / "arc-agi" / "arc-agi"


def build_commands(arc_prefix: str) -> dict:
    """The README's commands, with the output directory left as {out}."""
    return {
        "sudoku": [sys.executable, "dataset/build_sudoku_dataset.py", "--output-dir", "{out}/sudoku-extreme-1k-aug-1000",
                   "--subsample-size", "1000", "--num-aug", "1000"],
        "arc": [sys.executable, "-m", "dataset.build_arc_dataset", "--input-file-prefix", arc_prefix,
                "--output-dir", "{out}/arc1concept-aug-1000", "--subsets", "training", "evaluation", "concept",
                "--test-set-name", "evaluation"],
    }


def disk_usage(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_once(command: list, tmp_root: str) -> dict:
    """Run one build in a temporary directory; wait4 gives that process's own CPU time and peak RSS
    (its worker processes included once they are reaped)."""
    with tempfile.TemporaryDirectory(prefix="dataset-build-bench-", dir=tmp_root) as out:
        argv = [a.replace("{out}", out) for a in command]
        with tempfile.TemporaryFile() as log:  # a file, not a pipe: progress bars would fill a pipe and block
            started = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
            log.seek(0)
            stderr = log.read().decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"error: {' '.join(argv)} failed: {stderr.strip().splitlines()[-1] if stderr.strip() else status}")
        size = disk_usage(Path(out))
        shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "disk_mb": round(size / 2**20)}


@user_errors
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", nargs="+", choices=["sudoku", "arc"], default=["sudoku", "arc"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--arc-prefix", default=str(DEFAULT_ARC_PREFIX), help="ARC JSON prefix (<prefix>_<subset>_challenges.json)")
    p.add_argument("--tmp-dir", default=None, help="where the temporary outputs go (default: the system temp dir)")
    args = p.parse_args(argv)
    if "arc" in args.which and not Path(f"{args.arc_prefix}_training_challenges.json").is_file():
        raise UserError(f"{args.arc_prefix}_training_challenges.json not found: pass --arc-prefix <prefix> of the ARC JSON files")
    commands = build_commands(args.arc_prefix)
    results = {name: [run_once(commands[name], args.tmp_dir) for _ in range(args.repeats)] for name in args.which}

    print(f"{'build':<8} {'run':>3} {'wall s':>8} {'cpu s':>8} {'user s':>8} {'sys s':>7} {'peak MB':>8} {'disk MB':>8}")
    for name, runs in results.items():
        for i, r in enumerate(runs):
            print(f"{name:<8} {i:>3} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['user_s']:>8.2f} {r['sys_s']:>7.2f} "
                  f"{r['peak_rss_mb']:>8} {r['disk_mb']:>8}")
    print(json.dumps({"bench": "dataset_build", "cpus": os.cpu_count(),
                      "affinity": sorted(os.sched_getaffinity(0)), "results": results}))


if __name__ == "__main__":
    main()
