"""LoRA out on the proof suite's MiniLM fine-tunes: what `taskvec extract-lora` keeps at ranks 4, 16 and 64, against
the full task vectors -- each task alone (base + its adapter) and the four-task merge (base + the sum of the
adapters) -- and how big the adapters are.

    python benchmarks/proof/lora_ranks.py [--ranks 4,16,64] [--tasks .cache/proof/tasks/probe-first-seed0/tasks.yaml]
        [--results benchmarks/proof/results/addition.json] [--embeddings lora|whole] [--json .../lora_ranks.json]

Adapters come from `taskvec.lora_export.extract_lora` (the product's API), LoRA on embeddings too by default (so
adapters are small; `--embeddings whole` saves them in modules_to_save instead), and are read back as task vectors
(`TaskVector.from_adapter`), scored on every task's test split with its own fine-tuned head (taskvec.evaluate).
Each row also gives the fine-tuning gain kept over the probe, as the addition table does; lambda = 1 throughout.
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
sys.path.insert(0, str(HERE))
from compression import add_proof_arguments, kept_and_normalized, proof_setup  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="4,16,64")
    add_proof_arguments(ap, "lora_ranks")
    ap.add_argument("--embeddings", choices=["lora", "whole"], default="lora")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from taskvec import MergeOptions
    from taskvec.evaluate import evaluate
    from taskvec.lora_export import extract_lora
    from taskvec.vector import TaskVector

    base, tasks, ref, models, regime, seed = proof_setup(args.tasks, args.results)
    options = MergeOptions(progress=False)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    print(f"{regime} seed {seed}: {', '.join(models)}; LoRA on embeddings: {args.embeddings == 'lora'}")

    def scored(vector: TaskVector, only: str | None = None) -> dict[str, float]:
        out = work / "scored"
        shutil.rmtree(out, ignore_errors=True)
        vector.apply(base, out, options=options)
        chosen = [t for t in tasks if only is None or t.name == only]
        return {r.name: r.score for r in evaluate(str(out), chosen)}

    for label in ["full task vectors"] + [f"LoRA rank {r}" for r in args.ranks.split(",") if r]:
        start = time.perf_counter()
        vectors, size, energy = {}, 0, []
        for n, ft in models.items():
            if label.startswith("full"):
                vectors[n] = TaskVector.from_models(base, ft)
                size += sum(p.stat().st_size for p in ft.glob("model*.safetensors"))
                continue
            folder = work / f"{n}-r{label.rsplit(' ', 1)[1]}"
            export = extract_lora(base, ft, folder, rank=int(label.rsplit(" ", 1)[1]),
                                  lora_embeddings=args.embeddings == "lora")
            size += export.bytes
            energy += [e for _, e in export.factors.values()]
            vectors[n] = TaskVector.from_adapter(folder, base)
        alone = {n: scored(v, n)[n] for n, v in vectors.items()}
        merged = scored(sum(list(vectors.values())[1:], list(vectors.values())[0]))
        kept, norm = kept_and_normalized(merged, ref)
        row = {"row": label, "bytes": size, "energy_kept_mean": statistics.fmean(energy) if energy else 1.0,
               "alone": alone, "alone_normalized": {n: alone[n] / ref[n]["finetuned_test"] for n in alone},
               "merged": merged, "merged_gain_kept": kept, "merged_normalized": norm,
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"  {label}: {size / 1e6:.1f} MB, energy kept {row['energy_kept_mean']:.3f}; alone normalized "
              + ", ".join(f"{n} {v:.3f}" for n, v in row["alone_normalized"].items())
              + f"; 4-task merge gain kept {kept:+.3f}, normalized {norm:.3f}", flush=True)
    result = {"tasks": str(args.tasks), "regime": regime, "seed": int(seed), "embeddings": args.embeddings,
              "rows": rows, "reference": ref,
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + markdown(result))


def markdown(result: dict) -> str:
    """Each task alone: normalized accuracy per task, and the fine-tuning gain kept (pooled over the four tasks, each
    scored alone); then the four-task merge."""
    ref = result["reference"]
    names = list(ref)
    lines = [f"| {result['regime']}, seed {result['seed']} | size (4) | energy kept | "
             + " | ".join(f"{n} alone" for n in names) + " | alone: gain kept | 4-task merge: **gain kept** | "
             "normalized |", "|---" * (6 + len(names)) + "|"]
    for r in result["rows"]:
        alone_kept = kept_and_normalized(r["alone"], ref)[0]
        lines.append(f"| {r['row']} | {r['bytes'] / 1e6:.1f} MB | {r['energy_kept_mean']:.3f} | "
                     + " | ".join(f"{r['alone_normalized'][n]:.3f}" for n in names)
                     + f" | {alone_kept:+.3f} | **{r['merged_gain_kept']:+.3f}** | {r['merged_normalized']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
