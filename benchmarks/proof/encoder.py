"""MiniLM with one linear head per task: a probe on frozen features, fine-tuning in two regimes, content keys.

Two regimes, side by side, because merges behave oppositely in them:
- **probe-first**: the head starts from the task's linear probe (a head trained on frozen base features), then encoder
  and head are fine-tuned together; the encoder moves only as far as the task needs.
- **strong**: the head starts random (seeded), with the same schedule; the encoder moves further and the gain over
  the probe is larger -- the hard case for merging.
Both: `Training.steps` steps of `batch` examples (shuffled epochs), AdamW, linear warm-up over the first `warmup`
share of the steps and linear decay to zero after it, for the encoder and the head alike.

Fine-tuned encoders are ordinary Hugging Face folders plus `head.safetensors`, so anyone can redo the merges by hand
with `taskvec merge`. Everything cached is found by a content key (`digest`): a probe by the base weights, the
task's training data, the probe settings and the source of the code that trains it; a fine-tune by those plus the
regime, the seed and the training settings. A changed setting, datum or line of training code trains anew; a folder's
name or age never decides anything.
"""

import hashlib
import inspect
import json
import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data import Task

REGIMES = {"probe-first": "head initialised from the linear probe, then encoder + head fine-tuned",
           "strong": "randomly initialised head (seeded), then encoder + head fine-tuned"}


@dataclass(frozen=True)
class Training:
    steps: int = 250  # fine-tuning steps per task
    batch: int = 16
    lr_encoder: float = 3e-5
    lr_head: float = 1e-3
    warmup: float = 0.1  # share of the steps with a linear warm-up; linear decay to 0 after it
    probe_examples: int = 1500  # train examples whose frozen features fit the probe head
    probe_steps: int = 400  # full-batch AdamW steps of the probe
    probe_lr: float = 1e-2
    feature_batch: int = 128

    def finetune_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("probe") and k != "feature_batch"}

    def probe_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k.startswith("probe")}


# ---- content keys ------------------------------------------------------------------------------------------------

def digest(*parts) -> str:
    """A short hex key of JSON-able parts."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def file_hash(path: Path, h=None) -> str:
    h = h or hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@lru_cache(maxsize=None)
def _model_key(folder: str, stamp: tuple) -> str:
    root = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".safetensors" and p.name != "head.safetensors")
    for name in names + [n for n in MODEL_FILES if (root / n).is_file()]:
        h.update(name.encode())
        file_hash(root / name, h)
    return h.hexdigest()


def model_key(folder: Path) -> str:
    """The content of a model folder as `taskvec eval` reads it: weights (every .safetensors but the head), config
    and tokenizer files. Memoized in this process only (by path, size and modification time)."""
    folder = Path(folder).resolve()
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    return _model_key(str(folder), stamp)


def weights_key(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        t = weights[name].detach().contiguous().cpu()
        h.update(f"{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def code_hash(*objects) -> str:
    """The source text of the functions and classes that decide a result."""
    return digest(*(inspect.getsource(o) for o in objects))


def library_versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


# ---- the encoder -------------------------------------------------------------------------------------------------

def load_encoder(folder):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)


def embed(model, tok, texts, max_len, grad=False):
    """Mean-pooled token states, as sentence-transformers pools all-MiniLM-L6-v2."""
    batch = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def features(model, tok, texts, max_len, batch=128) -> torch.Tensor:
    """Frozen features in the given order; batches are formed by length so little time goes into padding."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            ids = order[i:i + batch]
            out[ids] = embed(model, tok, [texts[j] for j in ids], max_len)
    return out


def save_head(head: torch.nn.Linear | dict, path: Path) -> None:
    state = head if isinstance(head, dict) else {"weight": head.weight, "bias": head.bias}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path)


# ---- the probe ---------------------------------------------------------------------------------------------------

