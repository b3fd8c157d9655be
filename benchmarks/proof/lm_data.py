"""Text for the language-model proofs on SmolLM2: chatterbot conversations in English and Italian split by whole
categories, and tweets by topic for the analogy.

chatterbot's Italian files are line-by-line translations of the English ones. A model trained on the English lines
of a conversation has seen the content of its Italian lines, so no split below puts a category in training and in
evaluation: the test categories (`HELD_OUT`) and those λ is picked on (`VALIDATION`) are out of every training set,
in both languages. Both lists hold only categories whose two files have the same conversations, so the English
control of an Italian test line is its translation.
"""

import random
import re
from collections import Counter
from functools import lru_cache

from data import package_dir, tweets_by_sentiment

HELD_OUT = ("computers", "literature", "money", "politics", "science")  # 154 Italian pairs, scored once
VALIDATION = ("botprofile", "food", "gossip", "health", "history")  # 71 Italian pairs: λ is chosen on these


@lru_cache(maxsize=None)
def conversations(language: str) -> dict[str, list[list[str]]]:
    """Each category file's conversations, utterances with their white space normalised (read once per process;
    callers do not modify it)."""
    import yaml

    folder = package_dir("chatterbot_corpus") / "data" / language
    out = {}
    for f in sorted(folder.glob("*.yml")):
        data = yaml.load(f.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        out[f.stem] = [[" ".join(str(u).split()) for u in conv] for conv in data.get("conversations") or []]
    return out


def training_categories(language: str) -> list[str]:
    return [c for c in conversations(language) if c not in HELD_OUT + VALIDATION]


MAX_PAIR_CHARS = 400  # longer pairs (13 English code listings of `coding`) are left out: they would not fit 256 tokens


def pairs(language: str, categories) -> list[tuple[str, str]]:
    """(prompt, response) for each consecutive pair of utterances, each pair once, in file order."""
    convs = conversations(language)
    out = [(a, b) for c in categories for conv in convs.get(c, []) for a, b in zip(conv, conv[1:])
           if a and b and len(a) + len(b) <= MAX_PAIR_CHARS]
    return list(dict.fromkeys(out))


def lines(language: str, categories) -> list[str]:
    """Every utterance once (raw text, no chat template), in file order."""
    convs = conversations(language)
    return list(dict.fromkeys(u for c in categories for conv in convs.get(c, []) for u in conv if u))


def training_lines(language: str) -> list[str]:
    """The utterances of the training categories, without any that also occurs in an evaluation category."""
    held = set(lines(language, HELD_OUT + VALIDATION))
    return [u for u in lines(language, training_categories(language)) if u not in held]


def parallel_training_lines(language: str, like: str) -> list[str]:
    """`language`'s utterances of `like`'s training categories, per category as many as `like` has there (in file
    order). The files are translations, so this is largely the content of training_lines(like) in another language:
    English has whole categories and 500 trivia lines that Italian lacks."""
    held = {lang: set(lines(lang, HELD_OUT + VALIDATION)) for lang in (language, like)}
    out = []
    for category in training_categories(like):
        count = sum(u not in held[like] for u in lines(like, [category]))
        out += [u for u in lines(language, [category]) if u not in held[language]][:count]
    return list(dict.fromkeys(out))


# ---- tweets by topic (the analogy) ----------------------------------------------------------------------------------

TOPICS = {  # keyword rules; a tweet matching two topics is dropped
    "airline": r"@(united|americanair|usairways|southwestair|jetblue|virginamerica)\b|\bflights?\b",
    "apple": r"\b(apple|iphone|ipad|itunes|ios|macbook)\b",
}
SENTIMENTS = ("negative", "neutral", "positive")
MOJIBAKE = re.compile(r"[_\x80-\xff]*[\x80-\x9f][_\x80-\xff]*")  # emoji bytes the CSV's latin-1 mangled


def clean_tweet(text: str) -> str:
    """The tweet without its mangled emoji: one of them is 4-7 tokens of noise, and a row of them made a 166-character
    tweet 208 tokens long."""
    return " ".join(MOJIBAKE.sub(" ", text).split())


def tweets_by_topic() -> dict[str, dict[str, list[str]]]:
    """{topic: {sentiment: tweets}} from the confident tweets (data.tweets_by_sentiment), cleaned."""
    by_sentiment = tweets_by_sentiment()
    out = {t: {s: [] for s in SENTIMENTS} for t in TOPICS}
    for sentiment, texts in by_sentiment.items():
        for text in filter(None, map(clean_tweet, texts)):
            hits = [t for t, pattern in TOPICS.items() if re.search(pattern, text, re.I)]
            if len(hits) == 1:
                out[hits[0]][sentiment].append(text)
    return out


def sentiment_splits(sizes: dict[str, dict[str, int]], lm_texts: int) -> dict:
    """Per topic: labelled splits, balanced over the three sentiments ({split: [(text, label)]}, `sizes[topic]`
    per class), and `lm` -- `lm_texts` unlabelled tweets of the topic that no labelled evaluation split holds (the
    language-model data of the analogy). Fixed seed: the same split for every training seed."""
    out = {}
    for topic, by_label in tweets_by_topic().items():
        rng = random.Random(f"lm-analogy:{topic}")
        shuffled = {s: rng.sample(v, len(v)) for s, v in by_label.items()}
        splits, taken = {}, Counter()
        for split, per_class in sizes[topic].items():
            rows = []
            for s in SENTIMENTS:
                if taken[s] + per_class > len(shuffled[s]):
                    raise ValueError(f"{topic}: {per_class} {s} tweets for {split} but only "
                                     f"{len(shuffled[s]) - taken[s]} left")
                rows += [(t, s) for t in shuffled[s][taken[s]:taken[s] + per_class]]
                taken[s] += per_class
            splits[split] = rng.sample(rows, len(rows))
        evaluated = {t for split, rows in splits.items() if split != "train" for t, _ in rows}
        pool = [t for s in SENTIMENTS for t in shuffled[s] if t not in evaluated]
        splits["lm"] = rng.sample(pool, min(lm_texts, len(pool)))
        out[topic] = splits
    return out
