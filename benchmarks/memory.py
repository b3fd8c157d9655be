"""Peak memory of a streaming task-arithmetic merge: base + three fine-tunes of a ~540 MB LLaMA-shaped checkpoint.

The merge runs as a child process (`python -m taskvec.cli merge ...`); its peak resident set size comes from the
kernel (wait4's ru_maxrss). The target is under 1 GB, i.e. far below the 2.1 GB of inputs and independent of model
size. Run: python benchmarks/memory.py [--workdir DIR] [--repeats 3]; writes benchmarks/results/memory.json.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTER, LAYERS, VOCAB = 768, 2048, 12, 32000  # 134M parameters, 537 MB in float32


def llama_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{p}mlp.gate_proj.weight"] = (INTER, HIDDEN)
        shapes[f"{p}mlp.up_proj.weight"] = (INTER, HIDDEN)
        shapes[f"{p}mlp.down_proj.weight"] = (HIDDEN, INTER)
        shapes[f"{p}input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{p}post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def write_checkpoint(folder: Path, seed: int, base_seed: int | None, shards: int = 2) -> int:
    """Base: N(0, 0.02) weights. Fine-tune: base plus deltas of about 1e-3 relative size."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    shapes = llama_shapes()
    names = list(shapes)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s::shards]
        tensors = {}
        for name in part:
            g = torch.Generator().manual_seed(hash((base_seed if base_seed is not None else seed, name)) % 2**31)
            t = torch.randn(shapes[name], generator=g) * 0.02
            if base_seed is not None:
                g2 = torch.Generator().manual_seed(hash((seed, name)) % 2**31)
                t += torch.randn(shapes[name], generator=g2) * 2e-5
            tensors[name] = t
            total += t.numel() * 4
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, folder / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": 12, "vocab_size": VOCAB, "torch_dtype": "float32"}))
    return total


def peak_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of a child process, from the kernel's accounting."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def generate(work: Path) -> int:
    size = write_checkpoint(work / "base", 0, None)
    for i in (1, 2, 3):
        write_checkpoint(work / f"ft{i}", i, base_seed=0)
    return size


def main() -> None:
    # This process never imports torch: a child forked from a big parent would inherit its resident pages, and
    # ru_maxrss would count them. Checkpoints are generated in a separate child.
    if len(sys.argv) == 3 and sys.argv[1] == "--generate":
        generate(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="taskvec-mem-"))
    try:
        print(f"writing checkpoints under {work} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--generate", str(work)], check=True)
        size = json.loads((work / "base" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        recipe = work / "recipe.yaml"
        recipe.write_text(
            f"merge_method: task_arithmetic\nbase_model: {work / 'base'}\nmodels:\n"
            + "".join(f"  - model: {work / f'ft{i}'}\n    parameters: {{weight: {w}}}\n" for i, w in ((1, 0.5), (2, 0.3), (3, -0.2)))
        )
        baseline, _ = peak_rss([sys.executable, "-c", "import taskvec.cli, taskvec.merge"])
        torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True).stdout.strip()
        rows = []
        for workers in (1, 2, 4):
            runs = []
            for r in range(args.repeats):
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                runs.append(peak_rss([sys.executable, "-m", "taskvec.cli", "merge", str(recipe), "--out", str(out),
                                      "-q", "--workers", str(workers), "--shard-size", "200MB"]))
            rss = [m for m, _ in runs]
            secs = [s for _, s in runs]
            rows.append({"workers": workers, "peak_rss_mb_max": max(rss), "peak_rss_mb_median": statistics.median(rss),
                         "seconds_median": statistics.median(secs), "seconds_min": min(secs), "seconds_max": max(secs)})
        result = {
            "benchmark": "peak RSS of task_arithmetic over base + 3 fine-tunes",
            "checkpoint_mb": round(size / 1e6, 1), "inputs_mb": round(4 * size / 1e6, 1),
            "import_baseline_rss_mb": round(baseline, 1), "target_mb": 1000, "repeats": args.repeats,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch_version},
            "page_cache": "warm (files just written)", "rows": rows,
            "pass": all(r["peak_rss_mb_max"] < 1000 for r in rows),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\ncheckpoint {result['checkpoint_mb']} MB each, {result['inputs_mb']} MB read per merge; "
              f"import alone: {baseline:.0f} MB RSS; {args.repeats} runs each\n")
        print("| workers | peak RSS (max) | peak RSS (median) | wall s (median, min-max) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['workers']} | {r['peak_rss_mb_max']:.0f} MB | {r['peak_rss_mb_median']:.0f} MB | "
                  f"{r['seconds_median']:.1f} ({r['seconds_min']:.1f}-{r['seconds_max']:.1f}) |")
        print(f"\ntarget < 1000 MB: {'PASS' if result['pass'] else 'MISS'}; wrote {args.out}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
