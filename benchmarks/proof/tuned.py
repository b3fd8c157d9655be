"""The rows of the addition table that choose coefficients on data: `taskvec tune` (TPE on the tuning split) and
`taskvec tune --adamerging` (no labels), run through the product's command line on the tasks directory that
addition.py writes per regime and seed (tasks.yaml + data/ + the fine-tunes it points to).

Each run is cached by content -- the tasks file and the bytes of its data and heads, the recipe, the settings and the
source of taskvec.tune and of the merge method's modules -- never by path; a changed setting runs again. Returns {row name: merged
model folder}, which addition.score_models scores on the test splits like every other row.
"""

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

TPE_TRIALS = {"task_arithmetic": 30, "ties": 20, "dare_ties": 20, "tsv": 12, "iso_c": 12, "iso_cts": 12,
              "consensus": 16}
# λ searched on a log scale; wide enough that no pick sits at a bound (with Iso-C and Iso-CTS capped at 3.0, TPE
# picked 2.9-2.97 in both regimes: a flat spectrum at the mean singular value needs a larger scale than a sum)
LAMBDA_RANGE = {"tsv": [0.3, 4.0], "iso_c": [0.5, 8.0], "iso_cts": [0.5, 8.0], "consensus": [0.3, 4.0]}
ADA_STEPS, ADA_LR = 100, 5e-3  # the paper: 500 steps at 1e-3; a fifth of the steps at 5x the rate (time on 2 cores)


def search_recipe(method: str, base: str, models: list[str]) -> dict:
    """The searched recipe of each tuned row: task_arithmetic searches one weight per model; ties and dare_ties a
    shared density (choices) and lambda, with every weight 1; the subspace methods lambda alone, as their papers
    tune it (their other settings stay at the papers' defaults); consensus lambda and the agreement count k."""
    if method in LAMBDA_RANGE:
        parameters = {"lambda": {"search": LAMBDA_RANGE[method], "log": True}}
        if method == "consensus":
            parameters["k"] = {"choices": [2, 3]}
        return {"merge_method": method, "base_model": base,
                "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models], "parameters": parameters}
    if method == "task_arithmetic":
        entries = [{"model": m, "parameters": {"weight": {"search": [0.0, 1.5]}}} for m in models]
        return {"merge_method": method, "base_model": base, "models": entries, "parameters": {"lambda": 1.0}}
    density = [0.1, 0.2, 0.3, 0.5, 0.7] if method == "ties" else [0.1, 0.3, 0.5, 0.7, 0.9]
    return {"merge_method": method, "base_model": base,
            "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
            "parameters": {"density": {"choices": density}, "lambda": {"search": [0.3, 2.0]}}}


ROWS = {  # row name -> how it is made
    "task_arithmetic tuned (TPE, weight per model)": ("tpe", "task_arithmetic"),
    "ties tuned (TPE, density + λ)": ("tpe", "ties"),
    "dare_ties tuned (TPE, density + λ)": ("tpe", "dare_ties"),
    "tsv tuned (TPE, λ)": ("tpe", "tsv"),
    "iso_c tuned (TPE, λ)": ("tpe", "iso_c"),
    "iso_cts tuned (TPE, λ)": ("tpe", "iso_cts"),
    "consensus tuned (TPE, λ + k)": ("tpe", "consensus"),
    "AdaMerging task-wise": ("ada", ["task"]),
    "AdaMerging layer-wise": ("ada", ["layer"]),
    "AdaMerging++ layer-wise": ("ada", ["layer", "--plus"]),
}


TUNE_EXAMPLES = 100  # per task: what one candidate is scored on (a stratified part of the validation split)


def tuning_subset(tasks_file: Path, size: int = TUNE_EXAMPLES) -> Path:
    """A copy of the tasks file whose tuning split is `size` validation rows per task, stratified (labels taken in
    turn, in file order): <tasks dir>/tune<size>/tasks.yaml, its CSVs holding the test rows and those rows as split
    'tune'. Scoring a candidate costs about linearly in these rows (benchmarks/tune_candidate.py)."""
    import csv
    import os

    spec = yaml.safe_load(tasks_file.read_text())
    folder = tasks_file.parent / f"tune{size}"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for task in spec["tasks"]:
        source = tasks_file.parent / task["data"]
        with source.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        by_label: dict[str, list[dict]] = {}
        for r in rows:
            if r[task["split_column"]] == task["tune_split"]:
                by_label.setdefault(r["label"], []).append(r)
        picked, turn = [], 0
        while len(picked) < size and any(turn < len(v) for v in by_label.values()):
            picked += [v[turn] for v in by_label.values() if turn < len(v)]
            turn += 1
        kept = [r for r in rows if r[task["split_column"]] == task["split"]]
        kept += [{**r, task["split_column"]: "tune"} for r in picked[:size]]
        target = folder / "data" / Path(task["data"]).name
        with target.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        task["data"] = os.path.relpath(target, folder)
        task["tune_split"] = "tune"
        task["head"] = os.path.relpath((tasks_file.parent / task["head"]).resolve(), folder.resolve())
    path = folder / "tasks.yaml"
    path.write_text(f"# {tasks_file.name} beside this folder, tuned on {size} validation rows per task (stratified)\n"
                    + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000))
    return path


