"""Analogy, the mission's synthetic-to-real experiment in text: A : B = C : D.

Target task: tweet sentiment, of which only "synthetic" training text exists (`data.synthetic`: a fixed rewrite that
mimics machine-made text). General task: BBC topic, with both synthetic and real text. Then
    D = C + lambda * (B - A) = theta + tau_C + lambda * (tau_general_real - tau_general_synthetic)
should move the synthetic-only target model towards real text. Scored on real tweets (test split) with the target
model's own head, against the synthetic-only model C and the oracle trained on real tweets. lambda = 1 is the pure
analogy and needs no target data; the sweep over lambda on real *validation* tweets is shown for information only,
because picking lambda with it would use real target data.
"""

from pathlib import Path

from safetensors.torch import load_file

from data import bbc_topic, synthetic_task, tweet_sentiment
from encoder import Budget, Evaluator, finetune, train_probe

SWEEP = (0.5, 1.0, 1.5, 2.0)


def analogy_recipe(base: Path, c: Path, b: Path, a: Path, lam: float) -> str:
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"  - model: {c}\n    parameters: {{weight: 1.0}}\n"
            f"  - model: {b}\n    parameters: {{weight: {lam}}}\n"
            f"  - model: {a}\n    parameters: {{weight: {-lam}}}\n")


def run(base: Path, cache: Path, budget: Budget, smoke: bool) -> dict:
    cache = cache / "analogy"
    general, target = bbc_topic(), tweet_sentiment()
    if smoke:
        general, target = general.subset(64, 24), target.subset(64, 24)
    tasks = {"general-real": general, "general-synthetic": synthetic_task(general),
             "target-synthetic": synthetic_task(target), "target-real": target}
    models = {}
    for name, task in tasks.items():
        probe = train_probe(base, task, budget, cache)
        models[name] = finetune(base, task, probe, 0, budget, cache / f"ft-{name}")
    head = load_file(models["target-synthetic"] / "head.safetensors")
    oracle_head = load_file(models["target-real"] / "head.safetensors")
    real, synth = tasks["target-real"], tasks["target-synthetic"]
    ev = Evaluator(budget, cache)

    def target_jobs(parts=("test",)):
        return [(real, head, p, f"real/{p}") for p in parts] + [(synth, head, "test", "synthetic/test")]

    result = {"settings": {"steps": budget.steps, "sweep": list(SWEEP), "general": general.name,
                           "target": target.name, "test": len(real.test[0])},
              "base_with_target_head": ev.accuracies(base, target_jobs()),
              "synthetic_only": ev.accuracies(models["target-synthetic"], target_jobs(("val", "test"))),
              "oracle": ev.accuracies(models["target-real"], [(real, oracle_head, "test", "real/test/oracle")]),
              "sweep": []}
    sweep = SWEEP[1:2] if smoke else SWEEP
    for lam in sweep:
        text = analogy_recipe(base, models["target-synthetic"], models["general-real"], models["general-synthetic"], lam)
        scores = ev.merge_accuracies(text, target_jobs(("val", "test")), cache / "merges")
        result["sweep"].append({"lambda": lam, **scores})
    return result


def markdown(result: dict, out_dir: Path) -> str:
    s = result["settings"]
    pure = next(g for g in result["sweep"] if g["lambda"] == 1.0)
    syn, oracle = result["synthetic_only"], result["oracle"]["real/test/oracle"]
    gap = oracle - syn["real/test"]
    closed = (pure["real/test"] - syn["real/test"]) / gap if abs(gap) > 1e-9 else float("nan")
    lines = ["## Analogy: synthetic → real (A : B = C : D)", "",
             f"Target {s['target']}: only synthetic training text (C = fine-tuned on it). General {s['general']}: "
             f"A = fine-tuned on its synthetic text, B = on its real text. D = C + lambda·(B − A), all through "
             f"task_arithmetic. Real-tweet test accuracy ({s['test']} tweets) with C's head "
             f"(the oracle uses its own head):", "",
             "| model | real tweets (test) | synthetic tweets (test) |", "|---|---|---|",
             f"| base encoder + C's head | {result['base_with_target_head']['real/test']:.3f} | "
             f"{result['base_with_target_head']['synthetic/test']:.3f} |",
             f"| C: synthetic-only | {syn['real/test']:.3f} | {syn['synthetic/test']:.3f} |",
             f"| **D = C + (B − A)** (lambda 1, no target data) | **{pure['real/test']:.3f}** | "
             f"{pure['synthetic/test']:.3f} |",
             f"| oracle: trained on real tweets | {oracle:.3f} | – |", "",
             (f"The analogy closes {closed:.0%} of the gap between the synthetic-only model and the oracle "
              f"({pure['real/test'] - syn['real/test']:+.3f})." if closed > 0 else
              f"The analogy does not transfer here: real-tweet accuracy changes by "
              f"{pure['real/test'] - syn['real/test']:+.3f} against the synthetic-only model (the oracle is "
              f"{gap:+.3f} above it)."), "",
             "Sweep over lambda (information only: picking lambda on real validation tweets would use target data):", "",
             "| lambda | real val | real test | synthetic test |", "|---|---|---|---|"]
    lines += [f"| {g['lambda']} | {g['real/val']:.3f} | {g['real/test']:.3f} | {g['synthetic/test']:.3f} |"
              for g in result["sweep"]]
    return "\n".join(lines) + "\n"
