"""MiniLM with one linear head per task: a probe on frozen features, brief fine-tuning, and held-out accuracy.

Fine-tuning starts from the task's probe head (linear probe, then fine-tune): the encoder then moves only as far as
the task needs, which is what task vectors are made of. Fine-tuned encoders are saved as ordinary Hugging Face
folders (plus `head.safetensors`), so anyone can redo the merges by hand with `taskvec merge`.
"""

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data import Task
from merging import identity, merged

LR_HEAD, BATCH = 1e-3, 16


@dataclass
class Budget:
    steps: int = 120  # fine-tuning steps per task
    lr_encoder: float = 5e-5
    probe_examples: int = 1500  # train examples whose frozen features fit the probe head
    eval_batch: int = 128


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


def train_probe(base, task: Task, budget: Budget, cache: Path) -> dict:
    """A linear head on frozen base features: the base encoder's best use of the task without changing it."""
    path = cache / f"probe-{task.name}.safetensors"
    if path.is_file():
        return load_file(path)
    tok, model = load_encoder(base)
    texts, labels = task.train[0][:budget.probe_examples], torch.tensor(task.train[1][:budget.probe_examples])
    x = features(model, tok, texts, task.max_len)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(task.classes))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(400):
        loss = torch.nn.functional.cross_entropy(head(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return state


def finetune(base, task: Task, probe: dict, seed: int, budget: Budget, folder: Path, log=print) -> Path:
    """Encoder and head trained together from the probe head; saved as a Hugging Face folder plus head.safetensors."""
    if (folder / "head.safetensors").is_file():
        return folder
    torch.manual_seed(seed)
    tok, model = load_encoder(base)
    head = torch.nn.Linear(model.config.hidden_size, len(task.classes))
    head.load_state_dict(probe)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": budget.lr_encoder},
                             {"params": head.parameters(), "lr": LR_HEAD}])
    texts, labels = task.train[0], torch.tensor(task.train[1])
    rng = random.Random(f"{seed}:{task.name}")
    model.train()
    start, losses = time.time(), []
    for step in range(budget.steps):
        idx = rng.sample(range(len(texts)), min(BATCH, len(texts)))
        logits = head(embed(model, tok, [texts[i] for i in idx], task.max_len, grad=True))
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 40 == 0 or step + 1 == budget.steps:
            log(f"    fine-tune {task.name} (seed {seed}): step {step + 1}/{budget.steps}, "
                f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f} ({time.time() - start:.0f} s)")
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
              tmp / "head.safetensors")
    (tmp / "training.json").write_text(json.dumps({"task": task.name, "seed": seed, "steps": budget.steps,
                                                   "batch": BATCH, "lr_encoder": budget.lr_encoder, "lr_head": LR_HEAD,
                                                   "final_loss": sum(losses[-20:]) / len(losses[-20:])}))
    tmp.rename(folder)
    return folder


class Evaluator:
    """Accuracy of (encoder folder, head) on a task split, remembered in the cache (keyed by the folder and its
    weights' modification time) so that a second run of the suite only re-prints. Several tasks are scored per
    encoder load. Nothing is written next to the encoder: the base model's folder belongs to its package."""

    def __init__(self, budget: Budget, cache: Path):
        self.budget, self.cache = budget, cache / "accuracy"

    def _memo_path(self, identity: str) -> Path:
        return self.cache / (hashlib.sha1(identity.encode()).hexdigest()[:20] + ".json")

    @staticmethod
    def folder_identity(encoder: Path) -> str:
        encoder = Path(encoder).resolve()
        stamp = max((p.stat().st_mtime_ns for p in encoder.glob("*.safetensors")), default=0)
        return f"{encoder}:{stamp}"

    def cached(self, identity: str, keys: list[str]) -> dict[str, float] | None:
        path = self._memo_path(identity)
        memo = json.loads(path.read_text()) if path.is_file() else {}
        return {k: memo[k] for k in keys} if all(k in memo for k in keys) else None

    def accuracies(self, encoder: Path, jobs: list[tuple[Task, dict, str, str]], identity: str | None = None,
                   ) -> dict[str, float]:
        """jobs: (task, head, split, key) -> {key: accuracy}. Keys name the head, e.g. "bbc-topic/test/ft".
        `identity` names the encoder's content (a merge's recipe); by default its folder and modification time."""
        memo_path = self._memo_path(identity or self.folder_identity(encoder))
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        todo = [j for j in jobs if j[3] not in memo]
        if todo:
            tok, model = load_encoder(encoder)
            for task, head, part, key in todo:
                texts, labels = getattr(task, part)
                x = features(model, tok, texts, task.max_len, self.budget.eval_batch)
                logits = x @ head["weight"].T + head["bias"]
                memo[key] = float((logits.argmax(1) == torch.tensor(labels)).float().mean())
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            memo_path.write_text(json.dumps(memo, indent=1, sort_keys=True))
        return {j[3]: memo[j[3]] for j in jobs}

    def merge_accuracies(self, recipe_text: str, jobs: list[tuple[Task, dict, str, str]], workdir: Path,
                         use_cli: bool = False) -> dict[str, float]:
        """Accuracies of the model a recipe makes; it is merged (and removed afterwards) only if some are not cached."""
        hit = self.cached(identity(recipe_text), [j[3] for j in jobs])
        if hit is not None:
            return hit
        with merged(recipe_text, workdir, use_cli) as folder:
            return self.accuracies(folder, jobs, identity(recipe_text))
