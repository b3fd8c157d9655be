"""AdaMerging's coefficients and entropy history as one PNG, drawn with matplotlib's Agg canvas (no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ..inspect.report import short_labels
from ..parameters import layer_index

if TYPE_CHECKING:
    from .adamerging import AdaMergingResult


def plot_coefficients(result: AdaMergingResult, path: Path) -> None:
    """Left: task-wise, a bar per model; layer-wise, one line per model of its mean lambda per layer (each tensor's
    lambda as a dot; tensors outside the layers as 'other'). Right: the mean entropy over the steps, and each task's."""
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    labels = short_labels(result.models)
    if result.granularity == "task":
        left.bar(range(len(labels)), result.task_coefficients, color=[f"C{i}" for i in range(len(labels))])
        left.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        left.set_ylabel("lambda")
    else:
        _layer_lines(left, result, labels)
    left.set_title(f"{'AdaMerging++' if result.plus else 'AdaMerging'} {result.granularity}-wise coefficients",
                   fontsize=10)
    left.grid(alpha=0.3)
    if result.history:
        steps = [h["step"] for h in result.history]
        right.plot(steps, [h["entropy"] for h in result.history], color="black", linewidth=2, label="mean")
        for task in result.history[0]["per_task"]:
            right.plot(steps, [h["per_task"][task] for h in result.history], linewidth=1, alpha=0.7, label=task)
        right.legend(fontsize=7)
    right.set_xlabel("step")
    right.set_ylabel("entropy (nats)")
    right.set_title("mean prediction entropy", fontsize=10)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)


def _layer_lines(ax, result: AdaMergingResult, labels: list[str]) -> None:
    names = list(result.coefficients[0])
    layers = sorted({i for i in map(layer_index, names) if i is not None})
    other = any(layer_index(n) is None for n in names)
    x_of = {layer: x for x, layer in enumerate(layers)}
    ticks = [str(layer) for layer in layers] + (["other"] if other else [])
    for k, label in enumerate(labels):
        by_x: dict[int, list[float]] = {}
        for name, value in result.coefficients[k].items():
            i = layer_index(name)
            by_x.setdefault(x_of[i] if i is not None else len(layers), []).append(value)
        xs = sorted(by_x)
        ax.plot(xs, [sum(by_x[x]) / len(by_x[x]) for x in xs], marker="o", color=f"C{k}", label=label)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), by_x[x], s=6, alpha=0.35, color=f"C{k}")
    step = max(1, len(ticks) // 24)
    ax.set_xticks(range(0, len(ticks), step), ticks[::step], fontsize=8)
    ax.set_xlabel("layer ('other': tensors outside the layers)")
    ax.set_ylabel("lambda (line: mean over the layer's tensors)")
    ax.legend(fontsize=7)
