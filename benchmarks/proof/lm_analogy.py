"""Analogy on SmolLM2, in the form that worked in the task arithmetic paper (Ilharco et al. 2023, sentiment on a new
domain): a skill for a domain with no labels, from labels of another domain and unlabelled text of both.

    τ_target ≈ τ_sentiment(airline) + (τ_LM(apple) − τ_LM(airline))

τ_sentiment(airline): SmolLM2 trained to answer a tweet's sentiment (negative / neutral / positive, as a chat reply)
on airline tweets; τ_LM(domain): continued pre-training on unlabelled tweets of the domain. Scored on Apple tweets
(balanced test split, 240 tweets) by label accuracy: the label whose first token is the most likely reply wins.
- First the gap: the airline model on Apple tweets against an oracle trained on Apple labels; it must be ≥ 5 points
  for the experiment to mean anything (reported either way).
- Then the share of that gap the analogy closes (λ = 1, no target labels used), next to a noise control: the same
  recipe with the difference of two airline LM vectors from different training seeds (the same text).
The λ sweep on Apple validation tweets (the analogy and the noise control) is shown for information only: choosing λ
with it would use target labels.
"""

import json
from pathlib import Path

import yaml

from lm_data import SENTIMENTS, sentiment_splits
from lm_eval import LMScorer
from lm_train import LMTraining, train
from merging import merged

SIZES = {"airline": {"train": 300, "val": 40, "test": 40}, "apple": {"train": 60, "val": 25, "test": 80}}
LM_TEXTS = 1200
SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0)  # λ = 0 is the airline model
MIN_GAP = 0.05
GOAL = 0.30
NOISE_SEED = 1000  # added to the seed of the second airline LM vector


def prompt(tweet: str) -> str:
    return f"What is the sentiment of this tweet? Answer negative, neutral or positive.\n\n{tweet}"


def analogy_recipe(base: Path, task: Path, plus: Path, minus: Path, lam: float) -> str:
    return yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                           "models": [{"model": str(task), "parameters": {"weight": 1.0}},
                                      {"model": str(plus), "parameters": {"weight": lam}},
                                      {"model": str(minus), "parameters": {"weight": -lam}}]}, sort_keys=False)


def run(base: Path, cache: Path, seed: int, training: LMTraining, smoke: bool, log=print) -> dict:
    scorer = LMScorer(cache, log)
    sizes = {t: {s: min(n, 4) for s, n in v.items()} for t, v in SIZES.items()} if smoke else SIZES
    splits = sentiment_splits(sizes, 16 if smoke else LM_TEXTS)
    labelled = {t: {s: [(prompt(text), label) for text, label in rows] for s, rows in v.items() if s != "lm"}
                for t, v in splits.items()}
    m = {"source": train(base, labelled["airline"]["train"], "sentiment-airline", seed, training, cache, log),
         "oracle": train(base, labelled["apple"]["train"], "sentiment-apple", seed, training, cache, log),
         "lm_source": train(base, splits["airline"]["lm"], "lm-airline", seed, training, cache, log),
         "lm_target": train(base, splits["apple"]["lm"], "lm-apple", seed, training, cache, log),
         "lm_source_2": train(base, splits["airline"]["lm"], "lm-airline", seed + NOISE_SEED, training, cache, log)}

    def accuracy(folder: Path, topic: str, split: str = "test") -> float:
        return scorer.label_accuracy(folder, labelled[topic][split], SENTIMENTS)

    rows = {"base (zero-shot)": base, "airline sentiment model": m["source"], "oracle (Apple labels)": m["oracle"]}
    result_rows = {name: {"apple": accuracy(f, "apple"), "airline": accuracy(f, "airline")} for name, f in rows.items()}
    for name, plus, minus in (("analogy: τ_sent + τ_LM(apple) − τ_LM(airline)", m["lm_target"], m["lm_source"]),
                              ("noise control: τ_sent + τ_LM(airline, seed b) − τ_LM(airline)", m["lm_source_2"],
                               m["lm_source"])):
        with merged(analogy_recipe(base, m["source"], plus, minus, 1.0), cache / "merges") as folder:
            result_rows[name] = {"apple": accuracy(folder, "apple"), "airline": accuracy(folder, "airline")}
    sweep = {"analogy": [], "noise control": []}
    for lam in SWEEP[:2] if smoke else SWEEP:
        for name, plus in (("analogy", m["lm_target"]), ("noise control", m["lm_source_2"])):
            with merged(analogy_recipe(base, m["source"], plus, m["lm_source"], lam), cache / "merges") as f:
                sweep[name].append({"lambda": lam, "apple_val": accuracy(f, "apple", "val")})
    result = {"seed": seed, "sizes": sizes, "lm_texts": len(splits["apple"]["lm"]), "rows": result_rows,
              "sweep_val": sweep, "training": {k: json.loads((f / "training.json").read_text()) for k, f in m.items()}}
    result["verdict"] = verdict(result_rows)
    return result


def verdict(rows: dict) -> dict:
    source = rows["airline sentiment model"]["apple"]
    gap = rows["oracle (Apple labels)"]["apple"] - source
    analogy = rows["analogy: τ_sent + τ_LM(apple) − τ_LM(airline)"]["apple"]
    noise = rows["noise control: τ_sent + τ_LM(airline, seed b) − τ_LM(airline)"]["apple"]
    closed = (analogy - source) / gap if gap > 0 else None
    return {"gap": gap, "gap_is_real": gap >= MIN_GAP, "closed": closed,
            "noise_closed": (noise - source) / gap if gap > 0 else None,
            "met": bool(gap >= MIN_GAP and closed is not None and closed >= GOAL)}
