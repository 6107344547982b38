"""The study's arithmetic and its tables, as pure functions: effective depth, pooled intervals, mean curves,
Markdown and CSV."""
import csv
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from evaluators.stats import wilson_interval


def effective_depth(arch: Dict) -> Optional[int]:
    """Layer applications per supervision step (the paper's T * (n + 1) * layers for TRM); None for an architecture
    this study does not know."""
    name = arch["name"]
    H, L = int(arch.get("H_cycles", 1)), int(arch.get("L_cycles", 1))
    if "transformers_baseline" in name:
        return H * int(arch["H_layers"])
    if ".hrm@" in name:
        return H * (L * int(arch["L_layers"]) + int(arch["H_layers"]))
    if ".trm" in name:  # trm, trm_singlez, trm_hier6: L_cycles scratchpad updates + one answer update per H cycle
        return H * (L + 1) * int(arch["L_layers"])
    if ".urm@" in name:  # every inner loop applies the whole shared stack
        return H * L * int(arch["num_layers"])
    return None


def pooled_accuracy(accuracies: Sequence[float], counts: Sequence[float]) -> Tuple[float, float, float]:
    """Exact accuracy over all seeds' test puzzles together, with its Wilson 95% interval. The interval reflects the
    finite test set, not the spread between seeds (shown separately in the table)."""
    successes = sum(round(a * n) for a, n in zip(accuracies, counts))
    total = sum(counts)
    low, high = wilson_interval(successes, total)
    return (successes / total if total else 0.0), low, high


def mean_curve(curves: Sequence[Sequence[Tuple[float, ...]]]) -> List[Tuple[float, ...]]:
    """Seeds' curves of (time, accuracy, ...) points averaged point by point and coordinate by coordinate (the i-th
    evaluation of each seed), up to the shortest curve."""
    length = min((len(c) for c in curves), default=0)
    return [tuple(sum(c[i][j] for c in curves) / len(curves) for j in range(len(curves[0][i]))) for i in range(length)]


@dataclass
class RunResult:
    task: str
    model: str
    seed: int
    params: int
    effective_depth: Optional[int]
    steps: int
    train_seconds: float
    exact_accuracy: float
    count: int
    cell_accuracy: float = 0.0   # fraction of cells right: progress that exact accuracy does not show yet
    time_curve: List[Tuple[float, float, float]] = field(default_factory=list)  # (train seconds, exact, cell accuracy)
    step_curve: List[float] = field(default_factory=list)                       # exact accuracy after k = 1.. ACT steps
    step_cell_curve: List[float] = field(default_factory=list)                  # cell accuracy after k = 1.. ACT steps


@dataclass
class ModelSummary:
    task: str
    model: str
    seeds: List[int]
    params: int
    effective_depth: Optional[int]
    exact_accuracy: float
    ci_low: float
    ci_high: float
    seed_accuracies: List[float]
    steps_mean: float
    train_seconds_mean: float
    puzzles: int
    cell_accuracy_mean: float = 0.0


def summarise(runs: Sequence[RunResult]) -> List[ModelSummary]:
    """One row per (task, model), in the order the runs came."""
    groups: Dict[Tuple[str, str], List[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.task, run.model), []).append(run)
    rows = []
    for (task, model), group in groups.items():
        acc, low, high = pooled_accuracy([r.exact_accuracy for r in group], [r.count for r in group])
        rows.append(ModelSummary(task=task, model=model, seeds=[r.seed for r in group], params=group[0].params,
                                 effective_depth=group[0].effective_depth, exact_accuracy=acc, ci_low=low, ci_high=high,
                                 seed_accuracies=[r.exact_accuracy for r in group],
                                 steps_mean=sum(r.steps for r in group) / len(group),
                                 train_seconds_mean=sum(r.train_seconds for r in group) / len(group),
                                 puzzles=sum(r.count for r in group),
                                 cell_accuracy_mean=sum(r.cell_accuracy for r in group) / len(group)))
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def percent_with_interval(rate: float, low: float, high: float) -> str:
    """A rate and its 95% interval as the study tables print them: 50.0% [47.2, 52.8]."""
    return f"{_pct(rate)}% [{_pct(low)}, {_pct(high)}]"


def markdown_table(rows: Sequence[ModelSummary]) -> str:
    lines = ["| task | model | parameters | effective depth | exact accuracy [95% CI] | per seed | cell accuracy | "
             "training steps | training time (s) |",
             "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        depth = str(r.effective_depth) if r.effective_depth is not None else "n/a"
        lines.append(f"| {r.task} | {r.model} | {r.params:,} | {depth} | "
                     f"{percent_with_interval(r.exact_accuracy, r.ci_low, r.ci_high)} | {' / '.join(_pct(a) for a in r.seed_accuracies)} | "
                     f"{_pct(r.cell_accuracy_mean)}% | {r.steps_mean:.0f} | {r.train_seconds_mean:.1f} |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["task", "model", "seeds", "params", "effective_depth", "exact_accuracy", "ci_low", "ci_high",
               "seed_accuracies", "cell_accuracy_mean", "steps_mean", "train_seconds_mean", "puzzles"]


def csv_table(rows: Sequence[ModelSummary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.task, r.model, ";".join(map(str, r.seeds)), r.params,
                         "" if r.effective_depth is None else r.effective_depth, f"{r.exact_accuracy:.4f}",
                         f"{r.ci_low:.4f}", f"{r.ci_high:.4f}", ";".join(f"{a:.4f}" for a in r.seed_accuracies),
                         f"{r.cell_accuracy_mean:.4f}", f"{r.steps_mean:.1f}", f"{r.train_seconds_mean:.2f}", r.puzzles])
    return out.getvalue()
