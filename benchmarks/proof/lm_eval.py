"""Scores of the language-model proofs, cached by the model's content.

- Negative log-likelihood per token -- of chat answers (the response and its end-of-turn token, in the chat template)
  or of raw text -- is `taskvec.evaluate` on language_modeling tasks, so `taskvec eval MODEL --tasks tasks.yaml`
  reproduces it to the last digit (the tasks files are written next to the data).
- Greedy replies, and what they show: the share in the expected language (a stop-word count, below) and the share
  that ends cleanly with the end-of-turn token within the token budget.
- Label accuracy: a chat prompt, and the label whose first token is the most likely reply wins (the labels differ in
  their first token; checked).

Every number is stored under (model content, data content, settings, evaluator source): a merged model that is built
again with the same bits is never scored twice.
"""

import json
import re
import time
from pathlib import Path

import torch

import memo
from encoder import code_hash, digest, file_hash, library_versions, model_key
from scoring import eval_code_hash

MAX_LENGTH = 256
BATCH = 16
STOPWORDS = {  # frequent words of one language and not the other ("a", "i", "come", "e" are left out: both have them)
    "italian": {"il", "lo", "la", "gli", "le", "di", "che", "è", "un", "una", "per", "non", "sono", "mi", "ti", "ci",
                "si", "del", "della", "con", "ma", "questo", "questa", "io", "tu", "anche", "più", "ho", "hai", "cosa",
                "molto", "perché", "sei", "mio", "mia", "tuo", "nel", "alla", "essere", "posso", "sì"},
    "english": {"the", "an", "is", "are", "and", "of", "to", "you", "it", "that", "what", "do", "not", "in", "my",
                "me", "with", "for", "be", "have", "this", "your", "can", "am", "how", "why", "was", "yes", "no",
                "like", "about", "there", "they", "we", "will"},
}


def language_of(text: str) -> str:
    """'italian', 'english' or 'unknown' (no stop word of either, or as many of each)."""
    words = re.findall(r"[a-zàèéìòù']+", text.lower())
    counts = {lang: sum(w in stop for w in words) for lang, stop in STOPWORDS.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] > min(counts.values()) else "unknown"


class LMScorer:
    def __init__(self, cache: Path, log=print):
        self.cache, self.log = cache, log
        self.data_dir, self.memo_dir = cache / "lm-data", cache / "lm-scores"

    # ---- data files (named by content) ----
    def text_file(self, name: str, texts: list[str]) -> Path:
        body = "".join(t.replace("\n", " ") + "\n" for t in texts)
        return self._write(f"{name}-{digest(body)}.txt", body)

    def pairs_file(self, name: str, pairs: list[tuple[str, str]]) -> Path:
        body = "".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n" for p, r in pairs)
        return self._write(f"{name}-{digest(body)}.jsonl", body)

    def _write(self, filename: str, body: str) -> Path:
        path = self.data_dir / filename
        return path if path.is_file() else memo.write_atomic(path, body)

    def write_yaml(self, name: str, data: dict) -> Path:
        """A YAML file (a tasks file for `taskvec eval` / `taskvec tune`), named by its content."""
        import yaml

        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return self._write(f"{name}-{digest(body)}.yaml", body)

    # ---- memo ----
    def _memo(self, model: Path, kind: str, keys: list[str], compute) -> list:
        """The stored results of `keys` for this model; compute(missing keys) -> their results, stored."""
        def timed(missing: list[str]) -> list:
            start = time.perf_counter()
            results = compute([k.removeprefix(f"{kind}:") for k in missing])
            self.log(f"      scored {kind} ({len(missing)}) of {Path(model).name[:48]} in "
                     f"{time.perf_counter() - start:.1f} s")
            return results

        return memo.stored(self.memo_dir / f"{model_key(model)}.json", [f"{kind}:{k}" for k in keys], timed)

    # ---- scores ----
    def nll(self, model: Path, jobs: dict[str, Path]) -> dict[str, float]:
        """{job: mean NLL per scored token}, through taskvec.evaluate (one model load for every job missing)."""
        key_of = {n: digest(file_hash(p), p.suffix, MAX_LENGTH, BATCH, eval_code_hash(), library_versions())
                  for n, p in jobs.items()}
        path_of = {key_of[n]: p for n, p in jobs.items()}
        unique = list(path_of)
        values = dict(zip(unique, self._memo(model, "nll", unique,
                                             lambda missing: _nll(model, [path_of[k] for k in missing]))))
        return {n: values[key_of[n]] for n in jobs}

    def replies(self, model: Path, prompts: list[str], max_new: int) -> list[dict]:
        """Greedy replies in the chat template: [{"text", "ended"}], ended = the end-of-turn token came in time."""
        key = digest(prompts, max_new, code_hash(_generate), library_versions())
        return self._memo(model, "replies", [key], lambda _: [_generate(model, prompts, max_new)])[0]

    def label_accuracy(self, model: Path, rows: list[tuple[str, str]], labels: tuple[str, ...]) -> float:
        """Share of (prompt, label) rows whose label's response is the most likely of `labels`."""
        key = digest(rows, labels, code_hash(_label_accuracy, label_tokens), library_versions())
        return self._memo(model, "labels", [key], lambda _: [_label_accuracy(model, rows, labels)])[0]


