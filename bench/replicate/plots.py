"""The study's two figures (PNG): held-out accuracy against training time, and against the number of supervision
steps the final model is allowed at evaluation. Top row exact accuracy (whole puzzle right), bottom row cell accuracy,
which shows progress at budgets too small for whole puzzles."""
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from bench.replicate.table import RunResult, mean_curve

ROWS = ("held-out exact accuracy", "held-out cell accuracy")


def _by_task_model(runs: Sequence[RunResult]) -> Dict[str, Dict[str, List[RunResult]]]:
    out: Dict[str, Dict[str, List[RunResult]]] = {}
    for run in runs:
        out.setdefault(run.task, {}).setdefault(run.model, []).append(run)
    return out


def _plot(runs: Sequence[RunResult], path: Path, xlabel: str, draw: Callable) -> Path:
    """One column per task, one row per accuracy; draw(ax, row, colour, model, seeds) plots one model."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    groups = _by_task_model(runs)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(ROWS), len(groups), figsize=(4.2 * len(groups), 6.0), squeeze=False, sharex="col")
    for col, (task, models) in enumerate(groups.items()):
        axes[0][col].set_title(task)
        for row in range(len(ROWS)):
            ax = axes[row][col]
            for i, (model, seeds) in enumerate(models.items()):
                draw(ax, row, f"C{i}", model, seeds)
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            axes[row][0].set_ylabel(ROWS[row])
        axes[-1][col].set_xlabel(xlabel)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(runs: Sequence[RunResult], path: Path) -> Path:
    """Seeds as faint lines, their mean as a bold one."""
    def draw(ax, row, colour, model, seeds):
        for run in seeds:
            ax.plot([p[0] for p in run.time_curve], [p[1 + row] for p in run.time_curve], color=colour, alpha=0.25,
                    lw=1, marker=".")
        mean = mean_curve([r.time_curve for r in seeds])
        if mean:
            ax.plot([p[0] for p in mean], [p[1 + row] for p in mean], color=colour, lw=2, marker="o", label=model)
    return _plot(runs, path, "training time (s)", draw)


def plot_accuracy_vs_steps(runs: Sequence[RunResult], path: Path) -> Path:
    """Mean over seeds of the final model's accuracy when stopped after k supervision steps."""
    def draw(ax, row, colour, model, seeds):
        curves = [r.step_curve if row == 0 else r.step_cell_curve for r in seeds]
        ks = range(1, min(len(c) for c in curves) + 1)
        ax.plot(list(ks), [sum(c[k - 1] for c in curves) / len(curves) for k in ks], color=colour, lw=2, marker="o",
                label=model)
    return _plot(runs, path, "supervision steps at evaluation", draw)
