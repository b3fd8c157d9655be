"""Analogy on SmolLM2, in the form that worked in the task arithmetic paper (Ilharco et al. 2023, sentiment on a new
domain): a skill for a domain with no labels, from labels of another domain and unlabelled text of both.

    τ_task(target) ≈ τ_task(source) + (τ_LM(target) − τ_LM(source))

τ_task: SmolLM2 trained to answer a label as a chat reply; τ_LM(domain): continued pre-training on unlabelled text of
the domain. Scored by label accuracy (the label whose first token is the most likely reply wins). Two settings:
- `analogy` (the main one): the topic of a chat message (computers, food, literature, money, politics, science)
  in Italian, from English labels. The chatterbot files are line-by-line translations, so the two LM vectors are
  trained on largely the same content in two languages -- the chat vector's training lines plus the topics'
  training messages without their labels (unlabelled text of the domain, as in the paper) -- and their difference
  is the language;
- `analogy_tweets`: tweet sentiment on Apple tweets from airline labels (the paper's kind of domain shift).
Each run first measures the gap (the source-trained model on the target domain against an oracle trained on target
labels; it must be ≥ 5 points for the experiment to mean anything), then the share of it the analogy closes at λ = 1
(no target labels used), next to a noise control: the same recipe with the difference of two source-domain LM
vectors from different training seeds (the same text). A λ sweep on the target's validation split is shown for
information only: choosing λ with it would use target labels.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

import lm_data
from lm_eval import LMScorer
from lm_train import LMTraining, train
from merging import merged

SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0)  # λ = 0 is the source model; λ = 1 is also the verdict's row
SMOKE_SWEEP = (0.0, 1.0)
MIN_GAP = 0.05
GOAL = 0.30
NOISE_SEED = 1000  # added to the seed of the second source LM vector


@dataclass(frozen=True)
class Setting:
    """One analogy: labelled rows {domain: {split: [(prompt, label)]}} and unlabelled text {domain: [str]} for the
    source and the target domain, with the names every model, row and report line uses."""
    part: str
    source: str
    target: str
    labels: tuple[str, ...]
    labelled: dict
    lm_text: dict
    lm_names: dict  # {domain: name of its LM fine-tune}; the same name and text share the cached model
    task_names: dict  # {domain: name of its labelled fine-tune}


# ---- the two settings ----------------------------------------------------------------------------------------------

TOPICS = ("computers", "food", "literature", "money", "politics", "science")
TOPIC_SPLIT = {"train": 0.5, "val": 0.15}  # of each topic's conversations; the rest is the test split


def topic_prompt(message: str) -> str:
    return f"Which topic is this chat message about? Answer {', '.join(TOPICS[:-1])} or {TOPICS[-1]}.\n\n{message}"


def conversation_splits(topic: str, n: int) -> list[str]:
    """The split of each of a topic's n conversations: a fixed shuffle cut at TOPIC_SPLIT's shares."""
    order = random.Random(f"lm-analogy-topics:{topic}").sample(range(n), n)
    cut = {"train": round(n * TOPIC_SPLIT["train"]), "val": round(n * (TOPIC_SPLIT["train"] + TOPIC_SPLIT["val"]))}
    splits = [""] * n
    for rank, i in enumerate(order):
        splits[i] = "train" if rank < cut["train"] else "val" if rank < cut["val"] else "test"
    return splits


def topic_rows() -> dict[str, dict[str, list[tuple[str, str]]]]:
    """{language: {split: [(message, topic)]}}: each topic's conversations split into train, validation and test
    the same way in both languages. An evaluated message is dropped if it or its translation (the line at the same
    place in the other file) is trained on -- chatterbot repeats a prompt across conversations -- and so is a
    message that occurs in two topics."""
    convs = {lang: lm_data.conversations(lang) for lang in ("english", "italian")}
    placed = []  # (split, topic, {language: message}) for each line of the parallel files
    for topic in TOPICS:
        en, it = convs["english"][topic], convs["italian"][topic]
        if [len(c) for c in en] != [len(c) for c in it]:
            raise ValueError(f"chatterbot {topic}: the English and Italian files differ in their conversations; the "
                             "split needs them to be line-by-line translations")
        for i, split in enumerate(conversation_splits(topic, len(en))):
            placed += [(split, topic, {"english": a, "italian": b}) for a, b in zip(en[i], it[i]) if a and b]
    topics_of, trained = {}, {lang: set() for lang in convs}
    for split, topic, lines in placed:
        for lang, u in lines.items():
            topics_of.setdefault((lang, u), set()).add(topic)
            if split == "train":
                trained[lang].add(u)
    rows = {lang: {"train": [], "val": [], "test": []} for lang in convs}
    for split, topic, lines in placed:
        if split != "train" and any(u in trained[lang] for lang, u in lines.items()):
            continue
        for lang, u in lines.items():
            if len(topics_of[lang, u]) == 1:
                rows[lang][split].append((u, topic))
    return {lang: {split: list(dict.fromkeys(r)) for split, r in splits.items()} for lang, splits in rows.items()}


def language_setting(smoke: bool) -> Setting:
    n = 4 if smoke else None
    rows = topic_rows()
    labelled = {lang: {split: [(topic_prompt(u), t) for u, t in r[:n]] for split, r in rows[lang].items()}
                for lang in rows}
    chat_lines = {"italian": lm_data.training_lines("italian"),
                  "english": lm_data.parallel_training_lines("english", "italian")}
    lm_text = {lang: (lines[:24] if smoke else lines) + [u for u, _ in rows[lang]["train"][:n]]
               for lang, lines in chat_lines.items()}
    return Setting("analogy", "english", "italian", TOPICS, labelled, lm_text,
                   {"english": "lm-en-topics", "italian": "lm-it-topics"},
                   {"english": "topics-en", "italian": "topics-it"})


TWEET_SIZES = {"airline": {"train": 300, "val": 40, "test": 40}, "apple": {"train": 60, "val": 25, "test": 80}}
TWEET_LM_TEXTS = 1200


def tweet_prompt(tweet: str) -> str:
    return f"What is the sentiment of this tweet? Answer negative, neutral or positive.\n\n{tweet}"


def tweet_setting(smoke: bool) -> Setting:
    sizes = {t: {s: min(n, 4) for s, n in v.items()} for t, v in TWEET_SIZES.items()} if smoke else TWEET_SIZES
    splits = lm_data.sentiment_splits(sizes, 16 if smoke else TWEET_LM_TEXTS)
    labelled = {t: {s: [(tweet_prompt(text), label) for text, label in rows] for s, rows in v.items() if s != "lm"}
                for t, v in splits.items()}
    return Setting("analogy_tweets", "airline", "apple", lm_data.SENTIMENTS, labelled,
                   {t: v["lm"] for t, v in splits.items()}, {"airline": "lm-airline", "apple": "lm-apple"},
                   {"airline": "sentiment-airline", "apple": "sentiment-apple"})


SETTINGS = {"analogy": language_setting, "analogy_tweets": tweet_setting}


# ---- the experiment ------------------------------------------------------------------------------------------------

def analogy_recipe(base: Path, task: Path, plus: Path, minus: Path, lam: float) -> str:
    return yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                           "models": [{"model": str(task), "parameters": {"weight": 1.0}},
                                      {"model": str(plus), "parameters": {"weight": lam}},
                                      {"model": str(minus), "parameters": {"weight": -lam}}]}, sort_keys=False)


def run(base: Path, cache: Path, seed: int, training: LMTraining, setting: Setting, smoke: bool, log=print) -> dict:
    s = setting
    scorer = LMScorer(cache, log)
    m = {"source": train(base, s.labelled[s.source]["train"], s.task_names[s.source], seed, training, cache, log),
         "oracle": train(base, s.labelled[s.target]["train"], s.task_names[s.target], seed, training, cache, log),
         "lm_source": train(base, s.lm_text[s.source], s.lm_names[s.source], seed, training, cache, log),
         "lm_target": train(base, s.lm_text[s.target], s.lm_names[s.target], seed, training, cache, log),
         "lm_source_2": train(base, s.lm_text[s.source], s.lm_names[s.source], seed + NOISE_SEED, training, cache,
                              log)}

    def accuracy(folder: Path, domain: str, split: str = "test") -> float:
        return scorer.label_accuracy(folder, s.labelled[domain][split], s.labels)

    def scores(folder: Path) -> dict:
        return {"target": accuracy(folder, s.target), "source": accuracy(folder, s.source)}

    rows = {"base": scores(base), "source": scores(m["source"]), "oracle": scores(m["oracle"])}
    plus_of = {"analogy": m["lm_target"], "noise": m["lm_source_2"]}
    sweep = {role: [] for role in plus_of}
    for role, plus in plus_of.items():
        for lam in SMOKE_SWEEP if smoke else SWEEP:
            with merged(analogy_recipe(base, m["source"], plus, m["lm_source"], lam), cache / "merges") as f:
                sweep[role].append({"lambda": lam, "target_val": accuracy(f, s.target, "val")})
                if lam == 1.0:  # the row the verdict reads: no target labels chose this λ
                    rows[role] = scores(f)
    result = {"seed": seed, "source": s.source, "target": s.target, "labels": list(s.labels),
              "examples": {d: {split: len(r) for split, r in v.items()} for d, v in s.labelled.items()},
              "lm_texts": {d: len(t) for d, t in s.lm_text.items()}, "rows": rows,
              "sweep_val": sweep,
              "training": {k: json.loads((f / "training.json").read_text()) for k, f in m.items()}}
    result["verdict"] = verdict(rows)
    result["geometry"] = shift_geometry(base, m["source"], {role: (plus, m["lm_source"]) for role, plus in
                                                            plus_of.items()})
    return result


def shift_geometry(base: Path, task: Path, shifts: dict[str, tuple[Path, Path]]) -> dict:
    """How large each added shift (plus − minus, as task vectors) is next to τ_task: if the language shift is no
    larger than the noise shift, the LM vectors differ mostly by their training noise. One `taskvec inspect` pass
    gives every norm and cosine; the shifts' norms follow from them."""
    import taskvec

    folders = [task] + sorted({f for pair in shifts.values() for f in pair})
    report = taskvec.inspect_vectors(folders, base)
    norm = {f: v.l2_norm for f, v in zip(folders, report.vectors)}
    cos = {(p.a, p.b): p.cosine or 0.0 for p in report.pairs}
    label = {f: v.label for f, v in zip(folders, report.vectors)}

    def dot(x: Path, y: Path) -> float:
        if x == y:
            return norm[x] ** 2
        c = cos.get((label[x], label[y]), cos.get((label[y], label[x])))
        return c * norm[x] * norm[y]

    out = {"task_norm": norm[task]}
    for role, (plus, minus) in shifts.items():
        size = max(dot(plus, plus) + dot(minus, minus) - 2 * dot(plus, minus), 0.0) ** 0.5
        out[role] = {"norm": size, "norm_vs_task": size / norm[task],
                     "lm_vector_cosine": dot(plus, minus) / (norm[plus] * norm[minus])}
    return out


def verdict(rows: dict) -> dict:
    source = rows["source"]["target"]
    gap = rows["oracle"]["target"] - source
    closed = (rows["analogy"]["target"] - source) / gap if gap > 0 else None
    return {"gap": gap, "gap_is_real": gap >= MIN_GAP, "closed": closed,
            "noise_closed": (rows["noise"]["target"] - source) / gap if gap > 0 else None,
            "met": bool(gap >= MIN_GAP and closed is not None and closed >= GOAL)}
