"""The study's two figures (PNG): held-out exact accuracy against training time, and against the number of
supervision steps the final model is allowed at evaluation."""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from bench.replicate.table import RunResult, mean_curve


def _by_task_model(runs: Sequence[RunResult]) -> Dict[str, Dict[str, List[RunResult]]]:
    out: Dict[str, Dict[str, List[RunResult]]] = {}
    for run in runs:
        out.setdefault(run.task, {}).setdefault(run.model, []).append(run)
    return out


def _figure(n_tasks: int):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, n_tasks, figsize=(4.2 * n_tasks, 3.4), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, axes, path: Path, xlabel: str) -> Path:
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out exact accuracy")
    axes[-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(runs: Sequence[RunResult], path: Path) -> Path:
    """Seeds as faint lines, their mean as a bold one, per model; one panel per task."""
    groups = _by_task_model(runs)
    plt, fig, axes = _figure(len(groups))
    for ax, (task, models) in zip(axes, groups.items()):
        for i, (model, seeds) in enumerate(models.items()):
            colour = f"C{i}"
            for run in seeds:
                ax.plot(*zip(*run.time_curve), color=colour, alpha=0.25, lw=1, marker=".")
            mean: List[Tuple[float, float]] = mean_curve([r.time_curve for r in seeds])
            if mean:
                ax.plot(*zip(*mean), color=colour, lw=2, marker="o", label=model)
        ax.set_title(task)
    return _save(plt, fig, axes, path, "training time (s)")


def plot_accuracy_vs_steps(runs: Sequence[RunResult], path: Path) -> Path:
    """Mean over seeds of the final model's accuracy when stopped after k supervision steps."""
    groups = _by_task_model(runs)
    plt, fig, axes = _figure(len(groups))
    for ax, (task, models) in zip(axes, groups.items()):
        for i, (model, seeds) in enumerate(models.items()):
            length = min(len(r.step_curve) for r in seeds)
            ks = list(range(1, length + 1))
            ax.plot(ks, [sum(r.step_curve[k - 1] for r in seeds) / len(seeds) for k in ks], color=f"C{i}", lw=2,
                    marker="o", label=model)
        ax.set_title(task)
    return _save(plt, fig, axes, path, "supervision steps at evaluation")
