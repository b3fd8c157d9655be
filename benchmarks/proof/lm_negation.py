"""Negation on SmolLM2: forget Italian, keep English -- θ − λ·τ_it, τ_it from continued pre-training on Italian lines
(the chat vector experiment's new-language model).

The target is the Italian test lines' NLL per token; the control is the NLL of the same lines in English (chatterbot's
files are line-by-line translations, so the two differ in language only). Quality = exp(−NLL) = 1/perplexity; λ is
the largest on the grid whose control keeps ≥ 95% of the base's quality on the validation categories. Baselines at
every λ: a random vector with τ_it's per-tensor norms (moves the weights as far, in no direction), and the negated
vector of an unrelated fine-tune made the same way (continued pre-training on English BBC news). Goal: at the picked
λ, the target's NLL rises at least 3× as much as with the random vector.
"""

import json
import math
from pathlib import Path

import yaml

import lm_data
from data import bbc_texts
from lm_eval import LMScorer, reply_stats
from lm_train import LMTraining, random_like, train
from merging import merged

GRID = (0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)  # fine at the small end, where the English control can keep 95%
KEEP = 0.95
FACTOR = 3.0  # the goal: target moves ≥ 3× as much as with the random vector


def recipe(base: Path, vector: Path, lam: float) -> str:
    return yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                           "models": [{"model": str(vector), "parameters": {"weight": -lam}}]}, sort_keys=False)


def bbc_lines(limit: int) -> list[str]:
    """The first two sentences of BBC articles: English news text, unrelated to the chat corpus."""
    return [" ".join(t.split(". ")[:2])[:400] for t in bbc_texts()[0][:limit]]


def run(base: Path, cache: Path, seed: int, training: LMTraining, new_language: Path, smoke: bool, log=print) -> dict:
    scorer = LMScorer(cache, log)
    n = 8 if smoke else None
    unrelated = train(base, bbc_lines(24 if smoke else 900), "lm-bbc", seed, training, cache, log)
    vectors = {"τ_it": new_language, "τ_random": random_like(base, new_language, seed, cache),
               "τ_bbc (unrelated)": unrelated}
    data = {split: {"target": scorer.text_file(f"it-{split}", lm_data.lines("italian", cats)[:n]),
                    "control": scorer.text_file(f"en-{split}", lm_data.lines("english", cats)[:n])}
            for split, cats in (("val", lm_data.VALIDATION), ("test", lm_data.HELD_OUT))}
    prompts = [p for p, _ in lm_data.pairs("italian", lm_data.HELD_OUT)][:4 if smoke else 32]
    base_val = scorer.nll(base, data["val"])
    grid = GRID[1:3] if smoke else GRID
    curves = {name: [] for name in vectors}
    for name, vector in vectors.items():
        for lam in grid:
            with merged(recipe(base, vector, lam), cache / "merges") as folder:
                curves[name].append({"lambda": lam, "val": scorer.nll(folder, data["val"])})
    keeps = [p["lambda"] for p in curves["τ_it"]
             if math.exp(base_val["control"] - p["val"]["control"]) >= KEEP]
    lam = max(keeps) if keeps else None
    log(f"    λ picked on validation: {lam} (largest with the English control ≥ {KEEP:.0%} of the base's quality)")

    def score(folder: Path) -> dict:
        replies = scorer.replies(folder, prompts, 8 if smoke else 32)
        return {**scorer.nll(folder, data["test"]), **reply_stats(replies, "italian"),
                "replies": [r["text"] for r in replies[:4]]}

    rows = {"base": score(base), "new language (θ + τ_it)": score(new_language)}
    if lam is not None:
        for name, vector in vectors.items():
            with merged(recipe(base, vector, lam), cache / "merges") as folder:
                rows[f"θ − {lam:g}·{name}"] = score(folder)
    result = {"seed": seed, "lambda": lam, "keep": KEEP, "grid": list(grid), "base_val": base_val,
              "val_curves": curves, "rows": rows,
              "training": json.loads((unrelated / "training.json").read_text())}
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict) -> dict:
    lam, rows = result["lambda"], result["rows"]
    if lam is None:
        return {"met": False, "why": "no λ on the grid keeps the control"}
    base = rows["base"]

    def moved(name: str) -> float:
        return rows[f"θ − {lam:g}·{name}"]["target"] - base["target"]

    target, random_move = moved("τ_it"), moved("τ_random")
    ratio = None if target <= 0 else (target / random_move if random_move > 0 else math.inf)
    control_kept = math.exp(base["control"] - rows[f"θ − {lam:g}·τ_it"]["control"])
    return {"target_nll_rise": target, "random_nll_rise": random_move, "unrelated_nll_rise": moved("τ_bbc (unrelated)"),
            "ratio_to_random": ratio, "control_quality_kept_test": control_kept,
            "met": ratio is not None and ratio >= FACTOR}
