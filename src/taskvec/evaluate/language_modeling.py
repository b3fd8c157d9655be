"""Language modeling: mean negative log-likelihood per predicted token (lower is better) of a causal LM, over plain
texts, or over chat pairs formatted with the tokenizer's chat template with the loss on the response tokens only."""

import math

import torch

from ..errors import TaskvecError
from .models import Models
from .tasks import LanguageModelingTask


def encode(task: LanguageModelingTask, tokenizer, where: str) -> list[tuple[list[int], int]]:
    """Each example as (token ids, number of leading tokens not scored), truncated to max_length."""
    encoded = []
    for example in task._examples:
        if task.chat:
            if not getattr(tokenizer, "chat_template", None):
                raise TaskvecError(f"{where}: chat: true needs a tokenizer with a chat template; this one has none")
            prompt, response = example
            messages = [{"role": "user", "content": prompt}]
            head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                 tokenize=False)
            if not full.startswith(head):
                raise TaskvecError(f"{where}: the chat template does not extend the prompt with the response; "
                                   f"cannot tell the response tokens apart")
            prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            ids = prompt_ids + tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
            encoded.append((ids[:task.max_length], len(prompt_ids)))
        else:
            ids = tokenizer(example, truncation=True, max_length=task.max_length)["input_ids"]
            encoded.append((ids, 0))
    return encoded


class LanguageModelingScorer:
    """One language-modeling task: examples encoded once, scored per candidate."""

    auto_class = "AutoModelForCausalLM"

    def __init__(self, task: LanguageModelingTask, models: Models, where: str):
        self.task, self.models, self.where = task, models, where
        encoded = encode(task, models.tokenizer(), where)
        self.batches = []
        for start in range(0, len(encoded), task.batch_size):
            chunk = encoded[start:start + task.batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            attention = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, (ids, skip) in enumerate(chunk):  # right padding, masked out of attention and loss
                input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[row, :len(ids)] = 1
                labels[row, skip:len(ids)] = torch.tensor(ids[skip:], dtype=torch.long)
            self.batches.append((input_ids, attention, labels[:, 1:]))
        self.tokens = sum(int((target != -100).sum()) for _, _, target in self.batches)
        if self.tokens == 0:
            raise TaskvecError(f"{where}: no tokens to score (every example is one token long, or the responses were "
                               f"cut off by max_length={task.max_length})")
        self.examples = len(encoded)

    @torch.inference_mode()
    def score(self, weights: dict | None, version) -> tuple[float, dict, int]:
        """-> (-nll, {"nll", "perplexity", "tokens"}, examples). Token i is scored from tokens < i."""
        model = self.models.get(self.auto_class, weights, version, self.where)
        device = self.models.device
        total = 0.0
        for input_ids, attention, target in self.batches:
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            target = target.to(device)
            total += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       target.reshape(-1), ignore_index=-100,
                                                       reduction="sum").item()
        nll = total / self.tokens
        return -nll, {"nll": nll, "perplexity": math.exp(min(nll, 700.0)), "tokens": self.tokens}, self.examples