def _code_version(method: str) -> str:
    """The code a row's result depends on beyond its recipe and settings (which are in the key themselves): the tuner
    and the merge method's module with the sibling modules it imports. Not this file: adding a row here must not
    recompute the others (each takes minutes to an hour)."""
    methods = ROOT / "src" / "taskvec" / "methods"
    sources = set()
    for module in methods.glob("*.py"):  # the module that registers the name ("dare_ties" lives in dare.py)
        text = module.read_text()
        if f'"{method}"' in text:
            sources |= {module} | {methods / f"{m}.py" for m in re.findall(r"^from \.(\w+) import", text, re.M)}
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "taskvec" / "tune").glob("*.py")) + sorted(sources):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _weights_digest(folder: str) -> str:
    """The content of a model folder's weights (the key must not change when the folder moves)."""
    digest = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def _content_key(tasks_file: Path, recipe: dict, settings: dict) -> str:
    digest = hashlib.sha256()
    for ref in [recipe["base_model"]] + [m["model"] for m in recipe["models"]]:
        digest.update(_weights_digest(ref).encode())
    recipe = {**recipe, "base_model": "base", "models": [{**m, "model": f"model{i}"}
                                                          for i, m in enumerate(recipe["models"])]}
    spec = yaml.safe_load(tasks_file.read_text())  # parsed: comments (which name folders) do not count
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for task in spec["tasks"]:
        for field in ("data", "head"):
            if task.get(field):
                digest.update((tasks_file.parent / task[field]).read_bytes())
    digest.update(json.dumps({"recipe": recipe, "settings": settings, "code": _code_version(recipe["merge_method"])},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def tuned_rows(tasks_file: Path, base: str, models: list[str], cache: Path, seed: int,
               rows: list[str] | None = None, log: Callable[[str], None] = print,
               run_missing: bool = True) -> dict[str, dict]:
    """Run (or reuse) every tuned row; -> {row: {"model": merged folder, "recipe": best.yaml, "test": {task:
    held-out accuracy, as `taskvec tune` scored it}, "seconds", ...}}. The key holds the models' content (their
    weights), the parsed tasks file and its data and heads, the settings and the code. With `run_missing` false,
    rows not in the cache are left out (and said so)."""
    base, models = str(Path(base).resolve()), [str(Path(m).resolve()) for m in models]
    out = {}
    for row in rows or list(ROWS):
        kind, what = ROWS[row]
        if kind == "tpe":
            recipe = search_recipe(what, base, models)
            settings = {"search": "tpe", "trials": TPE_TRIALS[what], "seed": seed}
        else:
            recipe = {"merge_method": "ties" if "--plus" in what else "task_arithmetic", "base_model": base,
                      "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}
            settings = {"adamerging": what, "steps": ADA_STEPS, "lr": ADA_LR, "seed": seed}
        folder = cache / _content_key(tasks_file, recipe, settings)
        done = folder / "done.json"
        if not done.is_file() and not run_missing:
            log(f"    {row}: not in the cache, left out (run without --tuned-cached to compute it)")
            continue
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
            args = [sys.executable, "-m", "taskvec.cli", "tune", str(folder / "recipe.yaml"), "--tasks", str(tasks_file),
                    "--out", str(folder / "best.yaml"), "--merge", str(folder / "merged"), "--force", "--seed",
                    str(seed)]
            if kind == "tpe":
                args += ["--search", "tpe", "--trials", str(settings["trials"])]
            else:
                args += ["--adamerging", what[0], *what[1:], "--steps", str(ADA_STEPS), "--lr", str(ADA_LR)]
            log(f"    {row}: taskvec {' '.join(args[3:5])} ... ({folder.name})")
            start = time.time()
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            done.write_text(json.dumps({"row": row, "settings": settings, "seconds": round(time.time() - start, 1)}))
        info = json.loads(done.read_text())
        details = _details(folder, kind)
        out[row] = {"model": folder / "merged", "recipe": folder / "best.yaml", "seconds": info["seconds"],
                    "settings": settings, "details": details, "test": details.pop("held_out")}
    return out


def _details(folder: Path, kind: str) -> dict:
    """What the run picked: the best values and the per-candidate time (TPE), or the learned coefficients."""
    if kind == "tpe":
        trace = json.loads((folder / "best.trace.json").read_text())
        return {"best": trace["best"]["values"], "tuning_objective": trace["best"]["objective"],
                "candidate_seconds": trace["candidate_seconds"], "held_out": _scores(trace["held_out"])}
    learned = json.loads((folder / "best.adamerging.json").read_text())
    history = learned.get("history") or [{}]
    return {"task_coefficients": learned.get("task_coefficients"), "entropy_start": history[0].get("entropy"),
            "entropy_end": history[-1].get("entropy"), "seconds": learned.get("seconds"),
            "held_out": _scores(learned["held_out"])}


def _scores(held_out: dict) -> dict[str, float]:
    """Each task's held-out (test) accuracy, as `taskvec tune` scored the chosen merge with taskvec.evaluate."""
    return {r["name"]: r["score"] for r in held_out["results"]}
