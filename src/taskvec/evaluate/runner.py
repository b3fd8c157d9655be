"""evaluate(): score one candidate on every task of a tasks file.

The candidate is a model folder, or weights held in memory (what a tuner produces) plus the folder that gives their
config and tokenizer; python tasks need only the weights, so for them no folder is needed at all.
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..errors import TaskvecError
from .tasks import ClassificationTask, PythonTask, Task, load_tasks

METRICS = {"python": "score", "classification": "accuracy", "language_modeling": "neg_nll"}


@dataclass
class TaskResult:
    """One task's outcome. `score` is higher-is-better (for language modeling it is -nll); `normalized` is
    score / reference when the task gives a reference."""

    name: str
    type: str
    metric: str
    score: float
    extra: dict = field(default_factory=dict)
    normalized: Optional[float] = None
    examples: int = 0
    seconds: float = 0.0
    weight: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(model, tasks: Union[str, Path, list[Task]], *, model_folder: Union[str, Path, None] = None,
             device: str = "cpu") -> list[TaskResult]:
    """Score `model` on `tasks` (a tasks file, or what load_tasks returned).

    `model` is a model folder, or a dict name -> torch.Tensor (then `model_folder`, if given, supplies the config and
    tokenizer and any tensor the dict lacks), or None with `model_folder` (the folder itself is the candidate)."""
    if not isinstance(tasks, list):
        tasks = load_tasks(tasks)
    if isinstance(model, dict):
        weights, folder = model, model_folder
    elif model is None:
        if model_folder is None:
            raise TaskvecError("evaluate: give a model folder, or weights with model_folder=")
        weights, folder = None, model_folder
    else:
        weights, folder = None, model
    folder = Path(folder) if folder is not None else None
    if folder is not None and not folder.exists():
        raise TaskvecError(f"{folder}: no such model folder")
    cache = {}
    return [_run(task, weights, folder, device, cache) for task in tasks]


def _run(task: Task, weights, folder, device: str, cache: dict) -> TaskResult:
    where = task._where or f"task {task.name!r}"
    start = time.perf_counter()
    if isinstance(task, PythonTask):
        from .python_task import run_python

        if weights is None:
            if "weights" not in cache:
                from .models import read_weights

                cache["weights"] = read_weights(folder)
            weights_here = cache["weights"]
        else:
            weights_here = weights
        score, extra, examples = run_python(task, weights_here, where), {}, 1
    else:
        if folder is None:
            raise TaskvecError(f"{where}: a {task.type} task needs a model folder for the config and tokenizer; "
                               f"pass model_folder=")
        if isinstance(task, ClassificationTask):
            from .classification import run_classification as run
        else:
            from .language_modeling import run_language_modeling as run
        score, extra, examples = run(task, folder, weights, device, where)
    normalized = score / task.reference if task.reference not in (None, 0) else None
    return TaskResult(task.name, task.type, METRICS[task.type], score, extra, normalized, examples,
                      time.perf_counter() - start, task.weight)


def summary(results: list[TaskResult]) -> dict:
    """Weighted means of the scores and (when every task has a reference) of the normalized scores: one number a
    tuner can maximize."""
    total = sum(r.weight for r in results) or 1.0
    out = {"mean_score": sum(r.weight * r.score for r in results) / total, "mean_normalized": None}
    if all(r.normalized is not None for r in results):
        out["mean_normalized"] = sum(r.weight * r.normalized for r in results) / total
    return out
