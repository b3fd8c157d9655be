"""``taskvec tune``: search a recipe's searched values on the tasks' tuning data with Optuna, then score the best
candidate once on the held-out data.

The optimiser (Optuna's grid, TPE or CMA-ES sampler) stays in this process; candidates are merged in memory and
scored by workers -- one in this process, or K Ray actors (``--workers K``, ``--ray-address``). A study lives in an
SQLite file named after the search's content (recipe, tasks file, sampler, seed), so running the same command again
resumes it, and a changed search starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import TaskvecError
from ..evaluate import load_tasks
from ..evaluate.tasks import has_tuning_data
from ..recipe import parse_recipe
from ..yaml_file import read_yaml
from . import space
from .paths import absolute_paths, evaluation_folder, portable_paths

SEARCHES = ("grid", "tpe", "cmaes")
DEFAULT_TRIALS = 30


@dataclass
class TuneOptions:
    search: str = "tpe"
    trials: int | None = None  # default: every grid point, or DEFAULT_TRIALS
    grid_points: int = 5
    seed: int = 0
    workers: int = 1
    ray_address: str | None = None
    device: str = "cpu"
    in_memory: bool | None = None  # None: when the models fit in half the available memory
    study: Path | None = None  # the SQLite file; default beside the output recipe
    progress: bool = True


@dataclass
class Search:
    """A recipe with searched values, checked: its dimensions and the recipe with absolute paths."""

    path: Path
    raw: dict  # paths made absolute
    dims: list[space.Dimension]

    def candidate(self, values: dict[str, Any]) -> dict:
        return space.substitute(self.raw, self.dims, values)


def load_search(path: str | Path) -> Search:
    """Read a recipe with searched values; every bound and choice is checked as a plain recipe before any model is
    read, so a density range reaching 0 fails now, naming the field."""
    path = Path(path)
    raw = read_yaml(path, "recipe")
    if not isinstance(raw, dict):
        raise TaskvecError(f"{path}: a recipe is a YAML mapping with merge_method, base_model and models")
    dims = space.find_dimensions(raw, str(path))
    if not dims:
        raise TaskvecError(f"{path}: nothing to search; give a value as {{search: [lo, hi]}} or {{choices: [...]}}, "
                           f"e.g. weight: {{search: [0.0, 1.5]}}")
    raw = absolute_paths(raw, path.parent)
    for values in space.corners(dims):
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parse_recipe(space.substitute(raw, dims, values), str(path))
        except TaskvecError as e:
            raise TaskvecError(f"{e} (with the searched values {shown}; narrow the search)") from None
    return Search(path, raw, dims)


@dataclass
class TuneResult:
    best_values: dict
    best_recipe: dict
    objective: float
    objective_name: str
    held_out: dict
    trials: list[dict]
    files: dict[str, Path] = field(default_factory=dict)


def study_key(search: Search, tasks_file: Path, options: TuneOptions) -> str:
    """The study's name: what the search computes (recipe, tasks file and its data, sampler and seed), never where
    the files are."""
    tasks_text = Path(tasks_file).read_bytes()
    material = json.dumps({"recipe": search.raw, "tasks": hashlib.sha256(tasks_text).hexdigest(),
                           "data": _task_data_digest(tasks_file), "search": options.search, "seed": options.seed,
                           "grid_points": options.grid_points if options.search == "grid" else None},
                          sort_keys=True, default=str)
    return "taskvec-" + hashlib.sha256(material.encode()).hexdigest()[:16]


def _task_data_digest(tasks_file: Path) -> str:
    digest = hashlib.sha256()
    for task in load_tasks(tasks_file):
        for attr in ("data", "tune_data", "head"):
            p = getattr(task, attr, None)
            if p is not None:
                digest.update(Path(p).read_bytes())
    return digest.hexdigest()


def tune(recipe: str | Path, tasks_file: str | Path, out: str | Path, options: TuneOptions | None = None,
         log: Callable[[str], None] | None = None) -> TuneResult:
    """Search, write the best recipe to `out` (plus its trace and plot beside it), and return the result."""
    import optuna

    options = options or TuneOptions()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    if options.search not in SEARCHES:
        raise TaskvecError(f"--search {options.search}: choose one of {', '.join(SEARCHES)}")
    if options.grid_points < 1:
        raise TaskvecError(f"--grid-points {options.grid_points}: give at least 1")
    search = load_search(recipe)
    tasks = load_tasks(tasks_file)  # a bad tasks file fails before any model is read
    tasks_file = Path(tasks_file)
    if not any(has_tuning_data(t) for t in tasks):
        log("note: no task has tune_split or tune_data, so candidates are chosen on the same data that scores the "
            "best one; give tasks a tune_split for an honest held-out score")
    if options.search == "cmaes":
        ranges = [d for d in search.dims if d.is_range]
        if len(ranges) < 2:
            raise TaskvecError("--search cmaes needs at least two searched ranges (CMA-ES samples a continuous space "
                               "of two or more dimensions); use --search tpe")
        if len(ranges) < len(search.dims):
            log("note: CMA-ES searches the ranges; the choices are sampled at random")
    grid = space.grid(search.dims, options.grid_points) if options.search == "grid" else None
    trials = len(grid) if grid is not None else (options.trials or DEFAULT_TRIALS)
    if grid is not None and options.trials is not None and options.trials != len(grid):
        log(f"note: --search grid tries every one of its {len(grid)} points; --trials {options.trials} is ignored")
    if trials < 1:
        raise TaskvecError(f"--trials {trials}: give at least 1")

    out.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_file = options.study or out.with_name(out.stem + ".optuna.db")
    study = optuna.create_study(study_name=study_key(search, tasks_file, options), direction="maximize",
                                storage=f"sqlite:///{study_file.resolve()}", sampler=_sampler(options),
                                load_if_exists=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        log(f"resuming study {study.study_name} in {study_file}: {len(done)} trial(s) already done")
    if grid is not None:
        _enqueue_missing(study, grid)
    remaining = max(0, trials - len(done))

    folder = evaluation_folder(search.raw)
    pool = _pool(str(tasks_file.resolve()), folder, options)
    start = time.perf_counter()
    try:
        with _Progress(trials, len(done), options.progress, study) as progress:
            while remaining:
                batch = [study.ask() for _ in range(min(pool.size, remaining))]
                values = [_suggest(trial, search.dims) for trial in batch]
                scored = pool.map([search.candidate(v) for v in values])
                for trial, got in zip(batch, scored):
                    _record(trial, got)
                    study.tell(trial, got["objective"])
                    progress.advance(study.best_value)
                remaining -= len(batch)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_trial
        best_values = {d.name: best.params[d.name] for d in search.dims}
        log(f"best of {len(complete)} trials: #{best.number} {_show(best_values)} -> objective {best.value:.4f} "
            f"on the tuning data; scoring it once on the held-out data")
        held_out = pool.held_out(search.candidate(best_values))
    finally:
        pool.close()

    from .report import write_outputs

    result = TuneResult(best_values, portable_paths(search.candidate(best_values), out.parent), best.value,
                        "mean_normalized" if best.user_attrs.get("taskvec", {}).get("normalized") else "mean_score", held_out,
                        [_trial_row(t, search.dims) for t in complete])
    result.files = write_outputs(result, search, tasks_file, out, options, study_file, time.perf_counter() - start)
    return result


def _sampler(options: TuneOptions):
    import optuna

    if options.search == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" notes
            return optuna.samplers.CmaEsSampler(seed=options.seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=options.seed)  # grid points are enqueued; TPE never samples them


def _enqueue_missing(study, grid: list[dict]) -> None:
    """Queue every grid point the study has not finished or queued (a resumed grid picks up where it stopped)."""
    import optuna

    state = optuna.trial.TrialState
    seen = {json.dumps(t.params, sort_keys=True) for t in study.trials if t.state == state.COMPLETE}
    seen |= {json.dumps(t.system_attrs.get("fixed_params", {}), sort_keys=True)
             for t in study.get_trials(deepcopy=False, states=(state.WAITING,))}
    for point in grid:
        if json.dumps(point, sort_keys=True) not in seen:
            study.enqueue_trial(point, skip_if_exists=False)


def _suggest(trial, dims: list[space.Dimension]) -> dict:
    out = {}
    for d in dims:
        if d.is_range:
            out[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        else:
            out[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    return out


def _record(trial, got: dict) -> None:
    """Keep each task's result with the trial (one write: every storage write is a transaction)."""
    trial.set_user_attr("taskvec", {"results": got["results"],
                                    "normalized": got["summary"]["mean_normalized"] is not None,
                                    "seconds": round(got["seconds"], 4),
                                    "merge_seconds": round(got["merge_seconds"], 4)})


