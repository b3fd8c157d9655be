"""LoRA out: write a fine-tune's task vector as a PEFT LoRA adapter (``taskvec extract-lora``), so a skill ships small
and loads with ``PeftModel.from_pretrained``.

Per matrix, tau = finetuned - base is factored by a truncated SVD in float32, U S Vh, and split evenly:
``lora_B = U_k sqrt(S_k)``, ``lora_A = sqrt(S_k) Vh_k``, with ``lora_alpha = r`` so PEFT's scale is 1 and
``B @ A`` is the best rank-k approximation of tau. The rank is ``--rank R`` for every matrix, or with ``--energy E``
each matrix's smallest rank whose singular values hold a fraction E of sum(S^2) (``rank_pattern`` and a matching
``alpha_pattern`` where ranks differ from ``r``). What is not a matrix of a linear layer -- embeddings (unless
``lora_embeddings``: then LoRA on them too, PEFT's ``lora_embedding_A/B``), norms, 1-D tensors -- travels whole in
``modules_to_save``; a changed bias of a LoRA-targeted layer rides on ``lora_B.bias``
(``lora_bias``) when every targeted layer has a bias, or else that layer travels whole too. One tensor's SVD is in
memory at a time, plus the factors kept so far (a fraction of the adapter); the saved whole tensors are streamed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import TaskvecError
from .io.checkpoint import open_checkpoint
from .io.writer import ShardedWriter, prepare_target

PREFIX = "base_model.model."
EMBEDDING = re.compile(r"(^|\.)(embed[^.]*|wte|wpe|[a-z_]*embeddings)$")  # modules PEFT would see as nn.Embedding
CONV1D_MODELS = {"gpt2", "gpt_bigcode", "codegen"}  # Conv1D layers: weights stored [in, out] (fan_in_fan_out)


@dataclass
class Factor:
    module: str
    rank: int
    energy: float  # share of sum(S^2) the kept rank holds
    a: torch.Tensor
    b: torch.Tensor
    bias: torch.Tensor | None = None  # the layer's bias change, for lora_B.bias
    embedding: bool = False  # saved as lora_embedding_A/B (dW stored transposed)


@dataclass
class LoraExport:
    """What ``extract_lora`` wrote: the adapter folder, its size, and per module the rank and energy kept."""

    folder: Path
    bytes: int
    factors: dict[str, tuple[int, float]] = field(default_factory=dict)  # module -> (rank, energy kept)
    saved_whole: list[str] = field(default_factory=list)  # modules in modules_to_save


def split_svd(tau: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [k, n], B [m, k], energy kept) with B @ A the best rank-k approximation of the matrix ``tau``."""
    u, s, vh = torch.linalg.svd(tau.float(), full_matrices=False)
    power = s.square()
    total = float(power.sum())
    if rank is not None:
        k = min(rank, s.numel())
    else:
        cumulative = torch.cumsum(power, 0) / max(total, 1e-30)
        k = int(torch.searchsorted(cumulative, torch.tensor(min(energy, 1.0) - 1e-7)).item()) + 1
        k = min(max(k, 1), s.numel())
    root = s[:k].sqrt()
    kept = float(power[:k].sum()) / total if total > 0 else 1.0
    return (root[:, None] * vh[:k]).contiguous(), (u[:, :k] * root).contiguous(), kept


