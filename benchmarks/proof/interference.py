"""Does interference seen before merging predict what merging loses? `taskvec inspect` on the addition experiment's
MiniLM task vectors (seed 0, each regime), against what each pairwise merge loses.

Every pair of tasks is merged with plain task arithmetic (lambda = 1, data-free) and scored on the pair's validation
splits; loss = 1 - normalized accuracy (merged / fine-tuned), and the share of the pair's fine-tuning gain over the
probes that the merge loses. Rank correlation (Spearman) over the task pairs, whatever it shows: with four tasks
there are only six pairs.
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


def pair_losses(setup, fts, ref, pairs) -> dict[frozenset, dict[str, float]]:
    from addition import merge_and_score

    out = {}
    for a, b in pairs:
        sub = type(setup)(setup.base, {n: setup.tasks[n] for n in (a, b)}, setup.cache, setup.training,
                          use_cli=setup.use_cli, log=lambda _: None)
        rows, _ = merge_and_score(sub, fts, {"ta": ("task_arithmetic", {"lambda": 1.0})}, 0, split="val")
        acc = rows["ta"]
        norm = statistics.fmean(acc[n] / ref[n]["finetuned_val"] for n in (a, b))
        gain = sum(ref[n]["finetuned_val"] - ref[n]["probe_val"] for n in (a, b))
        kept = sum(acc[n] - ref[n]["probe_val"] for n in (a, b)) / gain if gain > 0 else float("nan")
        out[frozenset((a, b))] = {"loss at lambda=1 (val)": 1 - norm, "gain lost at lambda=1 (val)": 1 - kept}
    return out


def run(base: Path, results_dir: Path, report_dir: Path, cache: Path, max_pairs: int | None = None) -> dict:
    """For each regime of results/addition.json (seed 0): inspect the four task vectors, merge every pair."""
    import itertools

    import taskvec

    import addition
    from encoder import FineTuned

    result_add = json.loads((results_dir / "addition.json").read_text())
    smoke = bool(result_add.get("smoke"))
    tasks = addition.load_tasks(smoke)
    out = {"regimes": {}, "smoke": smoke}
    for regime, rr in result_add["regimes"].items():
        seed = rr["seeds"]["0"]
        models = seed["models"]
        fts = {n: FineTuned(n, regime, 0, Path(models[n]), seed["model_keys"][n], Path(seed["probes"][n]))
               for n in models}
        setup = addition.Setup(base, tasks, cache)
        folder = report_dir / regime
        report = taskvec.inspect_vectors(list(models.values()), base, progress=False)
        report.save(folder, force=True)
        labels = {v: k for k, v in models.items()}
        pairs = list(itertools.combinations(models, 2))
        if smoke:
            pairs = pairs[:1]
        losses = pair_losses(setup, fts, seed["reference"], pairs)
        rows = []
        for p in report.to_dict()["pairs"]:
            pair = frozenset({labels[p["a"]], labels[p["b"]]})
            if pair not in losses:  # smoke runs merge a single pair
                continue
            rows.append({"pair": sorted(pair), **{m: f(p) for m, f in METRICS.items()}, **losses[pair]})
        correlations = {loss: {m: spearman([r[m] for r in rows], [r[loss] for r in rows]) for m in METRICS}
                        for loss in next(iter(losses.values()), {})}
        out["regimes"][regime] = {"pairs": rows, "spearman": correlations, "report_dir": str(folder)}
        print(f"    {regime}: {len(rows)} pairs merged; Spearman " + json.dumps(
            {k: {m: round(v, 2) for m, v in c.items()} for k, c in correlations.items()}), flush=True)
    return out


def markdown(result: dict, out_dir: Path) -> str:
    if "regimes" not in result:
        return ("## Interference before merging (`taskvec inspect`) versus pairwise merge loss\n\n"
                "Results predate the redesigned addition benchmark; re-run `--parts addition,interference`.\n")
    lines = ["## Interference before merging (`taskvec inspect`) versus pairwise merge loss", "",
             "The seed-0 MiniLM task vectors of the addition experiment, inspected with `taskvec inspect`; every "
             "pair merged with task_arithmetic at lambda = 1 (data-free) and scored on validation. Loss = 1 − "
             "normalized accuracy; gain lost = 1 − the share of the pair's fine-tuning gain over the probes kept.", ""]
    for regime, r in result["regimes"].items():
        losses = list(r["spearman"])
        rel = Path(r["report_dir"]).relative_to(Path(r["report_dir"]).parents[1])
        lines += [f"### {regime} ([report]({rel}/report.html))", "",
                  "| pair | " + " | ".join(METRICS) + " | " + " | ".join(losses) + " |",
                  "|---" * (1 + len(METRICS) + len(losses)) + "|"]
        for p in r["pairs"]:
            lines.append(f"| {' + '.join(p['pair'])} | " + " | ".join(f"{p[m]:.3f}" for m in METRICS) + " | "
                         + " | ".join(f"{p[loss]:+.3f}" for loss in losses) + " |")
        lines += ["", "Spearman rank correlation with the loss, over the pairs:", "",
                  "| loss | " + " | ".join(METRICS) + " |", "|---" * (1 + len(METRICS)) + "|"]
        lines += [f"| {loss} | " + " | ".join(f"{v:+.2f}" for v in r["spearman"][loss].values()) + " |"
                  for loss in losses]
        lines += ["", f"![cosine similarity of the task vectors]({rel}/cosine.png)",
                  f"![sign conflicts per layer]({rel}/layer_conflict.png)", ""]
    n = len(next(iter(result["regimes"].values()))["pairs"]) if result["regimes"] else 0
    lines += [f"With {n} pairs a rank correlation must reach about ±0.89 to be significant at 5% (two-sided): "
              "treat these as indications, not findings.", ""]
    return "\n".join(lines)
