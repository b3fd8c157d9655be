"""Addition, rebuilt so that the skills live in the task vectors: MiniLM fine-tuned on four tasks in two regimes,
the four task vectors merged, every task's own head scored on the merged encoder.

For each regime (encoder.REGIMES) and seed:
1. each task's probe (a head on the frozen base) and fine-tune;
2. preconditions, on the validation splits: every fine-tune beats its probe, and the mean gain over the probes
   reaches MIN_GAIN[regime] -- without that there is nothing for a merge to keep, and the experiment cannot fail;
3. a tasks directory for the product (`taskvec eval` / `taskvec tune`): data/<task>.csv and tasks.yaml;
4. the rows of the table, each scored once on the test splits with the product's `taskvec.evaluate`: the fine-tunes
   (each on its own task), the probe heads on the base, lambda = 0 (base + fine-tuned heads), and data-free merges
   made with `taskvec.merge_recipe` (or the CLI) at stated defaults (DATA_FREE).
The first number of a row is the **fine-tuning gain kept** over the probe, pooled over tasks:
sum(merged - probe) / sum(fine-tuned - probe); then normalized accuracy (merged / fine-tuned).

More rows (tuned with `taskvec tune`, AdaMerging) join through `score_models`: any {row name: model folder or
weights} becomes rows of the same table.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

import memo
from data import ADDITION_TASKS, Task
from encoder import REGIMES, FineTuned, Training, finetune, train_probe
from merging import merged, recipe
from scoring import BATCH_SIZE, Scorer

MIN_GAIN = {"probe-first": 0.02, "strong": 0.05}  # mean validation gain of the fine-tunes over their probes
TA_DEFAULT = 0.4  # task arithmetic's data-free lambda: the middle of the 0.3-0.5 that Ilharco et al. recommend

FT, PROBE, ZERO = "fine-tuned (own task)", "probe heads (base encoder)", "λ = 0 (base + fine-tuned heads)"


def data_free(k: int) -> dict[str, tuple[str, dict]]:
    """Row name -> (method, parameters): merges at defaults chosen without looking at any data."""
    return {
        f"averaging (task_arithmetic λ = 1/{k})": ("task_arithmetic", {"lambda": 1.0 / k}),
        f"task_arithmetic λ = {TA_DEFAULT}": ("task_arithmetic", {"lambda": TA_DEFAULT}),
        "task_arithmetic λ = 1": ("task_arithmetic", {"lambda": 1.0}),
        "ties (density 0.2, λ = 1)": ("ties", {"density": 0.2, "lambda": 1.0}),
        "dare_ties (density 0.3, λ = 1, seed = training seed)": ("dare_ties", {"density": 0.3, "lambda": 1.0}),
        # the subspace methods and consensus merging at their papers' data-free settings (TSV-M's λ = 1; Iso's
        # papers tune λ, so λ = 1 is the untuned value; consensus: the paper's k = 2, mask λ mid-range)
        "tsv (TSV-M, λ = 1)": ("tsv", {"lambda": 1.0}),
        "iso_c (λ = 1)": ("iso_c", {"lambda": 1.0}),
        "iso_cts (common 0.8, λ = 1)": ("iso_cts", {"common_space_fraction": 0.8, "lambda": 1.0}),
        "consensus (k = 2, mask λ = 0.4, λ = 1)": ("consensus", {"k": 2, "mask_lambda": 0.4, "lambda": 1.0}),
    }


@dataclass
class Setup:
    base: Path
    tasks: dict[str, Task]
    cache: Path
    training: Training = field(default_factory=Training)
    regimes: tuple[str, ...] = tuple(REGIMES)
    use_cli: bool = False  # merges through the `taskvec` command instead of the Python API
    check_cli: bool = False  # also run `taskvec eval` on every fine-tune of the first seed and compare the numbers
    log: Callable[[str], None] = print
    tuned: tuple[str, ...] = ()  # rows of tuned.ROWS to add: `taskvec tune` (TPE) and AdaMerging, through the CLI
    tuned_cached_only: bool = False  # add only the tuned rows already computed

    def __post_init__(self):
        self.scorer = Scorer(self.cache, self.log)


def load_tasks(smoke: bool = False) -> dict[str, Task]:
    tasks = {name: make() for name, make in ADDITION_TASKS.items()}
    return {n: t.subset(64, 24) for n, t in tasks.items()} if smoke else tasks


def finetuned_models(setup: Setup, regime: str, seed: int) -> dict[str, FineTuned]:
    out = {}
    for name, task in setup.tasks.items():
        probe = train_probe(setup.base, task, setup.training, setup.cache)
        out[name] = finetune(setup.base, task, regime, seed, setup.training, setup.cache, probe, setup.log)
    return out


def references(setup: Setup, fts: dict[str, FineTuned]) -> dict[str, dict[str, float]]:
    """Per task: the probe (base + probe head) and the fine-tune (own model + own head) on validation and test, and
    the base with the fine-tuned head on test (lambda = 0)."""
    tasks, sc = setup.tasks, setup.scorer
    names = list(tasks)
    jobs = [j for n in names for j in ((tasks[n], "val", fts[n].probe), (tasks[n], "test", fts[n].probe),
                                       (tasks[n], "test", fts[n].head))]
    base = sc.accuracies(setup.base, jobs, what="base encoder with probe and fine-tuned heads")
    out = {}
    for i, n in enumerate(names):
        own = sc.accuracies(fts[n].folder, [(tasks[n], "val", fts[n].head), (tasks[n], "test", fts[n].head)],
                            what=f"fine-tuned {n}")
        out[n] = {"probe_val": base[3 * i], "probe_test": base[3 * i + 1], "zero_test": base[3 * i + 2],
                  "finetuned_val": own[0], "finetuned_test": own[1]}
    return out


def preconditions(regime: str, ref: dict[str, dict[str, float]]) -> dict:
    """Checked on validation: every fine-tune beats its probe; the mean gain reaches MIN_GAIN[regime]."""
    gains = {n: r["finetuned_val"] - r["probe_val"] for n, r in ref.items()}
    mean = statistics.fmean(gains.values())
    failures = [f"{n}: fine-tune {ref[n]['finetuned_val']:.3f} does not beat its probe {ref[n]['probe_val']:.3f}"
                for n, g in gains.items() if g <= 0]
    if mean < MIN_GAIN[regime]:
        failures.append(f"mean gain over the probes {mean:+.4f} < {MIN_GAIN[regime]:+.2f}")
    return {"split": "val", "gains": gains, "mean_gain": mean, "min_mean_gain": MIN_GAIN[regime],
            "every_finetune_beats_probe": all(g > 0 for g in gains.values()), "passed": not failures,
            "failures": failures}


def score_models(setup: Setup, fts: dict[str, FineTuned], models: dict, split: str = "test",
                 ) -> dict[str, dict[str, float]]:
    """{row name: model folder, or weights (dict name -> tensor; the base folder supplies config, tokenizer and any
    tensor missing)} -> {row name: {task: accuracy of the task's fine-tuned head on that encoder}}. The way in for
    rows made elsewhere (tuned recipes, AdaMerging)."""
    out = {}
    for row, model in models.items():
        jobs = [(t, split, fts[n].head) for n, t in setup.tasks.items()]
        folder = setup.base if isinstance(model, dict) else None
        acc = setup.scorer.accuracies(model, jobs, model_folder=folder, what=row)
        out[row] = dict(zip(setup.tasks, acc))
    return out


def merge_and_score(setup: Setup, fts: dict[str, FineTuned], specs: dict[str, tuple[str, dict]], seed: int,
                    split: str = "test") -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Each spec merged with the product (then removed) and scored; also the recipes, as run."""
    rows, recipes = {}, {}
    for row, (method, config) in specs.items():
        text = recipe(method, setup.base, [fts[n].folder for n in setup.tasks], config)
        with merged(text, setup.cache / "merges", setup.use_cli, seed=seed) as folder:
            rows.update(score_models(setup, fts, {row: folder}, split))
        recipes[row] = text
        setup.log(f"    {row}: test " + ", ".join(f"{n} {a:.3f}" for n, a in rows[row].items()))
    return rows, recipes


def table_rows(ref: dict[str, dict[str, float]], rows: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per row: test accuracy, fine-tuning gain kept (per task and pooled) and normalized accuracy (per task, mean)."""
    out = {}
    gain = {n: r["finetuned_test"] - r["probe_test"] for n, r in ref.items()}
    for row, acc in rows.items():
        kept = {n: (acc[n] - ref[n]["probe_test"]) / gain[n] if gain[n] > 0 else None for n in ref}
        total = sum(gain.values())
        kept["pooled"] = sum(acc[n] - ref[n]["probe_test"] for n in ref) / total if total > 0 else None
        norm = {n: acc[n] / ref[n]["finetuned_test"] for n in ref}
        norm["mean"] = statistics.fmean(norm[n] for n in ref)
        out[row] = {"test": dict(acc), "mean_test": statistics.fmean(acc.values()), "gain_kept": kept,
                    "normalized": norm}
    return out


def write_tasks_file(setup: Setup, regime: str, seed: int, fts: dict[str, FineTuned], ref: dict) -> Path:
    """<cache>/tasks/<regime>-seed<seed>/ (suffixed -<task>+<task>... when not every task is in): data/<task>.csv
    (text,label,split) and tasks.yaml, one classification task per fine-tune: held-out split test, tuning split val,
    its head, labels in head order, and the fine-tune's test accuracy as reference (so normalized = merged /
    fine-tuned). Paths are relative to the tasks file."""
    subset = "" if list(setup.tasks) == list(ADDITION_TASKS) else "-" + "+".join(setup.tasks)  # e.g. the demo's
    folder = setup.cache / "tasks" / f"{regime}-seed{seed}{subset}"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    entries = []
    for n, task in setup.tasks.items():
        csv_path = folder / "data" / f"{n}.csv"
        shutil.copyfile(setup.scorer.csv(task), csv_path)
        head = Path(fts[n].head).resolve()
        rel = Path(os.path.relpath(head, folder.resolve()))
        entries.append({"name": n, "type": "classification", "data": f"data/{n}.csv", "split_column": "split",
                        "split": "test", "tune_split": "val", "head": str(rel), "labels": list(task.classes),
                        "max_length": task.max_len, "batch_size": BATCH_SIZE,
                        "reference": ref[n]["finetuned_test"]})
    path = folder / "tasks.yaml"
    header = (f"# MiniLM addition benchmark, regime {regime}, seed {seed}: written by benchmarks/proof/run.py.\n"
              f"# reference = the fine-tuned model's test accuracy, so normalized = merged / fine-tuned.\n")
    body = yaml.safe_dump({"tasks": entries}, sort_keys=False, allow_unicode=True, width=1000)
    memo.write_atomic(path, header + body)
    write_recipes(setup, folder / "recipes", fts, seed)
    return path


def write_recipes(setup: Setup, folder: Path, fts: dict[str, FineTuned], seed: int) -> None:
    """The data-free recipes of the table (fine-tunes relative to the recipe), and search-task_arithmetic.yaml (lambda
    searched) for `taskvec tune`. dare_ties draws with `taskvec merge --seed <training seed>`."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(setup.base).resolve()  # the base lives in its package: absolute
    models = [os.path.relpath(fts[n].folder.resolve(), folder.resolve()) for n in setup.tasks]
    searched = {"task_arithmetic": {"lambda": {"search": [0.1, 1.5]}}}
    files = {slug(row): (m, c) for row, (m, c) in data_free(len(setup.tasks)).items()}
    files.update({f"search-{m}": (m, c) for m, c in searched.items()})
    for name, (method, config) in files.items():
        header = f"# dare_ties: taskvec merge --seed {seed}\n" if "dare" in method else ""
        memo.write_atomic(folder / f"{name}.yaml", header + recipe(method, base, [Path(m) for m in models], config))


def slug(row: str) -> str:
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in row.replace("λ", "lambda")).split())


