"""Run a merge: validate everything from headers, plan one job per tensor, stream them through the engine.

``merge_recipe`` runs a mergekit-style recipe; ``merge_inputs`` is the shared core that the ``TaskVector`` API and
``taskvec apply`` use too.
"""

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .dtypes import dtype_name, parse_dtype
from .engine import DEFAULT_MEMORY_BUDGET, Job, RunStats, default_workers, execute
from .errors import TaskvecError
from .fingerprint import Fingerprinter
from .global_trim import exact_ascending_ranks
from .inputs import Input, ModelInput, StoredVectorInput, is_task_vector, open_input
from .io.checkpoint import Checkpoint, open_checkpoint
from .io.model_folder import copy_aux_files, model_card
from .io.writer import ShardedWriter, prepare_target
from .methods import REQUIRED, MergeMethod
from .methods.sparsify import keep_count
from .plan import TensorPlan, plan_tensors
from .recipe import Recipe, input_specs, load_recipe, validate_recipe
from .settings import count_layers, evaluate, position


@dataclass
class MergeOptions:
    """How to run a merge (never what it computes, except ``compute_dtype``)."""

    shard_size: int = 5 * 10**9
    workers: int | None = None
    device: str = "cpu"
    compute_dtype: torch.dtype = torch.float32
    on_missing: str = "error"  # or "carry"
    force: bool = False
    progress: bool = True
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of tensors in flight; one bigger tensor still runs, alone
    seed: int = 0  # for methods that drop entries at random (DARE, DELLA)


@dataclass
class MergeResult:
    path: Path
    stats: RunStats
    warnings: list[str] = field(default_factory=list)


def merge_recipe(recipe: Recipe | str | Path, out: str | Path, options: MergeOptions | None = None) -> MergeResult:
    """Run a recipe (a parsed ``Recipe`` or a YAML path) and write a model folder at ``out``."""
    options = options or MergeOptions()
    search: tuple[Path, ...] = ()
    if not isinstance(recipe, Recipe):
        search = (Path(recipe).resolve().parent,)
        recipe = load_recipe(recipe)
    method = validate_recipe(recipe)
    prepare_target(Path(out), options.force)
    base = None
    if recipe.base_model:
        if any(is_task_vector(d / recipe.base_model) for d in (Path("."),) + search):
            raise TaskvecError(f"base_model {recipe.base_model}: is a task vector; the base must be a model")
        base = open_checkpoint(recipe.base_model, search)
    specs = input_specs(recipe, method)
    inputs = [open_input(s.model, search) for s in specs]
    if base is None and any(isinstance(i, StoredVectorInput) for i in inputs):
        raise TaskvecError(f"{method.name}: a task vector among 'models' needs a base_model to be added to")
    tokenizer_folder = None
    if recipe.tokenizer_source not in (None, "base"):
        tokenizer_folder = open_checkpoint(recipe.tokenizer_source, search).folder
    out_dtype = recipe.out_dtype or recipe.dtype
    try:
        return merge_inputs(
            base, inputs, method, [s.parameters or {} for s in specs], recipe.parameters or {}, Path(out), options,
            out_dtype=parse_dtype(out_dtype) if out_dtype else None,
            card=model_card([i.label for i in inputs] + ([base.label] if base else []), method.name, recipe.to_yaml()),
            tokenizer_folder=tokenizer_folder,
        )
    finally:
        for inp in inputs:
            inp.close()
        if base is not None:
            base.close()