def _fit_probe(x: torch.Tensor, labels: torch.Tensor, classes: int, training: Training) -> dict:
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=training.probe_lr, weight_decay=1e-4)
    for _ in range(training.probe_steps):
        loss = torch.nn.functional.cross_entropy(head(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"weight": head.weight.detach(), "bias": head.bias.detach()}


def probe_key(base: Path, task: Task, training: Training) -> str:
    return digest("probe", model_key(base), task.content_hash(("train",)), training.probe_settings(),
                  code_hash(embed, features, _fit_probe, train_probe), library_versions())


def train_probe(base: Path, task: Task, training: Training, cache: Path) -> Path:
    """A linear head on frozen base features (the base encoder's best use of the task without changing it); the
    path of its safetensors file (weight, bias), named by its content key."""
    key = probe_key(base, task, training)
    path = cache / "probes" / f"{task.name}-{key}.safetensors"
    if path.is_file():
        return path
    tok, model = load_encoder(base)
    n = training.probe_examples
    x = features(model, tok, task.train[0][:n], task.max_len, training.feature_batch)
    state = _fit_probe(x, torch.tensor(task.train[1][:n]), len(task.classes), training)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_head(state, tmp)
    tmp.replace(path)
    return path


# ---- fine-tuning -------------------------------------------------------------------------------------------------

def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` share of the steps, then linear decay to zero."""
    w = max(1, round(warmup * steps))
    return (step + 1) / w if step < w else max(0.0, (steps - step) / max(1, steps - w))


@dataclass
class FineTuned:
    task: str
    regime: str
    seed: int
    folder: Path
    key: str
    probe: Path  # the task's probe head (the baseline), whatever the regime

    @property
    def head(self) -> Path:
        return self.folder / "head.safetensors"


def finetune_key(base: Path, task: Task, regime: str, seed: int, training: Training, probe: Path) -> str:
    return digest("finetune", model_key(base), task.content_hash(("train",)), regime, seed,
                  training.finetune_settings(), file_hash(probe) if regime == "probe-first" else None,
                  code_hash(embed, lr_factor, _train), library_versions())


def finetune(base: Path, task: Task, regime: str, seed: int, training: Training, cache: Path, probe: Path,
             log=print) -> FineTuned:
    """Encoder and head trained together (see REGIMES); saved as a Hugging Face folder plus head.safetensors and
    training.json, named by its content key and reused whenever the key matches."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    key = finetune_key(base, task, regime, seed, training, probe)
    folder = cache / "models" / f"{task.name}-{regime}-s{seed}-{key}"
    if not (folder / "training.json").is_file():
        _train(base, task, regime, seed, training, probe, folder, key, log)
    return FineTuned(task.name, regime, seed, folder, key, probe)


def _train(base, task: Task, regime: str, seed: int, training: Training, probe: Path, folder: Path, key: str,
           log) -> None:
    torch.manual_seed(seed)
    tok, model = load_encoder(base)
    head = torch.nn.Linear(model.config.hidden_size, len(task.classes))  # seeded random init (strong)
    if regime == "probe-first":
        head.load_state_dict(load_file(probe))
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": training.lr_encoder},
                             {"params": head.parameters(), "lr": training.lr_head}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, training.steps, training.warmup))
    texts, labels = task.train[0], torch.tensor(task.train[1])
    rng = random.Random(f"{seed}:{task.name}")
    order: list[int] = []
    model.train()
    start, losses = time.time(), []
    for step in range(training.steps):
        if len(order) < training.batch:  # shuffled epochs; a short tail joins the next epoch
            perm = list(range(len(texts)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:training.batch], order[training.batch:]
        logits = head(embed(model, tok, [texts[i] for i in idx], task.max_len, grad=True))
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == training.steps:
            log(f"    fine-tune {task.name} ({regime}, seed {seed}): step {step + 1}/{training.steps}, "
                f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f} ({time.time() - start:.0f} s)")
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_head(head, tmp / "head.safetensors")
    (tmp / "training.json").write_text(json.dumps({
        "key": key, "task": task.name, "classes": task.classes, "regime": regime, "seed": seed,
        **training.finetune_settings(), "train_examples": len(texts), "max_len": task.max_len,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - start, 1)}, indent=1))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