def check_with_cli(setup: Setup, tasks_file: Path, fts: dict[str, FineTuned], ref: dict) -> dict:
    """`taskvec eval <fine-tune> --tasks tasks.yaml` for every fine-tune: its own task's score must equal the
    benchmark's (the tasks file's reference) to 1e-9."""
    out = {}
    for n, ft in fts.items():
        js = tasks_file.parent / f"eval-{n}.json"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "taskvec.cli", "eval", str(ft.folder), "--tasks", str(tasks_file),
                        "--json", str(js)], check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        results = {r["name"]: r for r in json.loads(js.read_text())["results"]}
        cli = results[n]["score"]
        out[n] = {"cli": cli, "benchmark": ref[n]["finetuned_test"], "abs_diff": abs(cli - ref[n]["finetuned_test"]),
                  "seconds": round(seconds, 1), "examples": sum(r["examples"] for r in results.values()),
                  "normalized_own": results[n]["normalized"]}
        setup.log(f"    taskvec eval {ft.folder.name}: own task {cli:.6f} vs benchmark {ref[n]['finetuned_test']:.6f} "
                  f"(|diff| {out[n]['abs_diff']:.1e}), {seconds:.1f} s for {out[n]['examples']} examples")
    out["agree"] = all(v["abs_diff"] <= 1e-9 for v in out.values())
    return out


