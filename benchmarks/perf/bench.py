"""Merge speed and memory on LLaMA-shaped checkpoints, against the I/O floor and (optionally) mergekit.

For each size, generates a base and three fine-tunes (base + random deltas of about 1e-3 relative size) as sharded
bfloat16 safetensors with a config, then times in one run over the same files:
  - the I/O floor: read every input tensor once and write one output of the same size (a plain safetensors
    copy loop, fsynced like taskvec's output);
  - `taskvec merge` with linear, task_arithmetic, ties and dare_ties (density 0.5);
  - with --with-mergekit: mergekit 0.1.5 (`mergekit-yaml`, same recipes, CPU), installed into its own venv.
Each timing is a child process: wall time (median of --repeats runs with a warm page cache; cold-cache runs too
where dropping caches is allowed) and peak RSS from the kernel (wait4's ru_maxrss).
Writes benchmarks/results/perf.json, benchmarks/results/perf.md and benchmarks/results/perf.png.

Run: python benchmarks/perf/bench.py [--sizes small,tinyllama] [--repeats 3] [--with-mergekit] [--device cuda]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _mergekit import ensure_mergekit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "small": (768, 2048, 12, 12, 12, 32000),  # 134M parameters
    "medium": (1024, 2816, 16, 16, 4, 32000),  # ~250M
    "tinyllama": (2048, 5632, 22, 32, 4, 32000),  # 1.1B, TinyLlama-1.1B's shape
    # 2 of its 22 layers: every tensor shape of the 1.1B model (the largest, the embeddings, set the peak memory of a
    # method that holds a tensor's inputs) at a tenth of the time, for the slow subspace methods
    "tinyllama-2layers": (2048, 5632, 2, 32, 4, 32000),
}
METHODS = {
    "linear": ("linear", {"weight": 1.0}, {}),
    "task_arithmetic": ("task_arithmetic", {"weight": 0.5}, {}),
    "ties": ("ties", {"weight": 1.0, "density": 0.5}, {}),
    "dare_ties": ("dare_ties", {"weight": 1.0, "density": 0.5}, {}),
    # the subspace methods: an SVD per matrix and task vector (not in the default run: hours on 2 CPU cores)
    "tsv": ("tsv", {"weight": 1.0}, {}),
    "iso_c": ("iso_c", {"weight": 1.0}, {}),
    "iso_cts": ("iso_cts", {"weight": 1.0}, {}),
}
DEFAULT_METHODS = "linear,task_arithmetic,ties,dare_ties"


def shapes(size: str) -> dict[str, tuple[int, ...]]:
    h, inter, layers, heads, kv, vocab = SIZES[size]
    kv_dim = h // heads * kv
    out = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({f"{p}self_attn.q_proj.weight": (h, h), f"{p}self_attn.k_proj.weight": (kv_dim, h),
                    f"{p}self_attn.v_proj.weight": (kv_dim, h), f"{p}self_attn.o_proj.weight": (h, h),
                    f"{p}mlp.gate_proj.weight": (inter, h), f"{p}mlp.up_proj.weight": (inter, h),
                    f"{p}mlp.down_proj.weight": (h, inter), f"{p}input_layernorm.weight": (h,),
                    f"{p}post_attention_layernorm.weight": (h,)})
    out.update({"model.norm.weight": (h,), "lm_head.weight": (vocab, h)})
    return out


def generate(size: str, folder: Path, seed: int, shard_bytes: int = 1_000_000_000) -> None:
    """Child-process entry: one checkpoint. seed 0 is the base; others are base + ~1e-3 relative deltas."""
    import torch
    from safetensors.torch import save_file

    h, inter, layers, heads, kv, vocab = SIZES[size]
    folder.mkdir(parents=True)
    shards, current, used = [], {}, 0
    for n, (name, shape) in enumerate(shapes(size).items()):
        g = torch.Generator().manual_seed(n)
        t = torch.randn(shape, generator=g) * 0.02
        if seed:
            g2 = torch.Generator().manual_seed(seed * 100_003 + n)
            t += torch.randn(shape, generator=g2) * 2e-5
        t = t.to(torch.bfloat16)
        if current and used + t.numel() * 2 > shard_bytes:
            shards.append(current)
            current, used = {}, 0
        current[name] = t
        used += t.numel() * 2
    shards.append(current)
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, folder / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
        total += sum(v.numel() * 2 for v in part.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"}))


def io_floor(inputs: list[Path], out: Path) -> None:
    """Child-process entry: read every input tensor once, write one output of the base's size, fsync it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    base_shards = sorted(inputs[0].glob("*.safetensors"))
    others = [{n: f for f in sorted(p.glob("*.safetensors")) for n in safe_open(f, "pt").keys()} for p in inputs[1:]]
    handles: dict[Path, object] = {}
    for shard in base_shards:
        tensors = {}
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
                for index in others:
                    src = index[name]
                    if src not in handles:
                        handles[src] = safe_open(src, "pt")
                    handles[src].get_tensor(name)
        save_file(tensors, out / shard.name, metadata={"format": "pt"})
        with open(out / shard.name, "rb+") as fh:
            os.fsync(fh.fileno())


