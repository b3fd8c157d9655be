"""One scorer of candidates: the recipe's models opened once, the tasks prepared once, then merge + score per call.

The same class runs in the driver (serial search) and as a Ray actor (``--workers K``): a candidate goes in as a
plain recipe mapping, its scores come back as plain data.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..evaluate import Evaluator, load_tasks, summary
from ..evaluate.tasks import tuning_view
from .candidates import CandidateMerger


def objective_of(means: dict) -> float:
    """What the search maximises: the weighted mean normalized score when every task has a reference, else the
    weighted mean score."""
    return means["mean_normalized"] if means["mean_normalized"] is not None else means["mean_score"]


class Worker:
    def __init__(self, tasks_file: str, folder: str | None, device: str = "cpu", in_memory: bool | None = None,
                 threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.tasks = load_tasks(tasks_file)
        self.folder = Path(folder) if folder else None
        self.device = device
        self.merger = CandidateMerger(in_memory)
        self._evaluators: dict[bool, Evaluator] = {}

    def score(self, recipe: dict, held_out: bool = False) -> dict:
        """Merge the candidate in memory and score it on the tuning data (or, with `held_out`, the held-out data)."""
        start = time.perf_counter()
        self.merger.plan_memory(recipe)
        weights = self.merger.merge(recipe)
        merged = time.perf_counter()
        if held_out not in self._evaluators:
            tasks = self.tasks if held_out else [tuning_view(t) for t in self.tasks]
            self._evaluators[held_out] = Evaluator(tasks, self.folder, self.device)
        results = self._evaluators[held_out].score(weights)
        means = summary(results)
        return {"results": [r.to_dict() for r in results], "summary": means, "objective": objective_of(means),
                "merge_seconds": merged - start, "seconds": time.perf_counter() - start}

    def weights(self, recipe: dict):
        """The candidate's merged weights (a fresh dict the next call does not overwrite)."""
        return self.merger.merge(recipe, fresh=True)