def merge_inputs(
    base: Checkpoint | None,
    inputs: list[Input],
    method: MergeMethod,
    model_settings: list[dict[str, Any]],
    global_settings: dict[str, Any],
    out: Path,
    options: MergeOptions,
    out_dtype: torch.dtype | None = None,
    card: str | None = None,
    tokenizer_folder: Path | None = None,
) -> MergeResult:
    """Merge ``inputs`` into ``base`` with ``method``; settings are recipe-style (scalars, gradients, filters)."""
    device = _device(options.device)
    _refuse_overwriting_inputs(out, [base] if base else [], inputs)
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].label)  # canonical: model order changes nothing
    reference = base if base is not None else inputs[0].checkpoint
    inputs, model_settings = [inputs[i] for i in order], [model_settings[i] for i in order]
    plans = plan_tensors(base, inputs, out_dtype, options.on_missing, reference)
    num_layers = count_layers(reference.names(), reference.config())
    seeds = _model_seeds(options.seed, inputs) if method.random else None
    resolved = {
        p.name: resolve_parameters(method, p.name, position(p.name, num_layers), model_settings, global_settings,
                                   inputs, seeds)
        for p in plans if p.merge
    }
    expected = {i.manifest.get("base", {}).get("fingerprint") for i in inputs if isinstance(i, StoredVectorInput)}
    expected.discard(None)
    fingerprint = Fingerprinter() if expected and base is not None else None
    needs_base = base is not None and (
        method.base != "ignored" or fingerprint is not None or not all(type(i) is ModelInput for i in inputs)
    )

    def read_base(name: str) -> torch.Tensor:
        t = base.read(name)
        if fingerprint is not None:
            fingerprint.add(name, t)
        return t

    def job(plan: TensorPlan) -> Job:
        def run() -> torch.Tensor:
            if not plan.merge:
                src = read_base(plan.name) if plan.copy_from is base else plan.copy_from.read(plan.name)
                return src.to(plan.out_dtype)
            cd = options.compute_dtype
            b = None
            if needs_base:
                b = read_base(plan.name).to(device=device, dtype=cd)
            model_params, params = resolved[plan.name]
            if method.inputs == "deltas":
                xs = (inp.delta(plan.name, b, cd, device) for inp in inputs)
            else:
                xs = (inp.weights(plan.name, b, cd, device) for inp in inputs)
            merged = method.fn(b, xs if method.streaming else list(xs), model_params, params)
            if method.inputs == "deltas":
                merged = merged.add_(b)
            return check_finite(plan.name, merged.to(plan.out_dtype), inputs).cpu()

        return Job(plan.name, plan.shape, plan.out_dtype, plan.read_bytes, run, job_memory(plan))

    def job_memory(plan: TensorPlan) -> int:
        out = math.prod(plan.shape) * plan.out_dtype.itemsize
        if not plan.merge:
            return math.prod(plan.shape) * plan.source_dtype.itemsize + out
        # base, accumulator and one input -- or every input, its pruned copy and the masks
        held = 3 if method.streaming else 2 * len(inputs) + 3
        return held * math.prod(plan.shape) * options.compute_dtype.itemsize + out

    if _global_scope(method, resolved):
        set_global_thresholds(method, resolved, [p for p in plans if p.merge], base, inputs, options)

    specs = [(p.name, p.out_dtype, p.shape) for p in plans]
    with ShardedWriter(out, specs, options.shard_size, force=options.force) as writer:
        copy_aux_files(writer, reference.folder, tokenizer_folder, dtype_name(out_dtype) if out_dtype else None)
        if card:
            writer.write_text("README.md", card)
        stats = execute([job(p) for p in plans], writer, options.workers, label=method.name, progress=options.progress,
                        memory_budget=options.memory_budget)
        notes = []
        if fingerprint is not None and fingerprint.hexdigest() not in expected:
            notes.append(
                f"the task vector(s) were extracted from a base with fingerprint {', '.join(sorted(expected))}, and "
                f"{base.label} is not that base ({fingerprint.hexdigest()}): fine for a model fine-tuned from it (adding "
                "a colleague's skill to your model) or the same weights in another dtype, meaningless for an unrelated model"
            )
            warnings.warn(notes[-1])
        path = writer.commit()
    return MergeResult(path, stats, notes)


def resolve_parameters(method, name, t, model_settings, global_settings, inputs, seeds=None):
    """Per-model and global parameter values for one tensor: model setting, then top-level setting, then default."""
    def value(param, settings: dict, model: str | None):
        v = evaluate(settings.get(param.name), name, t)
        if v is None and settings is not global_settings:
            v = evaluate(global_settings.get(param.name), name, t)
        if v is None:
            if param.default is REQUIRED:
                who = f" for {model}" if model else ""
                raise TaskvecError(
                    f"{method.name}: parameter {param.name!r} has no value{who} at tensor {name!r}; set it under the "
                    "model's parameters or the top-level parameters (a filter list needs a final entry without filter)"
                )
            return param.default
        return param.coerce(v, f"{method.name}: {param.name} at tensor {name!r}")

    params = {p.name: value(p, global_settings, None) for p in method.params}
    model_params = [
        {p.name: value(p, settings, inp.label) for p in method.model_params}
        for settings, inp in zip(model_settings, inputs)
    ]
    if seeds is not None:
        for mp, seed in zip(model_params, seeds):
            mp["_seed"] = _tensor_seed(seed, name)
    return model_params, params