def check_rank_options(rank: int | None, energy: float | None, what: str) -> None:
    if (rank is None) == (energy is None):
        raise TaskvecError(f"{what}: give --rank R or --energy E (one of them)")
    if rank is not None and rank < 1:
        raise TaskvecError(f"{what}: --rank must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise TaskvecError(f"{what}: --energy must be in (0, 1], got {energy}")


def merge_as_lora(recipe: str | Path, out: str | Path, options, *, rank: int | None = None,
                  energy: float | None = None, dtype: torch.dtype = torch.float32, lora_embeddings: bool = False,
                  log=None) -> LoraExport:
    """Run a recipe and write the merge as a LoRA adapter of its base_model (``taskvec merge --out-format lora``):
    the merged model is written beside ``out`` first (streamed, as any merge), factored, then removed."""
    import shutil
    import uuid

    from .merge import merge_recipe
    from .recipe import load_recipe

    check_rank_options(rank, energy, "merge --out-format lora")
    recipe_path = Path(recipe)
    parsed = load_recipe(recipe_path)
    if not parsed.base_model:
        raise TaskvecError(f"{recipe}: --out-format lora needs a base_model (an adapter is a change to a base)")
    base = Path(parsed.base_model).expanduser()
    if not base.is_absolute() and not base.exists() and (recipe_path.parent / base).exists():
        base = recipe_path.parent / base
    out = Path(out)
    prepare_target(out, options.force)
    full = out.parent / f".{out.name}.merged-{uuid.uuid4().hex[:8]}"
    try:
        merge_recipe(recipe_path, full, options)
        return extract_lora(base if base.exists() else parsed.base_model, full, out, rank=rank, energy=energy,
                            dtype=dtype, force=options.force, lora_embeddings=lora_embeddings, log=log)
    finally:
        shutil.rmtree(full, ignore_errors=True)


def module_of(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def extract_lora(base: str | Path, finetuned: str | Path, out: str | Path, *, rank: int | None = None,
                 energy: float | None = None, dtype: torch.dtype = torch.float32, force: bool = False,
                 lora_embeddings: bool = False, log=None) -> LoraExport:
    """Write ``finetuned - base`` as a PEFT LoRA adapter folder ``out``."""
    check_rank_options(rank, energy, "extract-lora")
    out = Path(out)
    prepare_target(out, force)
    base_ck, ft_ck = open_checkpoint(base), open_checkpoint(finetuned)
    try:
        config = ft_ck.config() or base_ck.config() or {}
        transposed = config.get("model_type") in CONV1D_MODELS
        changed, whole = _changed_tensors(base_ck, ft_ck)
        matrices = [n for n in changed if n.endswith(".weight") and len(ft_ck.info(n).shape) == 2
                    and (lora_embeddings or not EMBEDDING.search(module_of(n)[0]))]
        embeddings = {module_of(n)[0] for n in matrices if EMBEDDING.search(module_of(n)[0])}
        targets = {module_of(n)[0] for n in matrices}
        whole_modules = {module_of(n)[0] for n in changed if module_of(n)[0] not in targets} | whole
        biases = {m: f"{m}.bias" for m in targets - embeddings if f"{m}.bias" in changed}
        every_target_has_bias = all(f"{m}.bias" in ft_ck for m in targets - embeddings)
        # lora_bias needs a bias on every target, and PEFT refuses it with LoRA on embeddings: else these travel whole
        if biases and (not every_target_has_bias or embeddings):
            whole_modules |= set(biases)
            targets -= set(biases)
            matrices = [n for n in matrices if module_of(n)[0] in targets]
            biases = {}
        factors = []
        for i, name in enumerate(matrices, 1):
            tau = ft_ck.read(name).float() - base_ck.read(name).float()
            module = module_of(name)[0]
            embedding = module in embeddings
            a, b, kept = split_svd(tau.T if (transposed or embedding) else tau, rank, energy)
            bias = None
            if biases and not embedding:
                bias = ft_ck.read(f"{module}.bias").float() - base_ck.read(f"{module}.bias").float()
            factors.append(Factor(module, a.shape[0], kept, a, b, bias, embedding))
            if log:
                log(f"[{i}/{len(matrices)}] {module}: rank {a.shape[0]}, energy kept {kept:.3f}")
        saved = sorted(n for n in ft_ck.names() if module_of(n)[0] in whole_modules)
        return _write(out, factors, saved, ft_ck, config, base, dtype, rank, bool(biases), transposed, force)
    finally:
        base_ck.close()
        ft_ck.close()


def _changed_tensors(base_ck, ft_ck) -> tuple[list[str], set[str]]:
    """Floating tensors the fine-tune changed (names), and modules it has that the base lacks (saved whole)."""
    changed, new_modules = [], set()
    for name in ft_ck.names():
        info = ft_ck.info(name)
        if name not in base_ck:
            new_modules.add(module_of(name)[0])
            continue
        if not info.dtype.is_floating_point:
            continue
        if base_ck.info(name).shape != info.shape:
            raise TaskvecError(f"tensor {name!r}: shape {list(info.shape)} in {info.file} but "
                               f"{list(base_ck.info(name).shape)} in the base; a LoRA needs a fine-tune of this base")
        if not torch.equal(ft_ck.read(name), base_ck.read(name)):
            changed.append(name)
    return changed, new_modules


def _write(out, factors, saved, ft_ck, config, base, dtype, rank, lora_bias, transposed, force) -> LoraExport:
    r = rank if rank is not None else max((f.rank for f in factors), default=1)
    tensors = {}
    for f in factors:
        a, b = ("lora_embedding_A", "lora_embedding_B") if f.embedding else ("lora_A.weight", "lora_B.weight")
        tensors[f"{PREFIX}{f.module}.{a}"] = (f.a.shape, lambda f=f: f.a)
        tensors[f"{PREFIX}{f.module}.{b}"] = (f.b.shape, lambda f=f: f.b)
        if lora_bias and not f.embedding:
            tensors[f"{PREFIX}{f.module}.lora_B.bias"] = (f.bias.shape, lambda f=f: f.bias)
    for name in saved:
        tensors[PREFIX + name] = (ft_ck.info(name).shape, lambda name=name: ft_ck.read(name))
    specs = [(name, dtype, tuple(shape)) for name, (shape, _) in tensors.items()]
    with ShardedWriter(out, specs, 2**62, prefix="adapter_model", force=force) as writer:
        for name, (_, read) in tensors.items():
            writer.write(name, read().to(dtype))
        pattern = {f.module: f.rank for f in factors if f.rank != r}
        adapter_config = {
            "peft_type": "LORA", "task_type": None, "base_model_name_or_path": str(base), "r": r, "lora_alpha": r,
            "lora_dropout": 0.0, "target_modules": sorted(f.module for f in factors),
            "rank_pattern": pattern, "alpha_pattern": dict(pattern), "use_rslora": False, "use_dora": False,
            "fan_in_fan_out": transposed, "bias": "none", "lora_bias": lora_bias,
            "modules_to_save": sorted({module_of(n)[0] for n in saved}) or None,
            "init_lora_weights": True, "inference_mode": True,
        }
        writer.write_text("adapter_config.json", json.dumps(adapter_config, indent=2) + "\n")
        folder = writer.commit()
    size = sum(p.stat().st_size for p in folder.iterdir())
    return LoraExport(folder, size, {f.module: (f.rank, f.energy) for f in factors},
                      sorted({module_of(n)[0] for n in saved}))


def energy_summary(export: LoraExport) -> str:
    """One line: how much of each matrix's energy the adapter keeps (min, mean), and its size."""
    kept = [e for _, e in export.factors.values()]
    ranks = [k for k, _ in export.factors.values()]
    if not kept:
        return f"{export.folder}: no matrix changed; {export.bytes / 1e6:,.2f} MB"
    return (f"{export.folder}: {len(kept)} LoRA matrices, rank {min(ranks)}-{max(ranks)}, energy kept mean "
            f"{sum(kept) / len(kept):.3f} (min {min(kept):.3f}); {len(export.saved_whole)} module(s) saved whole; "
            f"{export.bytes / 1e6:,.2f} MB")


