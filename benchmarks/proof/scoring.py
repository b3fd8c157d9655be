"""Accuracy through the product: every number of the proof suite's MiniLM parts is `taskvec.evaluate.evaluate` on
classification tasks built exactly as a tasks file builds them (CSV `text,label,split`, a head, labels in head
order, max_length, batch size), so `taskvec eval MODEL --tasks tasks.yaml` reproduces them to the last digit.

Cached by content, never by path: an accuracy is stored under the model's content (its weights, config and tokenizer
files, or the hash of in-memory weights plus the folder that completes them), the head file's content, the split's
content, the evaluation settings and the source of taskvec's evaluator.
"""

import time
from functools import lru_cache
from pathlib import Path

import memo
from data import Task, write_csv
from encoder import digest, file_hash, library_versions, model_key, weights_key

BATCH_SIZE = 32  # the product's default, written into the tasks files too


@lru_cache(maxsize=None)
def eval_code_hash() -> str:
    """The source of taskvec's evaluator (every module of taskvec.evaluate)."""
    import taskvec.evaluate

    folder = Path(taskvec.evaluate.__file__).parent
    return digest(*[(p.name, p.read_text()) for p in sorted(folder.glob("*.py"))])


class Scorer:
    def __init__(self, cache: Path, log=print):
        self.cache, self.log = cache, log
        self.data_dir, self.memo_dir = cache / "data", cache / "accuracy"

    def csv(self, task: Task) -> Path:
        """The task's CSV (all splits), named by its content."""
        return write_csv(task, self.data_dir / f"{task.name}-{task.content_hash()}.csv")

    def entry(self, task: Task, split: str, head: Path, name: str | None = None, **extra) -> dict:
        """One classification task of a tasks file (as a mapping), with absolute paths."""
        return {"name": name or task.name, "type": "classification", "data": str(self.csv(task).resolve()),
                "split_column": "split", "split": split, "head": str(Path(head).resolve()),
                "labels": list(task.classes), "max_length": task.max_len, "batch_size": BATCH_SIZE, **extra}

    @staticmethod
    def model_identity(model, model_folder=None) -> str:
        if isinstance(model, dict):
            return digest("weights", weights_key(model), model_key(model_folder))
        return model_key(model)

    @staticmethod
    def job_key(model_id: str, task: Task, split: str, head: Path) -> str:
        return digest("accuracy", model_id, file_hash(head), task.content_hash((split,)), BATCH_SIZE,
                      eval_code_hash(), library_versions())

    def accuracies(self, model, jobs: list[tuple[Task, str, Path]], model_folder: Path | None = None,
                   what: str = "") -> list[float]:
        """Accuracy of `model` (a folder, or weights with `model_folder`) for each job (task, split, head file)."""
        from taskvec.evaluate import evaluate, parse_tasks

        model_id = self.model_identity(model, model_folder)
        keys = [self.job_key(model_id, t, s, h) for t, s, h in jobs]
        job_of = dict(zip(keys, jobs))

        def score(missing: list[str]) -> list[float]:
            start = time.perf_counter()
            entries = [self.entry(t, s, h, name=f"{i}:{t.name}/{s}")
                       for i, (t, s, h) in enumerate(job_of[k] for k in missing)]
            results = evaluate(model, parse_tasks({"tasks": entries}, self.data_dir, "proof tasks"),
                               model_folder=model_folder)
            self.log(f"      scored {what or model_id[:12]}: {len(missing)} task splits, "
                     f"{sum(r.examples for r in results)} examples, {time.perf_counter() - start:.1f} s")
            return [r.score for r in results]

        return memo.stored(self.memo_dir / f"{model_id}.json", keys, score)