def _nll(model: Path, paths: list[Path]) -> list[float]:
    from taskvec.evaluate import evaluate, parse_tasks

    tasks = [{"name": f"{i}:{p.stem}", "type": "language_modeling", "data": str(p.resolve()),
              "chat": p.suffix == ".jsonl", "max_length": MAX_LENGTH, "batch_size": BATCH} for i, p in enumerate(paths)]
    return [r.extra["nll"] for r in evaluate(model, parse_tasks({"tasks": tasks}, paths[0].parent, "proof tasks"))]


def reply_stats(replies: list[dict], language: str) -> dict:
    n = len(replies)
    return {"in_language": sum(language_of(r["text"]) == language for r in replies) / n,
            "ended": sum(r["ended"] for r in replies) / n}


def _load(model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return tok, AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()


@torch.inference_mode()
def _generate(model: Path, prompts: list[str], max_new: int) -> list[dict]:
    tok, lm = _load(model)
    tok.padding_side = "left"
    end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    out = []
    for i in range(0, len(prompts), BATCH):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + BATCH]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = lm.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=end,
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else end)
        for row in ids[:, enc["input_ids"].shape[1]:].tolist():
            ended = end in row
            row = row[:row.index(end)] if ended else row
            out.append({"text": tok.decode(row, skip_special_tokens=True).strip(), "ended": ended})
    return out


def label_tokens(tok, labels: tuple[str, ...]) -> list[int]:
    """The first response token of each label; they must differ, so one forward pass over the prompt decides."""
    from lm_train import encode

    firsts = []
    for label in labels:
        ids, skip = encode(tok, ("?", label), MAX_LENGTH)
        firsts.append(ids[skip])
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"labels {labels} share a first token; score whole responses instead")
    return firsts


@torch.inference_mode()
def _label_accuracy(model: Path, rows: list[tuple[str, str]], labels: tuple[str, ...]) -> float:
    """The label whose first token the model finds most likely as the reply, per row (8 prompts per forward)."""
    from lm_train import batch_tensors, encode

    tok, lm = _load(model)
    firsts = torch.tensor(label_tokens(tok, labels))
    hits = 0
    for i in range(0, len(rows), 8):
        chunk = rows[i:i + 8]
        prompts = []
        for prompt, _ in chunk:
            ids, skip = encode(tok, (prompt, labels[0]), MAX_LENGTH)
            prompts.append((ids[:skip], 0))
        ids, attention, _ = batch_tensors(prompts, tok.pad_token_id or 0)
        logits = lm(input_ids=ids, attention_mask=attention).logits
        last = torch.tensor([len(p) - 1 for p, _ in prompts])
        picked = logits[torch.arange(len(chunk)), last][:, firsts].argmax(1)
        hits += sum(labels[int(k)] == gold for k, (_, gold) in zip(picked, chunk))
    return hits / len(rows)
