"""Addition: fine-tune MiniLM on each task, merge the task vectors, and score every task's head on the merge.

For every seed: each task's fine-tuned model, then the merge of all task vectors with task_arithmetic, ties and
dare_ties; a method's coefficients and densities are picked on the validation splits (highest mean normalized
accuracy) and only the pick is scored on the test splits. With `subsets`, the same for every pair and triple of
tasks (every pairwise merge, and how merging scales with the number of tasks).
"""

import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data import ADDITION_TASKS, Task
from encoder import Budget, Evaluator, finetune, train_probe
from merging import recipe

METHODS = ("task_arithmetic", "ties", "dare_ties")
GRIDS = {  # picked from on validation data; ties and dare_ties normalise by the agreeing weights (mergekit's default)
    "task_arithmetic": [{"lambda": lam} for lam in (0.3, 0.5, 0.7, 1.0)],
    "ties": [{"density": d, "lambda": lam} for d in (0.2, 0.5) for lam in (0.7, 1.0, 1.3)],
    "dare_ties": [{"density": d, "lambda": lam} for d in (0.3, 0.6) for lam in (0.7, 1.0, 1.3)],
}
SUBSET_GRIDS = {  # smaller, for the many pairs and triples
    "task_arithmetic": [{"lambda": lam} for lam in (0.5, 0.7, 1.0)],
    "ties": [{"density": d, "lambda": 1.0} for d in (0.2, 0.5)],
    "dare_ties": [{"density": d, "lambda": 1.0} for d in (0.3, 0.6)],
}


@dataclass
class Setup:
    base: Path
    tasks: dict[str, Task]
    cache: Path
    budget: Budget = field(default_factory=Budget)
    use_cli: bool = False  # merges through the `taskvec` command instead of the Python API
    log: Callable[[str], None] = print
    grids: dict = field(default_factory=lambda: GRIDS)
    subset_grids: dict = field(default_factory=lambda: SUBSET_GRIDS)
    max_subsets: int | None = None  # smoke runs merge one pair only

    def __post_init__(self):
        self.evaluator = Evaluator(self.budget, self.cache)


def finetuned_models(setup: Setup, seed: int) -> dict[str, dict]:
    out = {}
    for name, task in setup.tasks.items():
        probe = train_probe(setup.base, task, setup.budget, setup.cache)
        folder = finetune(setup.base, task, probe, seed, setup.budget, setup.cache / f"seed{seed}" / f"ft-{name}",
                          setup.log)
        from safetensors.torch import load_file

        out[name] = {"folder": folder, "head": load_file(folder / "head.safetensors"), "probe": probe}
    return out


def reference_scores(setup: Setup, fts: dict) -> dict[str, dict]:
    """Per task: the base encoder with a probe head and with the fine-tuned head, and the fine-tuned model."""
    ev, tasks = setup.evaluator, setup.tasks
    base = ev.accuracies(setup.base, [j for n, t in tasks.items() for j in (
        (t, fts[n]["probe"], "test", f"{n}/test/probe"), (t, fts[n]["head"], "test", f"{n}/test/ft-head:{fts[n]['folder']}"),
        (t, fts[n]["head"], "val", f"{n}/val/ft-head:{fts[n]['folder']}"))])
    out = {}
    for n, t in tasks.items():
        own = ev.accuracies(fts[n]["folder"], [(t, fts[n]["head"], "val", f"{n}/val"),
                                               (t, fts[n]["head"], "test", f"{n}/test")])
        out[n] = {"base_probe": base[f"{n}/test/probe"], "base_ft_head": base[f"{n}/test/ft-head:{fts[n]['folder']}"],
                  "base_ft_head_val": base[f"{n}/val/ft-head:{fts[n]['folder']}"],
                  "finetuned": own[f"{n}/test"], "finetuned_val": own[f"{n}/val"]}
    return out


def score_merge(setup: Setup, method: str, config: dict, names: list[str], fts: dict, part: str) -> dict[str, float]:
    text = recipe(method, setup.base, [fts[n]["folder"] for n in names], config)
    acc = setup.evaluator.merge_accuracies(text, [(setup.tasks[n], fts[n]["head"], part, f"{n}/{part}") for n in names],
                                           setup.cache / "merges", setup.use_cli)
    return {n: acc[f"{n}/{part}"] for n in names}


def normalized(acc: dict[str, float], ref: dict[str, dict], key: str) -> float:
    return statistics.fmean(acc[n] / ref[n][key] for n in acc)


