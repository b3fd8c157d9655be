"""The chat vector (Huang et al. 2024) on SmolLM2: a model that learned a new language by continued pre-training
gets its chat skill back by adding the task vector of a chat fine-tune made in English.

Roles (one training seed per run):
- base = SmolLM2-135M-Instruct;
- chat = base trained on English chatterbot prompt -> answer pairs in the chat template (loss on the answers);
- new language = base continually pre-trained on raw Italian chatterbot lines (no template): it learns the language
  and the corpus's style, and loses the chat format;
- candidate = new language + λ·τ_chat, λ picked by `taskvec tune` (a grid) on the validation categories' Italian
  answers;
- oracle = the new-language model trained on Italian pairs: what data in the language buys.
Whole categories are held out of every training set (lm_data.HELD_OUT for the test, VALIDATION for λ), so no test
answer was seen in either language. Controls: the chat model alone (base + τ_chat), and the new-language model plus
a random vector with τ_chat's per-tensor norms at the same λ.

Primary metric: NLL per token of the Italian test answers (end-of-turn token included). Also: English answers (what
the addition costs), and greedy replies to Italian prompts: the share in Italian and the share that ends with the
end-of-turn token within the budget. Transfer means the candidate beats both the new-language and the chat model on
the Italian answers and closes at least a quarter (`GOAL`) of the new-language model's gap to the oracle.
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

import lm_data
from lm_eval import LMScorer, reply_stats
from lm_train import LMTraining, random_like, train
from merging import merged

GRID_POINTS = 7  # λ in 0, 0.25, ..., 1.5
LAMBDA_RANGE = (0.0, 1.5)
GOAL = 0.25  # transfer: the candidate beats the new-language and the chat model and closes ≥ this share of the gap
REPLY_PROMPTS = 48  # Italian test prompts answered greedily by each model
REPLY_TOKENS = 40


def recipe(base: Path, new_language: Path, vector: Path, lam) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(new_language), "parameters": {"weight": 1.0}},
                       {"model": str(vector), "parameters": {"weight": lam}}]}


def models(base: Path, cache: Path, seed: int, training: LMTraining, smoke: bool, log) -> dict[str, Path]:
    """The fine-tunes this experiment (and the negation, which negates the new-language vector) rests on."""
    limit = 24 if smoke else None
    chat = train(base, lm_data.pairs("english", lm_data.training_categories("english"))[:limit], "chat-en", seed,
                 training, cache, log)
    new_language = new_language_model(base, cache, seed, training, smoke, log)
    oracle = train(new_language, lm_data.pairs("italian", lm_data.training_categories("italian"))[:limit],
                   "lm-it-chat-it", seed, training, cache, log)
    return {"chat": chat, "new_language": new_language, "oracle": oracle,
            "random": random_like(base, chat, seed, cache)}


def new_language_model(base: Path, cache: Path, seed: int, training: LMTraining, smoke: bool, log) -> Path:
    """Continued pre-training on the Italian lines of the training categories (raw text, no template)."""
    return train(base, lm_data.training_lines("italian")[:24 if smoke else None], "lm-it", seed, training, cache, log)


def tune_lambda(base: Path, m: dict[str, Path], tasks: Path, cache: Path, seed: int, log) -> dict:
    """`taskvec tune` over λ (a grid) on the validation answers; cached by the content of what it reads."""
    from encoder import code_hash, digest, file_hash, model_key

    key = digest("chat-vector-tune", model_key(base), model_key(m["new_language"]), model_key(m["chat"]),
                 file_hash(tasks), yaml.safe_load(tasks.read_text()), GRID_POINTS, LAMBDA_RANGE, seed,
                 code_hash(recipe, tune_lambda))
    folder = cache / "lm-tune" / f"chat-vector-{key}"
    trace = folder / "best.trace.json"
    if not trace.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        spec = recipe(base, m["new_language"], m["chat"], {"search": list(LAMBDA_RANGE)})
        (folder / "recipe.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        log(f"    taskvec tune --search grid --grid-points {GRID_POINTS} (λ of τ_chat) ...")
        subprocess.run([sys.executable, "-m", "taskvec.cli", "tune", str(folder / "recipe.yaml"), "--tasks",
                        str(tasks), "--out", str(folder / "best.yaml"), "--search", "grid", "--grid-points",
                        str(GRID_POINTS), "--seed", str(seed), "--force"], check=True, stdout=subprocess.DEVNULL)
    data = json.loads(trace.read_text())
    curve = sorted((next(iter(t["values"].values())), -t["scores"]["it-answers"]) for t in data["trials"])
    return {"lambda": next(iter(data["best"]["values"].values())), "val_curve": curve,
            "seconds": data["seconds"]}


def run(base: Path, cache: Path, seed: int, training: LMTraining, smoke: bool, log=print) -> dict:
    scorer = LMScorer(cache, log)
    m = models(base, cache, seed, training, smoke, log)
    n = 8 if smoke else None
    data = {"it-answers": scorer.pairs_file("it-test", lm_data.pairs("italian", lm_data.HELD_OUT)[:n]),
            "en-answers": scorer.pairs_file("en-test", lm_data.pairs("english", lm_data.HELD_OUT)[:n])}
    val = scorer.pairs_file("it-val", lm_data.pairs("italian", lm_data.VALIDATION)[:n])
    tasks = scorer.write_yaml("chat-vector-tasks", {"tasks": [
        {"name": "it-answers", "type": "language_modeling", "data": str(data["it-answers"]), "tune_data": str(val),
         "chat": True, "max_length": 128, "batch_size": 16}]})
    tuned = tune_lambda(base, m, tasks, cache, seed, log)
    lam = tuned["lambda"]
    prompts = [p for p, _ in lm_data.pairs("italian", lm_data.HELD_OUT)][:4 if smoke else REPLY_PROMPTS]

    def score(folder: Path) -> dict:
        out = scorer.nll(folder, data)
        replies = scorer.replies(folder, prompts, 8 if smoke else REPLY_TOKENS)
        return {**out, **reply_stats(replies, "italian"), "replies": [r["text"] for r in replies[:6]]}

    rows = {"base": score(base), "chat (base + τ_chat)": score(m["chat"]),
            "new language (base + τ_it)": score(m["new_language"]), "oracle (new language + Italian pairs)":
            score(m["oracle"])}
    for name, vector, weight in ((f"candidate: new language + {lam:g}·τ_chat", m["chat"], lam),
                                 ("new language + τ_chat (λ = 1, no tuning)", m["chat"], 1.0),
                                 (f"control: new language + {lam:g}·τ_random", m["random"], lam)):
        with merged(yaml.safe_dump(recipe(base, m["new_language"], vector, weight)), cache / "merges") as folder:
            rows[name] = score(folder)
    curves = {"τ_chat": [], "τ_random": []}
    for weight in [x for x, _ in tuned["val_curve"]][:2 if smoke else None]:  # the λ that taskvec tune tried
        for label, vector in (("τ_chat", m["chat"]), ("τ_random", m["random"])):
            with merged(yaml.safe_dump(recipe(base, m["new_language"], vector, weight)), cache / "merges") as folder:
                curves[label].append((weight, scorer.nll(folder, data)))
    return {"seed": seed, "lambda": lam, "tuning": tuned, "rows": rows, "test_curves": curves,
            "training": {k: json.loads((f / "training.json").read_text()) for k, f in m.items()
                         if (f / "training.json").is_file()},
            "verdict": verdict(rows, lam)}


def verdict(rows: dict, lam: float) -> dict:
    cand = rows[f"candidate: new language + {lam:g}·τ_chat"]["it-answers"]
    new, chat = rows["new language (base + τ_it)"]["it-answers"], rows["chat (base + τ_chat)"]["it-answers"]
    oracle = rows["oracle (new language + Italian pairs)"]["it-answers"]
    control = rows[f"control: new language + {lam:g}·τ_random"]["it-answers"]
    gap = new - oracle
    closed = (new - cand) / gap if gap > 0 else None
    return {"beats_new_language": cand < new, "beats_chat": cand < chat, "beats_random_control": cand < control,
            "gap_closed": closed, "oracle_gap_nll": gap,
            "met": bool(cand < new and cand < chat and closed is not None and closed >= GOAL)}
