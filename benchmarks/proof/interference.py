"""Does interference seen before merging predict what merging loses? `taskvec inspect` on the addition experiment's
MiniLM task vectors (seed 0), against the accuracy each pairwise merge lost.

Loss of a pair = 1 - normalized accuracy of its task_arithmetic merge, two ways: at lambda = 1 (plain addition, no
tuning, validation splits) and at the lambda picked on validation (test splits). Rank correlation (Spearman) over
the task pairs, whatever it shows: with four tasks there are only six pairs.
"""

import json
import statistics
from pathlib import Path

METRICS = {
    "cosine": lambda p: p["cosine"],
    "sign conflict rate": lambda p: p["sign_conflict_rate"],
    "top-5% overlap (Jaccard)": lambda p: p["top_k_jaccard"]["5"],
    "TIES mass dropped": lambda p: p["ties_total_dropped"],
}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def pair_losses(addition: dict, seed: str = "0") -> dict[frozenset, dict[str, float]]:
    out = {}
    for key, by_method in addition["seeds"][seed]["merges"].items():
        names = key.split("+")
        if len(names) != 2:
            continue
        ta = by_method["task_arithmetic"]
        at_one = [g for g in ta["grid"] if g["config"] == {"lambda": 1.0}]  # absent from smoke runs' grids
        out[frozenset(names)] = {**({"loss at lambda=1 (val)": 1 - at_one[0]["val_normalized"]} if at_one else {}),
                                 "loss at picked lambda (test)": 1 - ta["test_normalized"]}
    return out


def run(base: Path, results_dir: Path, report_dir: Path) -> dict:
    import taskvec

    addition = json.loads((results_dir / "addition.json").read_text())
    models = addition["seeds"]["0"]["models"]
    report = taskvec.inspect_vectors(list(models.values()), base, progress=False)
    report.save(report_dir, force=True)
    labels = {v: k for k, v in models.items()}
    losses = pair_losses(addition)
    rows = []
    for p in report.to_dict()["pairs"]:
        pair = frozenset({labels[p["a"]], labels[p["b"]]})
        if pair not in losses:  # smoke runs merge a single pair
            continue
        rows.append({"pair": sorted(pair), **{m: f(p) for m, f in METRICS.items()}, **losses[pair]})
    correlations = {loss: {m: spearman([r[m] for r in rows], [r[loss] for r in rows]) for m in METRICS}
                    for loss in next(iter(losses.values()), {})}
    return {"pairs": rows, "spearman": correlations, "report_dir": str(report_dir)}


def markdown(result: dict, out_dir: Path) -> str:
    losses = list(result["spearman"])
    lines = ["## Interference before merging (`taskvec inspect`) versus pairwise merge loss", "",
             "The seed-0 MiniLM task vectors of the addition experiment, inspected with `taskvec inspect` "
             f"([report]({Path(result['report_dir']).name}/report.html)); loss = 1 − normalized accuracy of the pair's "
             "task_arithmetic merge.", "",
             "| pair | " + " | ".join(METRICS) + " | " + " | ".join(losses) + " |", "|---" * (1 + len(METRICS) + len(losses)) + "|"]
    for r in result["pairs"]:
        lines.append(f"| {' + '.join(r['pair'])} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " | "
                     + " | ".join(f"{r[loss]:+.3f}" for loss in losses) + " |")
    lines += ["", "Spearman rank correlation with the loss, over the pairs:", "",
              "| loss | " + " | ".join(METRICS) + " |", "|---" * (1 + len(METRICS)) + "|"]
    lines += [f"| {loss} | " + " | ".join(f"{v:+.2f}" for v in result["spearman"][loss].values()) + " |"
              for loss in losses]
    n = len(result["pairs"])
    lines += ["", f"With {n} pairs a rank correlation must reach about ±0.89 to be significant at 5% (two-sided): "
              "treat these as indications, not findings.", "",
              f"![cosine similarity of the task vectors]({Path(result['report_dir']).name}/cosine.png)",
              f"![sign conflicts per layer]({Path(result['report_dir']).name}/layer_conflict.png)", ""]
    return "\n".join(lines)
