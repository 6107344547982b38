"""Test-time depth (docs/evaluation.md#test-time-depth): evaluating with more (or fewer) ACT steps than training
used, and the table and plot of exact accuracy against the number of steps, for fixed and adaptive halting."""
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from models.recursive_reasoning.act import act_model, update_config
from utils.errors import UserError


def set_halt_max_steps(head: nn.Module, steps: int) -> None:
    """The ACT model inside `head` runs at most `steps` steps per row from now on (every row exactly `steps` under
    fixed halting). Only the halting limit changes: the weights do not depend on it."""
    model = act_model(head)
    if not hasattr(getattr(model, "config", None), "halt_max_steps"):
        raise UserError(f"halt_max_steps: {type(model).__name__} has no ACT halting; depths and halt_max_steps are "
                        f"for the puzzle models (trm, urm, hrm, ...)")
    update_config(head, halt_max_steps=steps)


def depth_rows(results: Dict[str, Dict[str, Any]], depths: List[int], modes: List[str]) -> List[Dict[str, Any]]:
    """One row per depth, mode and set from evaluate.py's results keyed `<mode>@<depth>`."""
    rows = []
    for depth in depths:
        for mode in modes:
            for name, value in results.get(f"{mode}@{depth}", {}).items():
                if isinstance(value, dict) and "exact_accuracy" in value:
                    rows.append({"depth": depth, "halt": mode, "set": name, "exact_accuracy": value["exact_accuracy"],
                                 "ci_low": value.get("exact_accuracy_ci_low"), "ci_high": value.get("exact_accuracy_ci_high"),
                                 "mean_steps": value.get("steps"), "count": int(value.get("count", 0))})
    return rows


def format_depth_table(rows: List[Dict[str, Any]]) -> str:
    lines = [f"{'set':<12} {'halt':<9} {'max steps':>9} {'exact accuracy [95% CI]':<27} {'mean steps':>10} {'puzzles':>8}"]
    for r in rows:
        ci = f" [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r["ci_low"] is not None else ""
        lines.append(f"{r['set']:<12} {r['halt']:<9} {r['depth']:>9} {r['exact_accuracy']:.4f}{ci:<20} "
                     f"{r['mean_steps']:>10.2f} {r['count']:>8}")
    return "\n".join(lines)


def plot_depths(rows: List[Dict[str, Any]], path: Path, title: Optional[str] = None) -> Path:
    """Exact accuracy (with its 95% interval) against the step limit, one line per set and halting mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["set"], r["halt"]) for r in rows}):
        line = sorted((r for r in rows if (r["set"], r["halt"]) == key), key=lambda r: r["depth"])
        xs = [r["depth"] for r in line]
        ax.plot(xs, [r["exact_accuracy"] for r in line], marker="o", label=f"{key[0]} ({key[1]} halting)")
        if all(r["ci_low"] is not None for r in line):
            ax.fill_between(xs, [r["ci_low"] for r in line], [r["ci_high"] for r in line], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("halt_max_steps at evaluation")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
