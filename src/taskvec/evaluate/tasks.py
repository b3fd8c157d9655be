"""The tasks file: which tasks score a model, checked in full before any model is loaded.

A bad tasks file should cost the user a second, not the minutes of loading a model, so every problem that can be
seen from the file and its data (fields, types, paths, columns, splits, labels, the python function) is reported
here, as one TaskvecError line naming the file, the task and the field.
"""

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ..errors import TaskvecError
from ..yaml_file import read_yaml
from .data import read_rows, read_texts

TYPES = ("python", "classification", "language_modeling")


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    weight: float = 1.0
    reference: Optional[float] = None
    _where: str = PrivateAttr(default="")  # "tasks.yaml: task 'name'", for errors found while running


class PythonTask(_Task):
    """A user function ``weights -> float`` (higher is better): runs the user's own code, on purpose."""

    type: Literal["python"]
    function: str
    _fn: Any = PrivateAttr(default=None)  # the loaded callable, set by parse_tasks


class ClassificationTask(_Task):
    type: Literal["classification"]
    data: Path
    text_column: str = "text"
    label_column: str = "label"
    split_column: Optional[str] = None
    split: Optional[str] = None
    tune_split: Optional[str] = None  # the split `taskvec tune` optimises on; `split` stays held out
    labels: Optional[list[str]] = None
    max_length: int = Field(default=128, gt=0)
    batch_size: int = Field(default=32, gt=0)
    head: Optional[Path] = None
    _rows: Any = PrivateAttr(default=None)  # [(text, label)], set by parse_tasks
    _tune_rows: Any = PrivateAttr(default=None)  # the same for tune_split, when given
    _label_set: Any = PrivateAttr(default=None)  # sorted distinct labels of both splits: one class order for both

    @field_validator("labels", "split", "tune_split", mode="before")
    @classmethod
    def _as_text(cls, value):
        """Labels and splits compare as text, as read from CSV: `labels: [0, 1]` matches a JSONL label 0."""
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) else v for v in value]
        return str(value) if isinstance(value, (int, float)) else value


class LanguageModelingTask(_Task):
    type: Literal["language_modeling"]
    data: Path
    tune_data: Optional[Path] = None  # what `taskvec tune` optimises on; `data` stays held out
    chat: bool = False
    max_length: int = Field(default=512, gt=0)
    batch_size: int = Field(default=8, gt=0)
    _examples: Any = PrivateAttr(default=None)  # [str] or [(prompt, response)], set by parse_tasks
    _tune_examples: Any = PrivateAttr(default=None)  # the same for tune_data, when given


Task = Union[PythonTask, ClassificationTask, LanguageModelingTask]
_CLASSES = {"python": PythonTask, "classification": ClassificationTask, "language_modeling": LanguageModelingTask}


def load_tasks(path: str | Path) -> list[Task]:
    """Read and check a tasks file; paths in it are relative to its folder."""
    path = Path(path)
    return parse_tasks(read_yaml(path, "tasks file"), path.parent, str(path))


def parse_tasks(data: Any, folder: str | Path = ".", source: str = "tasks") -> list[Task]:
    """Check a parsed tasks mapping (``{"tasks": [...]}``) whose relative paths start at `folder`."""
    folder = Path(folder)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise TaskvecError(f"{source}: a tasks file is a YAML mapping with a non-empty list 'tasks'")
    extra = sorted(set(data) - {"tasks"})
    if extra:
        raise TaskvecError(f"{source}: unknown field {extra[0]!r}; the file holds only 'tasks'")
    tasks, names = [], set()
    for i, raw in enumerate(data["tasks"]):
        task = _parse_task(raw, i, source)
        if task.name in names:
            raise TaskvecError(f"{source}: task {task.name!r} appears twice; give each task its own name")
        names.add(task.name)
        task._where = f"{source}: task {task.name!r}"
        _prepare(task, folder, task._where)
        tasks.append(task)
    return tasks


