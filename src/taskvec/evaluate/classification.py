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


@torch.no_grad()
def run_classification(task: ClassificationTask, folder, weights, device: str, where: str):
    """-> (accuracy, {"accuracy", "macro_f1"}, examples)."""
    from safetensors.torch import load_file

    tokenizer = load_tokenizer(folder)
    if task.head is not None:
        model = load_model("AutoModel", folder, weights, device, where)
        head = load_file(str(task.head))
        if set(head) != {"weight", "bias"}:
            raise TaskvecError(f"{where}: head {task.head} must hold exactly 'weight' and 'bias'; "
                               f"it holds {', '.join(sorted(head))}")
        w, b = head["weight"].float().to(device), head["bias"].float().to(device)
        classes = w.shape[0]
    else:
        model = load_model("AutoModelForSequenceClassification", folder, weights, device, where)
        classes = model.config.num_labels
    labels = class_names(task, model.config, classes, where)
    index = {name: i for i, name in enumerate(labels)}
    gold, pred = [index[label] for _, label in task._rows], []
    for start in range(0, len(task._rows), task.batch_size):
        texts = [text for text, _ in task._rows[start:start + task.batch_size]]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=task.max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        if task.head is not None:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (out.last_hidden_state.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            logits = pooled @ w.T + b
        else:
            logits = out.logits
        pred += logits.argmax(-1).tolist()
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    return accuracy, {"accuracy": accuracy, "macro_f1": macro_f1(gold, pred, classes)}, len(gold)