def pick_and_test(setup: Setup, method: str, grid: list[dict], names: list[str], fts: dict, ref: dict) -> dict:
    """The grid point with the best mean normalized validation accuracy, scored on the test splits."""
    tried = []
    for config in grid:
        val = score_merge(setup, method, config, names, fts, "val")
        tried.append({"config": config, "val": val, "val_normalized": normalized(val, ref, "finetuned_val")})
    best = max(tried, key=lambda r: r["val_normalized"])  # first of equals: the grids go from mild to strong
    test = score_merge(setup, method, best["config"], names, fts, "test")
    return {"config": best["config"], "val_normalized": best["val_normalized"], "test": test,
            "test_normalized": normalized(test, ref, "finetuned"), "grid": tried}


def run_seed(setup: Setup, seed: int, subsets: bool) -> dict:
    setup.log(f"  seed {seed}: fine-tuning {len(setup.tasks)} tasks ({setup.budget.steps} steps each, cached)")
    fts = finetuned_models(setup, seed)
    ref = reference_scores(setup, fts)
    names = list(setup.tasks)
    result = {"tasks": ref, "models": {n: str(fts[n]["folder"]) for n in names}, "merges": {}}
    groups = [tuple(names)]
    if subsets:
        smaller = [g for k in range(len(names) - 1, 1, -1) for g in itertools.combinations(names, k)]
        groups += smaller if setup.max_subsets is None else smaller[-setup.max_subsets:]  # pairs come last
    for group in groups:
        key = "+".join(group)
        grids = setup.grids if len(group) == len(names) else setup.subset_grids
        result["merges"][key] = {}
        for method in METHODS:
            r = pick_and_test(setup, method, grids[method], list(group), fts, ref)
            result["merges"][key][method] = r
            setup.log(f"    {key} {method}: {r['config']} -> normalized test {r['test_normalized']:.3f}")
    return result


def run(setup: Setup, seeds: list[int], subsets_seeds: tuple[int, ...] = (0,)) -> dict:
    return {"settings": {"steps": setup.budget.steps, "lr_encoder": setup.budget.lr_encoder,
                         "methods": list(METHODS), "grids": setup.grids,
                         "subset_grids": setup.subset_grids,
                         "splits": {n: {p: len(getattr(t, p)[0]) for p in ("train", "val", "test")}
                                    for n, t in setup.tasks.items()},
                         "classes": {n: len(t.classes) for n, t in setup.tasks.items()}},
            "seeds": {str(s): run_seed(setup, s, s in subsets_seeds) for s in seeds}}


def load_tasks(smoke: bool = False) -> dict[str, Task]:
    tasks = {name: make() for name, make in ADDITION_TASKS.items()}
    return {n: t.subset(64, 24) for n, t in tasks.items()} if smoke else tasks


# ---- tables ------------------------------------------------------------------------------------------------------