def _model_seeds(seed: int, inputs: list[Input]) -> list[str]:
    """A random stream per model, named by the model (and its occurrence), not by its position in the recipe."""
    seen: dict[str, int] = {}
    keys = []
    for inp in inputs:
        seen[inp.label] = seen.get(inp.label, -1) + 1
        keys.append(f"{seed}\0{inp.label}\0{seen[inp.label]}")
    return keys


def _tensor_seed(model_key: str, tensor: str) -> int:
    digest = hashlib.blake2b(f"{model_key}\0{tensor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _global_scope(method: MergeMethod, resolved: dict) -> bool:
    if method.param("trim_scope") is None or not resolved:
        return False
    scopes = {params["trim_scope"] for _, params in resolved.values()}
    if len(scopes) > 1:
        raise TaskvecError(f"{method.name}: trim_scope must be the same for every tensor (filters or gradients set it "
                           "to both 'tensor' and 'global')")
    return scopes == {"global"}


def set_global_thresholds(method, resolved, plans, base, inputs, options) -> None:
    """trim_scope: global -- rank magnitudes over each whole task vector (two extra streaming passes, exact)."""
    names = [p.name for p in plans]
    per_model = {}
    for key in ("density", "gamma"):
        if method.param(key) is None:
            continue
        for i, inp in enumerate(inputs):
            values = {resolved[n][0][i][key] for n in names}
            if len(values) > 1:
                raise TaskvecError(f"{method.name}: trim_scope global needs one {key} per model, but {inp.label} has "
                                   f"{len(values)} different values across tensors (filters or gradients)")
            per_model.setdefault(i, {})[key] = values.pop()
    total = sum(math.prod(p.shape) for p in plans)
    ranks, spans = [], []
    for i in range(len(inputs)):
        density = per_model[i]["density"]
        if "gamma" in per_model[i]:  # breadcrumbs: keep ascending ranks [bottom, bottom + keep)
            keep = int(density * total) if density < 1 else total
            bottom = max(0, total - keep - int(per_model[i]["gamma"] * total)) if density < 1 else 0
            spans.append((bottom + 1, bottom + keep) if keep else None)
        else:  # ties: keep the k largest
            keep = keep_count(total, density)
            spans.append((total - keep + 1,) if keep else None)
        ranks.append(list(spans[-1] or ()))
    device = _device(options.device)

    def read_deltas(name):
        b = base.read(name).to(device=device, dtype=torch.float32)
        return [inp.delta(name, b, torch.float32, device) for inp in inputs]

    values = exact_ascending_ranks(names, read_deltas, ranks, options.workers or default_workers())
    for i, found in enumerate(values):
        if spans[i] is None:
            threshold = (math.inf, -math.inf) if "gamma" in per_model[i] else math.inf
        else:
            threshold = (found[0], found[1]) if "gamma" in per_model[i] else found[0]
        for n in names:
            resolved[n][0][i]["_threshold"] = threshold


def check_finite(name: str, tensor: torch.Tensor, inputs: list[Input]) -> torch.Tensor:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise TaskvecError(
            f"tensor {name!r}: the merged result has {bad} non-finite value(s) (inf or nan), from non-finite inputs "
            f"or an overflow in the output dtype {dtype_name(tensor.dtype)}; check the inputs ({', '.join(i.label for i in inputs)}), "
            "the weights, or use out_dtype float32 or bfloat16"
        )
    return tensor


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TaskvecError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def _refuse_overwriting_inputs(out: Path, checkpoints: list[Checkpoint], inputs: list[Input]) -> None:
    target = out.resolve()
    folders = [c.folder for c in checkpoints] + [getattr(i, "folder", None) or i.checkpoint.folder for i in inputs]
    for folder in folders:
        if folder is not None and (target == folder.resolve() or target in folder.resolve().parents):
            raise TaskvecError(f"{out}: is an input folder or contains one; write the merge somewhere else")

