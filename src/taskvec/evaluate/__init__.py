"""Scoring a model -- a folder, or weights in memory -- on the tasks of a tasks file (``taskvec eval``)."""

from .runner import Evaluator, TaskResult, evaluate, summary
from .tasks import ClassificationTask, LanguageModelingTask, PythonTask, Task, load_tasks, parse_tasks

__all__ = ["evaluate", "Evaluator", "summary", "TaskResult", "load_tasks", "parse_tasks", "Task", "PythonTask",
           "ClassificationTask", "LanguageModelingTask"]