def _mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main_table(results: dict) -> str:
    """Test accuracy per task (mean ± sd over seeds), then the mean and the normalized mean."""
    seeds = list(results["seeds"].values())
    names = list(seeds[0]["tasks"])
    full = "+".join(names)
    cols = [("base + probe head", lambda s, n: s["tasks"][n]["base_probe"]),
            ("base + fine-tuned head", lambda s, n: s["tasks"][n]["base_ft_head"]),
            ("fine-tuned (own task)", lambda s, n: s["tasks"][n]["finetuned"])]
    cols += [(m, lambda s, n, m=m: s["merges"][full][m]["test"][n]) for m in METHODS]
    lines = ["| task | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_mean_sd([f(s, n) for s in seeds]) for _, f in cols) + " |")
    lines.append("| **mean** | " + " | ".join(_mean_sd([statistics.fmean(f(s, n) for n in names) for s in seeds])
                                            for _, f in cols) + " |")
    lines.append("| **normalized (÷ fine-tuned)** | " + " | ".join(
        _mean_sd([statistics.fmean(f(s, n) / s["tasks"][n]["finetuned"] for n in names) for s in seeds])
        for _, f in cols) + " |")
    lines.append("| **fine-tuning gain kept** | " + " | ".join(
        _mean_sd([gain_kept(s, names, lambda n, f=f, s=s: f(s, n)) for s in seeds]) for _, f in cols) + " |")
    return "\n".join(lines)


def gain_kept(seed: dict, names: list[str], acc) -> float:
    """Share of fine-tuning's gain over the frozen base (with a probe head) that a model keeps, pooled over tasks:
    sum(acc - probe) / sum(fine-tuned - probe). 1 = everything fine-tuning added, 0 = nothing beyond the probe."""
    ref = seed["tasks"]
    gain = sum(ref[n]["finetuned"] - ref[n]["base_probe"] for n in names)
    return sum(acc(n) - ref[n]["base_probe"] for n in names) / gain if gain > 0 else float("nan")


def picks_table(results: dict) -> str:
    seeds = results["seeds"]
    full = "+".join(next(iter(seeds.values()))["tasks"])
    lines = ["| seed | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for s, r in seeds.items():
        lines.append(f"| {s} | " + " | ".join(
            ", ".join(f"{k}={v}" for k, v in r["merges"][full][m]["config"].items()) for m in METHODS) + " |")
    return "\n".join(lines)


def subsets_table(results: dict) -> str:
    """Every merge of fewer tasks (seed 0): normalized test accuracy per method."""
    lines = ["| tasks merged | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for s, r in results["seeds"].items():
        for key, by_method in r["merges"].items():
            lines.append(f"| {key.replace('+', ' + ')} (seed {s}) | " + " | ".join(
                f"{by_method[m]['test_normalized']:.3f}" for m in METHODS) + " |")
    return "\n".join(lines)


def scaling(results: dict) -> dict[str, dict[int, float]]:
    """Mean normalized test accuracy by number of tasks merged, over the seeds that merged subsets."""
    out: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    for r in results["seeds"].values():
        if len(r["merges"]) == 1:
            continue
        for key, by_method in r["merges"].items():
            for m in METHODS:
                out[m].setdefault(key.count("+") + 1, []).append(by_method[m]["test_normalized"])
    return {m: {k: statistics.fmean(v) for k, v in sorted(d.items())} for m, d in out.items()}


def plot_scaling(results: dict, path: Path) -> bool:
    curves = scaling(results)
    if not any(len(c) > 1 for c in curves.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for m, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=m)
    ax.set_xlabel("tasks merged")
    ax.set_ylabel("normalized test accuracy")
    ax.set_xticks(sorted({k for c in curves.values() for k in c}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def markdown(results: dict, out_dir: Path, title: str = "## Addition: one MiniLM encoder with all task vectors merged",
             ) -> str:
    seeds = results["seeds"]
    names = list(next(iter(seeds.values()))["tasks"])
    splits = results["settings"]["splits"]
    parts = [
        title, "",
        "Tasks: " + ", ".join(
            f"{n} ({results['settings']['classes'][n]} classes; train/val/test "
            f"{splits[n]['train']}/{splits[n]['val']}/{splits[n]['test']})" for n in names) + ". "
        f"Each task: a linear probe on frozen base features, then encoder + head fine-tuned together for "
        f"{results['settings']['steps']} steps (batch 16, encoder learning rate "
        f"{results['settings'].get('lr_encoder', 5e-5):g}). A merge keeps the base's architecture; each task is "
        f"scored with its own fine-tuned head on the merged encoder. Coefficients and densities are picked on the "
        f"validation splits (best mean normalized accuracy), then scored once on the test splits. "
        f"Test accuracy, mean ± sd over seeds {', '.join(seeds)}:",
        "", main_table(results), "",
        "How to read it: a head trained on the frozen base encoder is a strong baseline here, so normalized accuracy "
        "(merged ÷ fine-tuned) near 1 says a merge loses little, and *fine-tuning gain kept* (pooled over tasks: "
        "Σ(merged − probe) ÷ Σ(fine-tuned − probe)) says how much of what fine-tuning added survives the merge. "
        "Fine-tuning gains over the probe, per task (mean over seeds): " + ", ".join(
            f"{n} {statistics.fmean(s['tasks'][n]['finetuned'] - s['tasks'][n]['base_probe'] for s in seeds.values()):+.3f}"
            for n in names) + ".",
        "", "Picked on validation:", "", picks_table(results), "",
    ]
    if any(len(r["merges"]) > 1 for r in seeds.values()):
        parts += ["### Every merge of fewer tasks (normalized test accuracy)", "", subsets_table(results), ""]
        curves = scaling(results)
        parts += ["### Scaling with the number of tasks", "", "| method | " + " | ".join(
            f"{k} tasks" for k in next(iter(curves.values()))) + " |",
            "|---" * (1 + len(next(iter(curves.values())))) + "|"]
        parts += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in c.values()) + " |" for m, c in curves.items()]
        if plot_scaling(results, out_dir / "scaling.png"):
            parts += ["", "![normalized accuracy by number of tasks merged](scaling.png)"]
        parts.append("")
    return "\n".join(parts)
