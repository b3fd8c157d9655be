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

from data import bbc_topic, synthetic_task, tweet_sentiment
from encoder import Training, finetune, train_probe
from merging import merged
from scoring import Scorer

SWEEP = (0.5, 1.0, 1.5, 2.0)


def analogy_recipe(base: Path, c: Path, b: Path, a: Path, lam: float) -> str:
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"  - model: {c}\n    parameters: {{weight: 1.0}}\n"
            f"  - model: {b}\n    parameters: {{weight: {lam}}}\n"
            f"  - model: {a}\n    parameters: {{weight: {-lam}}}\n")


def run(base: Path, cache: Path, training: Training, smoke: bool) -> dict:
    """Models are fine-tuned in the probe-first regime (seed 0); accuracies come from `taskvec.evaluate`."""
    general, target = bbc_topic(), tweet_sentiment()
    if smoke:
        general, target = general.subset(64, 24), target.subset(64, 24)
    tasks = {"general-real": general, "general-synthetic": synthetic_task(general),
             "target-synthetic": synthetic_task(target), "target-real": target}
    models = {}
    for name, task in tasks.items():
        probe = train_probe(base, task, training, cache)
        models[name] = finetune(base, task, "probe-first", 0, training, cache, probe).folder
    head, oracle_head = models["target-synthetic"] / "head.safetensors", models["target-real"] / "head.safetensors"
    real, synth = tasks["target-real"], tasks["target-synthetic"]
    sc = Scorer(cache)

    def target_jobs(parts=("test",)):
        jobs = [(real, p, head) for p in parts] + [(synth, "test", head)]
        return [f"real/{p}" for p in parts] + ["synthetic/test"], jobs

    def scores(model, parts=("test",), what=""):
        keys, jobs = target_jobs(parts)
        return dict(zip(keys, sc.accuracies(model, jobs, what=what)))

    result = {"settings": {"steps": training.steps, "regime": "probe-first", "sweep": list(SWEEP),
                           "general": general.name, "target": target.name, "test": len(real.test[0])},
              "base_with_target_head": scores(base, what="base with C's head"),
              "synthetic_only": scores(models["target-synthetic"], ("val", "test"), "C"),
              "oracle": {"real/test/oracle": sc.accuracies(models["target-real"], [(real, "test", oracle_head)],
                                                           what="oracle")[0]},
              "sweep": []}
    sweep = SWEEP[1:2] if smoke else SWEEP
    for lam in sweep:
        text = analogy_recipe(base, models["target-synthetic"], models["general-real"], models["general-synthetic"], lam)
        with merged(text, cache / "merges") as folder:
            result["sweep"].append({"lambda": lam, **scores(folder, ("val", "test"), f"D, lambda {lam}")})
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
