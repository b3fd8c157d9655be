"""Classification: accuracy (the score) and macro-F1 of a sequence classifier, or of an encoder with a linear head
over mean-pooled states (how this project's proof suite keeps MiniLM heads: head.safetensors beside the encoder)."""

import re

import torch

from ..errors import TaskvecError
from .models import load_model, load_tokenizer
from .tasks import ClassificationTask, check_labels


def class_names(task: ClassificationTask, config, classes: int, where: str) -> list[str]:
    """`labels`, else the config's id2label when it has real names, else the data's sorted distinct labels."""
    if task.labels is not None:
        labels = list(task.labels)
    else:
        id2label = getattr(config, "id2label", None) or {}
        names = [str(id2label[i]) for i in sorted(id2label)] if id2label else []
        real = names and not all(re.fullmatch(r"LABEL_\d+", n) for n in names)
        labels = names if real else list(task._label_set)
        check_labels(task, labels, where)
    if len(labels) != classes:
        raise TaskvecError(f"{where}: the model has {classes} classes but there are {len(labels)} labels "
                           f"({', '.join(labels)}); list the {classes} class names in order under 'labels'")
    return labels


def macro_f1(gold: list[int], pred: list[int], classes: int) -> float:
    """Mean over the classes that occur in gold or predictions of F1 = 2TP / (2TP + FP + FN)."""
    scores = []
    for c in range(classes):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def auto_class(task: ClassificationTask) -> str:
    """The transformers class a task runs: the bare encoder under a head file, else the folder's classifier."""
    return "AutoModel" if task.head is not None else "AutoModelForSequenceClassification"


def read_head(task: ClassificationTask, device: str, where: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The task's head file as float32 (weight [classes, hidden], bias), or None when the model has its own head."""
    from safetensors.torch import load_file

    if task.head is None:
        return None
    head = load_file(str(task.head))
    if set(head) != {"weight", "bias"}:
        raise TaskvecError(f"{where}: head {task.head} must hold exactly 'weight' and 'bias'; "
                           f"it holds {', '.join(sorted(head))}")
    return head["weight"].float().to(device), head["bias"].float().to(device)


def logits_of(out, batch: dict, head: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Class logits from a model's output: the head over the attention-masked mean of the last hidden states, or
    the model's own logits."""
    if head is None:
        return out.logits
    w, b = head
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.last_hidden_state.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
    return pooled @ w.T + b


@torch.no_grad()
def run_classification(task: ClassificationTask, folder, weights, device: str, where: str):
    """-> (accuracy, {"accuracy", "macro_f1"}, examples)."""
    tokenizer = load_tokenizer(folder)
    model = load_model(auto_class(task), folder, weights, device, where)
    head = read_head(task, device, where)
    classes = head[0].shape[0] if head is not None else model.config.num_labels
    labels = class_names(task, model.config, classes, where)
    index = {name: i for i, name in enumerate(labels)}
    gold, pred = [index[label] for _, label in task._rows], []
    for start in range(0, len(task._rows), task.batch_size):
        texts = [text for text, _ in task._rows[start:start + task.batch_size]]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=task.max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        pred += logits_of(model(**batch), batch, head).argmax(-1).tolist()
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    return accuracy, {"accuracy": accuracy, "macro_f1": macro_f1(gold, pred, classes)}, len(gold)
