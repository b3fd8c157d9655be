"""Peak memory of `taskvec inspect` over a base and three ~540 MB LLaMA-shaped float32 fine-tunes.

Reuses memory.py's checkpoint generator (run in its own child) and its wait4-based peak RSS of a child process.
Inspect reads the inputs three times (two counting passes for the exact top-k% thresholds, one for the sums) and
writes a report folder with plots. Target: under 1 GB, independent of model size.
Run: python benchmarks/inspect_memory.py [--workdir DIR] [--repeats 1]; writes benchmarks/results/inspect_memory.json.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory  # noqa: E402  (benchmarks/memory.py: generate, peak_rss; imports no torch)

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("base", "ft1", "ft2", "ft3")


def cached(work: Path) -> bool:
    return all((work / f / "model.safetensors.index.json").is_file() for f in FOLDERS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench-inspect-memory",
                    help="where the checkpoints are generated once and kept")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inspect_memory.json")
    args = ap.parse_args()
    work = args.workdir
    if not cached(work):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"writing checkpoints under {work} ...", flush=True)
        subprocess.run([sys.executable, memory.__file__, "--generate", str(work)], check=True)
    size = json.loads((work / "base" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    report = work / "report"
    cmd = [sys.executable, "-m", "taskvec.cli", "inspect", *(str(work / f) for f in FOLDERS[1:]),
           "--base", str(work / "base"), "--out", str(report), "--force", "-q"]
    baseline, _ = memory.peak_rss([sys.executable, "-c", "import taskvec.cli, taskvec.inspect.scan"])
    runs = [memory.peak_rss(cmd) for _ in range(args.repeats)]
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    summary = json.loads((report / "report.json").read_text())
    result = {
        "benchmark": "peak RSS of taskvec inspect over 3 fine-tunes + base, with --out (JSON, PNGs, HTML)",
        "command": " ".join(["python"] + cmd[1:]).replace(str(work), "$WORK"),
        "checkpoint_mb": round(size / 1e6, 1), "inputs_mb": round(4 * size / 1e6, 1),
        "parameters_per_vector": summary["tensors"]["parameters"],
        "import_baseline_rss_mb": round(baseline, 1), "target_mb": 1000,
        "runs": [{"peak_rss_mb": round(m, 1), "seconds": round(s, 2)} for m, s in runs],
        "peak_rss_mb_max": round(max(m for m, _ in runs), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch_version},
        "page_cache": "warm (checkpoints read before)" if args.repeats > 1 else "as left by the generator or a previous run",
    }
    result["pass"] = result["peak_rss_mb_max"] < result["target_mb"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['command']}\ncheckpoint {result['checkpoint_mb']} MB each, {result['inputs_mb']} MB of inputs; "
          f"import alone {baseline:.0f} MB RSS\n")
    print("| run | peak RSS | wall s |\n|---|---|---|")
    for i, r in enumerate(result["runs"], 1):
        print(f"| {i} | {r['peak_rss_mb']:.0f} MB | {r['seconds']:.1f} |")
    print(f"\ntarget < 1000 MB: {'PASS' if result['pass'] else 'MISS'}; wrote {args.out}")


if __name__ == "__main__":
    main()
