"""``taskvec tune --adamerging task|layer [--plus]``: the recipe's base and models merged with coefficients learned
without labels (``tune.adamerging``), written as a plain recipe, then scored once on the held-out data."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ..errors import TaskvecError
from ..evaluate import load_tasks
from ..evaluate.tasks import ClassificationTask, has_tuning_data, tuning_view
from ..recipe import parse_recipe
from ..text_files import write_atomic
from ..yaml_file import read_yaml
from . import space
from .paths import absolute_paths, portable_paths


@dataclass
class AdaOptions:
    granularity: str = "task"  # or "layer"
    plus: bool = False
    steps: int = 500
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class AdaOutcome:
    result: object  # AdaMergingResult
    recipe: dict
    held_out: dict
    files: dict[str, Path] = field(default_factory=dict)


def tune_adamerging(recipe: str | Path, tasks_file: str | Path, out: str | Path, options: AdaOptions,
                    log: Callable[[str], None] | None = None) -> AdaOutcome:
    from .adamerging import adamerge, plot_coefficients, recipe_for
    from .worker import Worker

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    recipe, tasks_file, out = Path(recipe), Path(tasks_file), Path(out)
    if options.granularity not in ("task", "layer"):
        raise TaskvecError(f"--adamerging {options.granularity}: choose task (one coefficient per model) or layer "
                           f"(one per model and tensor)")
    raw = read_yaml(recipe, "recipe")
    if not isinstance(raw, dict):
        raise TaskvecError(f"{recipe}: a recipe is a YAML mapping with merge_method, base_model and models")
    if space.find_dimensions(raw, str(recipe)):
        raise TaskvecError(f"{recipe}: AdaMerging learns the weights itself; remove the searched values "
                           f"({{search}}, {{choices}}) or drop --adamerging")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parse_recipe(raw, str(recipe))
    if not raw.get("base_model"):
        raise TaskvecError(f"{recipe}: AdaMerging adds task vectors to a base; give base_model")
    method = "ties" if options.plus else "task_arithmetic"
    if raw["merge_method"] != method:
        log(f"note: AdaMerging{'++' if options.plus else ''} merges with {method}; the recipe's merge_method "
            f"{raw['merge_method']} and its parameters are not used")
    tasks = load_tasks(tasks_file)
    for task in tasks:
        if not isinstance(task, ClassificationTask):
            raise TaskvecError(f"{task._where}: AdaMerging minimises the entropy of classification tasks' "
                               f"predictions; a {task.type} task cannot drive it (leave it out of this tasks file)")
    if not any(has_tuning_data(t) for t in tasks):
        log("note: no task has tune_split, so the coefficients are learned on the inputs of the split that scores "
            "them; give tasks a tune_split for an honest held-out score")
    absolute = absolute_paths(raw, recipe.parent)
    base, models = absolute["base_model"], [m["model"] for m in absolute["models"]]

    with _StepProgress(options.steps, options.progress) as progress:
        result = adamerge(base, models, [tuning_view(t) for t in tasks], granularity=options.granularity,
                          plus=options.plus, steps=options.steps, lr=options.lr, batch_size=options.batch_size,
                          seed=options.seed, device=options.device, progress=progress.step)
    learned = recipe_for(result, base, models)
    if options.granularity == "task":
        log("learned coefficients: " + ", ".join(f"{Path(m).name}={c:.4f}"
                                                 for m, c in zip(models, result.task_coefficients)))
    log("scoring the learned merge once on the held-out data")
    worker = Worker(str(tasks_file.resolve()), base, options.device)
    held_out = worker.score(learned, held_out=True)
    worker.merger.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_name(out.stem)
    files = {"recipe": out, "coefficients": Path(f"{stem}.adamerging.json"),
             "plot": Path(f"{stem}.adamerging.png")}
    means = held_out["summary"]
    header = (f"# taskvec tune --adamerging {options.granularity}{' --plus' if options.plus else ''}: coefficients "
              f"learned in {options.steps} steps (lr {options.lr:g}, seed {options.seed}) without labels on "
              f"{tasks_file.name}\n# held out: mean score {means['mean_score']:.4f}"
              + (f", mean normalized {means['mean_normalized']:.4f}" if means["mean_normalized"] is not None else "")
              + "\n")
    write_atomic(out, header + yaml.safe_dump(portable_paths(learned, out.parent), sort_keys=False))
    write_atomic(files["coefficients"], json.dumps({**result.to_json(), "held_out": held_out}, indent=1) + "\n")
    plot_coefficients(result, files["plot"])
    return AdaOutcome(result, learned, held_out, files)


class _StepProgress:
    """Steps done and the current mean entropy: a bar on a terminal, a line every 25 steps otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self._bar = None

    def __enter__(self):
        if self.enabled and sys.stderr.isatty() and self.total:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("adamerging {task.completed:.0f}/{task.total:.0f} steps"), BarColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), TimeRemainingColumn())
            self._task = self._bar.add_task("entropy -", total=self.total)
            self._bar.start()
        return self

    def step(self, step: int, entropy: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=f"entropy {entropy:.4f}")
        elif self.enabled and (step % 25 == 0 or step == self.total):
            print(f"adamerging: step {step}/{self.total}, entropy {entropy:.4f}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