def _parse_task(raw: Any, i: int, source: str) -> Task:
    if not isinstance(raw, dict):
        raise TaskvecError(f"{source}: tasks[{i}] is not a mapping with name and type")
    where = f"{source}: task {raw['name']!r}" if isinstance(raw.get("name"), str) else f"{source}: tasks[{i}]"
    kind = raw.get("type")
    if kind not in _CLASSES:
        what = "has no 'type'" if kind is None else f"unknown type {kind!r}"
        raise TaskvecError(f"{where}: {what}; use one of {', '.join(TYPES)}")
    try:
        return _CLASSES[kind].model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = list(_CLASSES[kind].model_fields)
            raise TaskvecError(f"{where}: unknown field {field!r}; a {kind} task takes {', '.join(allowed)}") from e
        if err["type"] == "missing":
            raise TaskvecError(f"{where}: missing required field {field!r}") from e
        raise TaskvecError(f"{where}: field {field!r}: {err['msg']}") from e


def _prepare(task: Task, folder: Path, where: str) -> None:
    """Resolve paths and read what the task needs, so a bad file fails now."""
    if isinstance(task, PythonTask):
        from .python_task import load_function

        task._fn = load_function(task.function, folder, where)
        return
    task.data = _existing(folder / task.data, where, "data")
    if isinstance(task, ClassificationTask):
        if task.head is not None:
            task.head = _existing(folder / task.head, where, "head")
        if (task.split is None) != (task.split_column is None):
            raise TaskvecError(f"{where}: give both 'split_column' and 'split', or neither")
        if task.tune_split is not None and task.split_column is None:
            raise TaskvecError(f"{where}: 'tune_split' needs 'split_column' and 'split' (the held-out split)")
        columns = [task.text_column, task.label_column] + ([task.split_column] if task.split_column else [])
        rows = read_rows(task.data, columns, where)
        task._rows = _split_rows(task, rows, task.split, where)
        if task.tune_split is not None:
            if task.tune_split == task.split:
                raise TaskvecError(f"{where}: tune_split and split are both {task.split!r}; tuning on the held-out "
                                   f"split would make its score meaningless")
            task._tune_rows = _split_rows(task, rows, task.tune_split, where)
        task._label_set = sorted({label for _, label in task._rows + (task._tune_rows or [])})
        if task.labels is not None:
            check_labels(task, task.labels, where)
    else:
        task._examples = read_texts(task.data, task.chat, where)
        if task.tune_data is not None:
            task.tune_data = _existing(folder / task.tune_data, where, "tune_data")
            task._tune_examples = read_texts(task.tune_data, task.chat, where)


def _split_rows(task: ClassificationTask, rows: list[dict], split: str | None, where: str) -> list[tuple[str, str]]:
    """(text, label) of the rows in `split` (all rows when None); an empty split is an error naming those found."""
    if split is not None:
        found = sorted({str(r[task.split_column]) for r in rows})
        rows = [r for r in rows if str(r[task.split_column]) == split]
        if not rows:
            raise TaskvecError(f"{where}: split {split!r} of {task.data.name} has no rows; "
                               f"splits found: {', '.join(found)}")
    if not rows:
        raise TaskvecError(f"{where}: {task.data.name} has no rows")
    return [(str(r[task.text_column]), str(r[task.label_column])) for r in rows]


def tuning_view(task: Task) -> Task:
    """The task as `taskvec tune` scores candidates: on its tuning data (tune_split / tune_data) when it has some,
    else on its own data. Python tasks score the same either way."""
    view = task.model_copy()
    for attr in ("_where", "_fn", "_rows", "_examples", "_label_set"):
        if hasattr(task, attr):
            setattr(view, attr, getattr(task, attr))
    if isinstance(task, ClassificationTask) and task._tune_rows is not None:
        view._rows = task._tune_rows
    if isinstance(task, LanguageModelingTask) and task._tune_examples is not None:
        view._examples = task._tune_examples
    return view


def has_tuning_data(task: Task) -> bool:
    return getattr(task, "_tune_rows", None) is not None or getattr(task, "_tune_examples", None) is not None


def check_labels(task: ClassificationTask, labels: list[str], where: str) -> None:
    """Every label in the data must be one of the model's classes, or the accuracy would be silently capped."""
    unknown = sorted(set(task._label_set) - set(labels))
    if unknown:
        raise TaskvecError(f"{where}: label {unknown[0]!r} in {task.data.name} is not in labels "
                           f"({', '.join(labels)}); add it to 'labels' or fix the data")


def _existing(path: Path, where: str, field: str) -> Path:
    if not path.is_file():
        raise TaskvecError(f"{where}: {field} file {path} does not exist (paths are relative to the tasks file)")
    return path
