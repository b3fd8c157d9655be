"""What one `taskvec tune` candidate costs: merge in memory + score every task's tuning split, per candidate.

    python benchmarks/tune_candidate.py RECIPE --tasks TASKS.yaml [--candidates 5] [--json out.json]

The recipe's searched values are set to random points of the space (seeded); the first candidate, which builds
the models and tokenizes the data, is reported apart. Prints a table (median, min, max over the candidates) and
writes JSON with the machine. The proof suite's addition benchmark writes the tasks files this takes
(benchmarks/proof, `tasks.yaml` per regime and seed).
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--tasks", type=Path, required=True)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "tune_candidate.json")
    args = ap.parse_args(argv)

    import torch

    from taskvec.tune.paths import evaluation_folder
    from taskvec.tune.search import load_search
    from taskvec.tune.worker import Worker

    search = load_search(args.recipe)
    worker = Worker(str(args.tasks.resolve()), evaluation_folder(search.raw))
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.candidates + 1):
        values = {d.name: rng.uniform(d.low, d.high) if d.is_range else rng.choice(d.choices) for d in search.dims}
        got = worker.score(search.candidate(values))
        rows.append({"merge": got["merge_seconds"], "total": got["seconds"],
                     "tasks": {r["name"]: r["seconds"] for r in got["results"]},
                     "examples": {r["name"]: r["examples"] for r in got["results"]}})
        print(f"candidate {i}{' (first: builds models, tokenizes)' if i == 0 else ''}: {got['seconds']:.2f} s "
              f"(merge {got['merge_seconds']:.2f} s)", flush=True)
    steady = rows[1:]

    def spread(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {
        "recipe": str(args.recipe), "tasks": str(args.tasks), "candidates": args.candidates, "seed": args.seed,
        "first_seconds": rows[0]["total"], "seconds": spread([r["total"] for r in steady]),
        "merge_seconds": spread([r["merge"] for r in steady]),
        "task_seconds": {t: spread([r["tasks"][t] for r in steady]) for t in steady[0]["tasks"]},
        "examples": steady[0]["examples"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
    }
    print("\n| part | median s | min s | max s |\n|---|---|---|---|")
    for name, s in [("whole candidate", result["seconds"]), ("merge in memory", result["merge_seconds"])] + [
            (f"task {t} ({result['examples'][t]} examples)", s) for t, s in result["task_seconds"].items()]:
        print(f"| {name} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
