"""The report's plots as PNG files, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""

import math
from pathlib import Path

from matplotlib.figure import Figure

from .report import InspectReport, short_labels
from .stats import pairs


def _matrix(report: InspectReport, value, diagonal: float) -> list[list[float]]:
    """n x n from the pairs; `value(pair)` None shows as NaN (blank)."""
    n = len(report.vectors)
    m = [[diagonal if i == j else float("nan") for j in range(n)] for i in range(n)]
    for (i, j), p in zip(pairs(n), report.pairs):
        x = value(p)
        m[i][j] = m[j][i] = float("nan") if x is None else x
    return m


def _heatmap(ax, report: InspectReport, m, title: str, vmin: float, vmax: float, cmap: str) -> None:
    labels = short_labels([v.label for v in report.vectors])
    image = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i, row in enumerate(m):
        for j, x in enumerate(row):
            if not math.isnan(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def _save(fig: Figure, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    return name


def write_plots(report: InspectReport, folder: Path) -> list[tuple[str, str]]:
    """[(title, file name)] of the PNGs written into `folder`; the pair plots need at least two vectors."""
    written = []
    layers = list(report.vectors[0].l2_by_layer)
    name = dict(zip([v.label for v in report.vectors], short_labels([v.label for v in report.vectors])))
    if report.pairs:
        size = (2.5 + 0.8 * len(report.vectors), 2 + 0.7 * len(report.vectors))
        fig = Figure(figsize=size)
        _heatmap(fig.add_subplot(), report, _matrix(report, lambda p: p.cosine, 1.0), "cosine similarity", -1, 1,
                 "RdBu")
        written.append(("Cosine similarity", _save(fig, folder, "cosine.png")))

        ks = report.settings["top_k_percent"]
        fig = Figure(figsize=(size[0] * len(ks), size[1]))
        for n, k in enumerate(ks):
            m = _matrix(report, lambda p, k=k: p.top_k_jaccard[k], 1.0)
            _heatmap(fig.add_subplot(1, len(ks), n + 1), report, m, f"Jaccard of top-{k:g}% masks", 0, 1, "viridis")
        written.append(("Top-k% magnitude overlap", _save(fig, folder, "topk_overlap.png")))

        fig = Figure(figsize=size)
        _heatmap(fig.add_subplot(), report, _matrix(report, lambda p: p.sign_conflict_rate, 0.0),
                 "sign-conflict rate", 0, 1, "Reds")
        written.append(("Sign-conflict rate", _save(fig, folder, "sign_conflict.png")))

        fig = Figure(figsize=(8, 4))
        ax = fig.add_subplot()
        for p in report.pairs:
            y = [p.by_layer[k]["sign_conflict_rate"] for k in layers]
            ax.plot(range(len(layers)), [float("nan") if v is None else v for v in y], marker="o",
                    label=f"{name[p.a]} / {name[p.b]}")
        _layer_axis(ax, layers, "sign-conflict rate per layer")
        written.append(("Sign-conflict rate per layer", _save(fig, folder, "layer_conflict.png")))

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    for v in report.vectors:
        ax.plot(range(len(layers)), [v.l2_by_layer[k] for k in layers], marker="o", label=name[v.label])
    _layer_axis(ax, layers, "L2 norm per layer")
    written.append(("L2 norm per layer", _save(fig, folder, "layer_norm.png")))
    return written


def _layer_axis(ax, layers: list[str], title: str) -> None:
    step = max(1, len(layers) // 24)
    ax.set_xticks(range(0, len(layers), step), layers[::step], fontsize=8)
    ax.set_xlabel("layer ('other': tensors outside the layers)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
