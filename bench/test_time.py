"""Test-time depth and width of trained runs (README, "Measured on a laptop"):
`python -m bench.test_time RUN [RUN ...] [--depths 8 16 32 64] [--votes 16] [--latent-noise 0.1] [--jobs 2]`.

Every run is scored by evaluate.py itself, so the figures are what a user's own command prints: once with
`depths=[...] halt=both`, once with `votes=N` (all vote rules at widths 1, 2, 4, ... N) and, with --latent-noise,
once more with `latent_noise=`. The tables (95% Wilson intervals), results.json and test_time.png go to
--output-dir; the evaluations themselves to <output-dir>/runs/<run>/<pass>."""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from tqdm import tqdm

from bench.replicate.table import percent_with_interval
from utils.errors import MissingFile, UserError, user_errors

ROOT = Path(__file__).resolve().parents[1]


def pass_dir(out: Path, run: Path, name: str) -> Path:
    """Where evaluate.py writes one pass of one run; its output goes to the .log beside it."""
    return out / "runs" / run.name / name


def passes(run: Path, depths: Sequence[int], votes: int, latent_noise: float, out: Path) -> List[Tuple[str, List[str]]]:
    """(pass name, evaluate.py overrides) for one run."""
    common = [f"checkpoint={run}"]
    todo = [("depth", common + [f"depths=[{','.join(map(str, depths))}]", "halt=both"]),
            ("width", common + [f"votes={votes}"])]
    if latent_noise > 0:
        todo.append(("width_noise", common + [f"votes={votes}", f"latent_noise={latent_noise}"]))
    return [(name, overrides + [f"output_dir={pass_dir(out, run, name)}"]) for name, overrides in todo]