def _trial_row(trial, dims) -> dict:
    attrs = trial.user_attrs.get("taskvec", {})
    results = attrs.get("results", [])
    return {"trial": trial.number, "values": {d.name: trial.params[d.name] for d in dims}, "objective": trial.value,
            "scores": {r["name"]: r["score"] for r in results},
            "normalized": {r["name"]: r["normalized"] for r in results},
            "seconds": attrs.get("seconds"), "merge_seconds": attrs.get("merge_seconds")}


def _show(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _pool(tasks_file: str, folder: str | None, options: TuneOptions):
    if options.workers > 1 or options.ray_address:
        from .ray_pool import RayPool

        return RayPool(tasks_file, folder, options)
    return LocalPool(tasks_file, folder, options)


class LocalPool:
    """Candidates scored one at a time in this process."""

    size = 1

    def __init__(self, tasks_file: str, folder: str | None, options: TuneOptions):
        from .worker import Worker

        self.worker = Worker(tasks_file, folder, options.device, options.in_memory)

    def map(self, candidates: list[dict]) -> list[dict]:
        return [self.worker.score(c) for c in candidates]

    def held_out(self, candidate: dict) -> dict:
        return self.worker.score(candidate, held_out=True)

    def close(self) -> None:
        self.worker.merger.close()


class _Progress:
    """Trials done and the best objective so far: a live bar on a terminal, a line per trial otherwise."""

    def __init__(self, total: int, done: int, enabled: bool, study):
        self.total, self.done, self.enabled = total, done, enabled
        self.best = study.best_value if done else None
        self._bar = None
        self._start = time.monotonic()

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("tune {task.completed:.0f}/{task.total:.0f} trials"), BarColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 transient=False)
            self._task = self._bar.add_task(self._best_text(), total=self.total, completed=self.done)
            self._bar.start()
        return self

    def _best_text(self) -> str:
        return "best -" if self.best is None else f"best {self.best:.4f}"

    def advance(self, best: float) -> None:
        self.done += 1
        self.best = best
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._best_text())
        elif self.enabled:
            print(f"tune: trial {self.done}/{self.total}, {self._best_text()}, "
                  f"{time.monotonic() - self._start:.0f} s", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