def entropy_per_task(folder: Path, steps: int = 10) -> dict:
    """AdaMerging's mean prediction entropy per task over its first and last `steps` steps (one batch per step is
    noisy), from best.adamerging.json: which tasks the summed objective made more confident, and which less. {} for
    a TPE row."""
    path = folder / "best.adamerging.json"
    if not path.is_file():
        return {}
    history = json.loads(path.read_text())["history"]
    tasks = list(history[0]["per_task"])
    mean = lambda part: {t: statistics.fmean(h["per_task"][t] for h in part) for t in tasks}  # noqa: E731
    return {"entropy_per_task": {"first": mean(history[:steps]), "last": mean(history[-steps:]), "steps": steps}}


def run_regime_seed(setup: Setup, regime: str, seed: int, first: bool = True) -> dict:
    log = setup.log
    log(f"  {regime}, seed {seed}: fine-tuning {len(setup.tasks)} tasks ({setup.training.steps} steps each; "
        f"cached by content)")
    fts = finetuned_models(setup, regime, seed)
    ref = references(setup, fts)
    pre = preconditions(regime, ref)
    log(f"  preconditions ({regime}, seed {seed}, validation): gains over the probe "
        + ", ".join(f"{n} {g:+.3f}" for n, g in pre["gains"].items())
        + f"; mean {pre['mean_gain']:+.3f} (needs ≥ {pre['min_mean_gain']:+.2f})")
    if pre["passed"]:
        log("  preconditions: passed")
    else:
        for f in pre["failures"]:
            log(f"  !!! PRECONDITION FAILED ({regime}, seed {seed}): {f}")
    tasks_file = write_tasks_file(setup, regime, seed, fts, ref)
    log(f"  tasks file: {tasks_file}")
    rows = {FT: {n: r["finetuned_test"] for n, r in ref.items()}, PROBE: {n: r["probe_test"] for n, r in ref.items()},
            ZERO: {n: r["zero_test"] for n, r in ref.items()}}
    merges, recipes = merge_and_score(setup, fts, data_free(len(setup.tasks)), seed)
    rows.update(merges)
    tuned_runs = {}
    if setup.tuned:
        import tuned

        tuned_runs = tuned.tuned_rows(tuned.tuning_subset(tasks_file), str(setup.base),
                                      [str(fts[n].folder) for n in setup.tasks], setup.cache / "tuned", seed,
                                      list(setup.tuned), log, run_missing=not setup.tuned_cached_only)
        # `taskvec tune` scored its pick once on the test splits, with the same heads and taskvec.evaluate (run.py
        # --check-cli checks that taskvec eval and this benchmark agree exactly)
        rows.update({row: r["test"] for row, r in tuned_runs.items()})
    result = {"models": {n: str(ft.folder) for n, ft in fts.items()},
              "model_keys": {n: ft.key for n, ft in fts.items()},
              "probes": {n: str(ft.probe) for n, ft in fts.items()},
              "tasks_file": str(tasks_file), "reference": ref, "preconditions": pre, "recipes": recipes,
              "rows": table_rows(ref, rows),
              "tuned": {row: {"settings": r["settings"], "details": r["details"], "seconds": r["seconds"],
                              "recipe": r["recipe"].read_text(), **entropy_per_task(r["recipe"].parent)}
                        for row, r in tuned_runs.items()}}
    if setup.check_cli and first:
        result["cli_check"] = check_with_cli(setup, tasks_file, fts, ref)
    return result


def run(setup: Setup, seeds: list[int]) -> dict:
    tasks = setup.tasks
    for n, t in tasks.items():
        c = t.counts()
        setup.log(f"  {n}: {len(t.classes)} classes, train/val/test {c['train']}/{c['val']}/{c['test']} "
                  f"(unique texts, stratified, no text in two splits), max {t.max_len} tokens")
    return {"settings": {"training": setup.training.__dict__, "regimes": {r: REGIMES[r] for r in setup.regimes},
                         "min_gain": MIN_GAIN, "data_free": data_free(len(tasks)), "ta_default": TA_DEFAULT,
                         "splits": {n: t.counts() for n, t in tasks.items()},
                         "class_counts": {n: {s: t.class_counts(s) for s in ("train", "val", "test")}
                                          for n, t in tasks.items()},
                         "classes": {n: t.classes for n, t in tasks.items()},
                         "max_len": {n: t.max_len for n, t in tasks.items()}},
            "regimes": {r: {"seeds": {str(s): run_regime_seed(setup, r, s, s == seeds[0]) for s in seeds}}
                        for r in setup.regimes}}