def evaluate(overrides: List[str], threads: int, log: Path) -> None:
    """One evaluate.py run; its output (progress bars included) goes to `log`, which a user can follow."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_MODE="disabled")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *overrides], cwd=ROOT, env=env,
                              stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"evaluate.py {' '.join(overrides)} failed (exit {code}): {tail} (whole output: {log})")


def collect(runs: Sequence[Path], out: Path) -> Dict[str, Any]:
    """{run: {"step", "depth": [rows], "width": {rule: {n: {...}}}, "width_noise": ..., "latent_noise"}}."""
    collected = {}
    for run in runs:
        entry: Dict[str, Any] = {}
        for name in ("depth", "width", "width_noise"):
            path = pass_dir(out, run, name) / "eval_results.json"
            if not path.is_file():
                continue
            report = json.loads(path.read_text())
            entry["step"] = report["step"]
            entry["trained_halt_max_steps"] = report["trained_halt_max_steps"]
            if name == "depth":
                entry["depth"] = [r for r in report["depths"] if r["set"] == "all"]
            else:
                entry[name] = {rule: {int(n): r for n, r in by_n.items()} for rule, by_n in report["width"]["results"].items()}
                if name == "width_noise":
                    entry["latent_noise"] = report["width"]["latent_noise"]
        if entry:
            collected[run.name] = entry
    return collected


def markdown(collected: Dict[str, Any]) -> str:
    lines = ["Exact accuracy on the held-out puzzles, with 95% Wilson intervals."]
    depths = sorted({r["depth"] for entry in collected.values() for r in entry.get("depth", [])})
    if depths:
        lines += ["", "**Depth** (the most ACT steps at evaluation; fixed: every puzzle runs them all, adaptive: a "
                  "puzzle stops once sigmoid(q_halt) > 0.5)", "",
                  "| run | trained with | halting | " + " | ".join(f"{d} steps" for d in depths) + " |",
                  "|---|---|---|" + "---|" * len(depths)]
    for run, entry in collected.items():
        for halt in ("fixed", "adaptive"):
            rows = {r["depth"]: r for r in entry.get("depth", []) if r["halt"] == halt}
            if rows:
                cells = [percent_with_interval(rows[d]["exact_accuracy"], rows[d]["ci_low"], rows[d]["ci_high"])
                         + ("" if halt == "fixed" else f" ({rows[d]['mean_steps']:.1f} steps)") if d in rows else ""
                         for d in depths]
                lines.append(f"| {run} | {entry['trained_halt_max_steps']} steps | {halt} | " + " | ".join(cells) + " |")
    for key, title in (("width", "**Width** (N symmetric variants per puzzle, each solved at the trained depth with "
                                 "fixed halting, mapped back, one answer chosen by the rule)"),
                       ("width_noise", "**Width with a noisy initial state** (variants after the first also start "
                                       "from the initial latent state plus noise)")):
        tables = [(run, entry) for run, entry in collected.items() if key in entry]
        if not tables:
            continue
        counts = sorted({n for _, entry in tables for by_n in entry[key].values() for n in by_n})
        lines += ["", title, "", "| run | rule | " + " | ".join(f"N = {n}" for n in counts) + " |",
                  "|---|---|" + "---|" * len(counts)]
        for run, entry in tables:
            label = run + (f" (noise {entry['latent_noise']:g})" if key == "width_noise" else "")
            for rule, by_n in entry[key].items():
                cells = [percent_with_interval(by_n[n]["exact_accuracy"], by_n[n]["exact_accuracy_ci_low"], by_n[n]["exact_accuracy_ci_high"])
                         if n in by_n else "" for n in counts]
                lines.append(f"| {label} | {rule} | " + " | ".join(cells) + " |")
    puzzles = {r["count"] for entry in collected.values() for r in entry.get("depth", [])}
    lines += ["", f"Held-out puzzles per cell: {', '.join(map(str, sorted(puzzles)))}." if puzzles else ""]
    return "\n".join(lines).rstrip() + "\n"


def plot(collected: Dict[str, Any], path: Path) -> Path:
    """Left: exact accuracy against the step limit (fixed and adaptive halting); right: against the width N per
    vote rule. Shaded: the 95% intervals."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax in (left, right):
        ax.set_xscale("log", base=2)  # before the ticks: setting a scale resets them

    def line(ax, xs, rows, label, style, rate="exact_accuracy", low="ci_low", high="ci_high"):
        (drawn,) = ax.plot(xs, [r[rate] for r in rows], style, marker="o", label=label)
        ax.fill_between(xs, [r[low] for r in rows], [r[high] for r in rows], color=drawn.get_color(), alpha=0.12)
        ax.set_xticks(xs, [str(x) for x in xs])

    for i, (run, entry) in enumerate(collected.items()):
        for halt, style in (("fixed", "-"), ("adaptive", "--")):
            rows = sorted((r for r in entry.get("depth", []) if r["halt"] == halt), key=lambda r: r["depth"])
            if rows:
                line(left, [r["depth"] for r in rows], rows, f"{run}, {halt} halting", f"C{i}{style}")
        for key, style in (("width", "-"), ("width_noise", ":")):
            for j, (rule, by_n) in enumerate(entry.get(key, {}).items()):
                ns = sorted(by_n)
                suffix = f" + noise {entry['latent_noise']:g}" if key == "width_noise" else ""
                line(right, ns, [by_n[n] for n in ns], f"{run}, {rule}{suffix}", f"C{i + 3 * j}{style}",
                     low="exact_accuracy_ci_low", high="exact_accuracy_ci_high")
    for ax, xlabel in ((left, "most ACT steps at evaluation (halt_max_steps)"), (right, "variants voted (votes=N)")):
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("held-out exact accuracy")
    left.set_title("test-time depth")
    right.set_title("test-time width")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (or weights files) of trained puzzle models")
    p.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--votes", type=int, default=16, help="the largest width N")
    p.add_argument("--latent-noise", type=float, default=0.0, help="> 0: one more width pass with this noise")
    p.add_argument("--jobs", type=int, default=1, help="evaluations at once, sharing the cores this process may use")
    p.add_argument("--output-dir", type=Path, default=ROOT / "bench" / "results" / "test_time")
    p.add_argument("--report-only", action="store_true", help="rewrite the tables and plot from evaluations on disk")
    args = p.parse_args(argv)
    if any(d < 1 for d in args.depths) or args.votes < 2 or args.jobs < 1:
        raise UserError("--depths must be positive, --votes at least 2 and --jobs at least 1")
    names = [run.name for run in args.runs]
    if len(set(names)) != len(names):
        raise UserError(f"runs {names} share a directory name; their evaluations would overwrite each other")
    for run in args.runs:
        if not run.exists():
            raise MissingFile(f"run {run} does not exist: give a run directory of pretrain.py (or a weights file)")
    return args


@user_errors
def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    out = args.output_dir
    if not args.report_only:
        todo = [(overrides, pass_dir(out.resolve(), run, name).with_suffix(".log")) for run in args.runs
                for name, overrides in passes(run.resolve(), args.depths, args.votes, args.latent_noise, out.resolve())]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // args.jobs)  # the cores this process may use (taskset), shared by the jobs
        print(f"{len(todo)} evaluations of {len(args.runs)} runs, {args.jobs} at a time; each one's output in "
              f"{out / 'runs'}/<run>/<pass>.log")
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(evaluate, overrides, threads, log) for overrides, log in todo]
            for future in tqdm(as_completed(futures), total=len(futures), desc="evaluations"):
                future.result()  # a failure, as its one line
    collected = collect(args.runs, out)
    if not collected:
        raise MissingFile(f"no evaluations under {out / 'runs'}: run without --report-only first")
    (out / "results.json").write_text(json.dumps(collected, indent=1))
    (out / "results.md").write_text(markdown(collected))
    written = plot(collected, out / "test_time.png")
    print((out / "results.md").read_text())
    print(f"Wrote {out / 'results.md'}, {out / 'results.json'}, {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