def run_child(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def recipe(method: str, base: Path, fts: list[Path]) -> str:
    name, model_params, params = METHODS[method]
    lines = [f"merge_method: {name}"] + ([f"base_model: {base}"] if name != "linear" else []) + ["dtype: bfloat16",
                                                                                                 "models:"]
    for ft in fts:
        lines += [f"  - model: {ft}", f"    parameters: {json.dumps(model_params)}"]
    if params:
        lines.append(f"parameters: {json.dumps(params)}")
    return "\n".join(lines) + "\n"


def measure(name: str, make_cmd, out: Path, repeats: int, cold: bool) -> dict:
    """Each run starts after the previous output is deleted and every dirty page is on disk (sync): otherwise the
    kernel's write-back of one run's 2 GB lands in the next run's time (it made the floor vary 3-14 s)."""
    runs, cold_runs = [], []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        runs.append(run_child(make_cmd()))
    if cold:
        shutil.rmtree(out, ignore_errors=True)
        if drop_caches():
            cold_runs.append(run_child(make_cmd()))
    shutil.rmtree(out, ignore_errors=True)
    secs = [r["seconds"] for r in runs]
    row = {"name": name, "seconds_median": statistics.median(secs), "seconds_min": min(secs), "seconds_max": max(secs),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}
    if cold_runs:
        row["cold_seconds"] = cold_runs[0]["seconds"]
    print(f"  {name:28s} {row['seconds_median']:7.2f} s (min {row['seconds_min']:.2f}, max {row['seconds_max']:.2f})"
          f"  peak RSS {row['peak_rss_mb']:6.0f} MB" + (f"  cold {row['cold_seconds']:.2f} s" if cold_runs else ""),
          flush=True)
    return row


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child-generate":
        return generate(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    if len(sys.argv) >= 2 and sys.argv[1] == "--child-floor":
        return io_floor([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,tinyllama")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "perf")
    ap.add_argument("--with-mergekit", action="store_true")
    ap.add_argument("--mergekit-venv", type=Path, default=ROOT / ".cache" / "mergekit-venv")
    ap.add_argument("--mergekit-repeats", type=int, default=None, help="default: --repeats")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"any of {', '.join(METHODS)}")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the result files, e.g. -cuda")
    args = ap.parse_args()
    mergekit = ensure_mergekit(args.mergekit_venv) if args.with_mergekit else None
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
               "device": args.device, "repeats": args.repeats, "sizes": {}}
    for size in args.sizes.split(","):
        work = args.workdir / size
        names = ["base", "ft1", "ft2", "ft3"]
        for seed, name in enumerate(names):
            if not (work / name / "config.json").exists():
                shutil.rmtree(work / name, ignore_errors=True)
                print(f"generating {size}/{name} ...", flush=True)
                subprocess.run([sys.executable, __file__, "--child-generate", size, str(work / name), str(seed)],
                               check=True)
        paths = [work / n for n in names]
        params = sum(int(__import__("math").prod(s)) for s in shapes(size).values())
        input_gb = sum(f.stat().st_size for p in paths for f in p.glob("*.safetensors")) / 1e9
        print(f"\n{size}: {params / 1e6:.0f}M parameters, bf16, {input_gb:.2f} GB read per merge", flush=True)
        cold = not args.no_cold
        rows = [measure("I/O floor", lambda: [sys.executable, __file__, "--child-floor", str(work / "out")]
                        + [str(p) for p in paths], work / "out", args.repeats, cold)]
        floor = rows[0]["seconds_median"]
        for method in args.methods.split(","):
            (work / f"{method}.yaml").write_text(recipe(method, paths[0], paths[1:]))
            cmd = [sys.executable, "-m", "taskvec.cli", "merge", str(work / f"{method}.yaml"), "--out", str(work / "out"),
                   "-q", "--device", args.device] + (["--workers", str(args.workers)] if args.workers else [])
            row = measure(f"taskvec {method}", lambda: cmd, work / "out", args.repeats, cold)
            row.update(method=method, tool="taskvec", vs_floor=row["seconds_median"] / floor)
            rows.append(row)
            if mergekit:
                mk_cmd = [str(mergekit), str(work / f"{method}.yaml"), str(work / "out"), "--quiet"]
                if args.device != "cpu":
                    mk_cmd += ["--device", args.device]
                mk = measure(f"mergekit {method}", lambda: mk_cmd, work / "out", args.mergekit_repeats or args.repeats,
                             False)
                mk.update(method=method, tool="mergekit", vs_floor=mk["seconds_median"] / floor)
                rows.append(mk)
                row["speedup_vs_mergekit"] = mk["seconds_median"] / row["seconds_median"]
                row["rss_vs_mergekit"] = row["peak_rss_mb"] / mk["peak_rss_mb"]
        results["sizes"][size] = {"parameters": params, "input_gb": round(input_gb, 3), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"perf{args.tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = report(results)
    (RESULTS / f"perf{args.tag}.md").write_text(md)
    print("\n" + md)
    plot(results, RESULTS / f"perf{args.tag}.png")


def report(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpus']} CPUs, {m['memory_gb']} GB RAM, {m['platform']}; device {results['device']}; "
             f"median of {results['repeats']} warm-cache runs (min-max); peak RSS is the max over runs.", ""]
    for size, r in results["sizes"].items():
        lines += [f"### {size}: {r['parameters'] / 1e6:.0f}M parameters, bf16, {r['input_gb']:.2f} GB read per merge", "",
                  "| run | wall s (min-max) | cold s | x I/O floor | peak RSS MB | x faster than mergekit | RSS / mergekit |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(
                f"| {row['name']} | {row['seconds_median']:.2f} ({row['seconds_min']:.2f}-{row['seconds_max']:.2f}) | "
                f"{row.get('cold_seconds', float('nan')):.2f} | {row.get('vs_floor', 1.0):.2f} | {row['peak_rss_mb']:.0f} | "
                f"{row.get('speedup_vs_mergekit', float('nan')):.1f} | {row.get('rss_vs_mergekit', float('nan')):.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    sizes = list(results["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rows = results["sizes"][size]["rows"]
        labels = [r["name"].replace("taskvec ", "tv ").replace("mergekit ", "mk ") for r in rows]
        colors = ["grey" if r["name"] == "I/O floor" else ("tab:blue" if r.get("tool") == "taskvec" else "tab:orange")
                  for r in rows]
        ax.barh(labels, [r["seconds_median"] for r in rows], color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("wall seconds (median, warm cache)")
        ax.set_title(f"{size}: {results['sizes'][size]['parameters'] / 1e6:.0f}M params, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
