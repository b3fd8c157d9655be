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
    tokenizer and any tensor the dict lacks), or None with `model_folder` (the folder itself is the candidate).
    To score many candidates, make one `Evaluator` and call it for each: models and data are prepared once."""
    if isinstance(model, dict):
        weights, folder = model, model_folder
    elif model is None:
        if model_folder is None:
            raise TaskvecError("evaluate: give a model folder, or weights with model_folder=")
        weights, folder = None, model_folder
    else:
        weights, folder = None, model
    return Evaluator(tasks, folder, device).score(weights)


class Evaluator:
    """Scores candidates on a fixed set of tasks: each task is prepared on first use (model built from the folder,
    data tokenized), then every candidate's weights are loaded into the same models. Python tasks need no folder."""

    def __init__(self, tasks: Union[str, Path, list[Task]], folder: Union[str, Path, None] = None,
                 device: str = "cpu"):
        self.tasks = tasks if isinstance(tasks, list) else load_tasks(tasks)
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None and not self.folder.exists():
            raise TaskvecError(f"{self.folder}: no such model folder")
        self.device = device
        self._models = None
        self._scorers: dict[str, object] = {}
        self._folder_weights = None
        self._version = 0

    def score(self, weights: dict | None = None) -> list[TaskResult]:
        """Every task's result for one candidate: `weights` (name -> tensor) over the folder, or the folder's own."""
        self._version += 1
        return [self._run(task, weights) for task in self.tasks]

    def _run(self, task: Task, weights: dict | None) -> TaskResult:
        where = task._where or f"task {task.name!r}"
        start = time.perf_counter()
        if isinstance(task, PythonTask):
            from .python_task import run_python

            if weights is None:
                if self._folder_weights is None:
                    from .models import read_weights

                    self._folder_weights = read_weights(self.folder)
                weights = self._folder_weights
            score, extra, examples = run_python(task, weights, where), {}, 1
        else:
            score, extra, examples = self._scorer(task, where).score(weights, self._version)
        normalized = score / task.reference if task.reference not in (None, 0) else None
        return TaskResult(task.name, task.type, METRICS[task.type], score, extra, normalized, examples,
                          time.perf_counter() - start, task.weight)

    def _scorer(self, task: Task, where: str):
        if task.name not in self._scorers:
            if self.folder is None:
                raise TaskvecError(f"{where}: a {task.type} task needs a model folder for the config and tokenizer; "
                                   f"pass model_folder=")
            from .models import Models

            if self._models is None:
                self._models = Models(self.folder, self.device)
            if isinstance(task, ClassificationTask):
                from .classification import ClassificationScorer as Scorer
            else:
                from .language_modeling import LanguageModelingScorer as Scorer
            self._scorers[task.name] = Scorer(task, self._models, where)
        return self._scorers[task.name]


def summary(results: list[TaskResult]) -> dict:
    """Weighted means of the scores and (when every task has a reference) of the normalized scores: one number a
    tuner can maximize."""
    total = sum(r.weight for r in results) or 1.0
    out = {"mean_score": sum(r.weight * r.score for r in results) / total, "mean_normalized": None}
    if all(r.normalized is not None for r in results):
        out["mean_normalized"] = sum(r.weight * r.normalized for r in results) / total
    return out
