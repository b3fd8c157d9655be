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

from .engine.blocks import abs_flat, block_numel, block_start, row_blocks
from .dtypes import dtype_name, parse_dtype
from .engine.scheduler import DEFAULT_MEMORY_BUDGET, BufferPool, Job, RunStats, default_workers, execute
from .errors import TaskvecError
from .engine.finite import check_finite
from .fingerprint import Fingerprinter, new_digest, update
from .engine.fused import FusedMerger
from .global_trim import global_scope, set_global_thresholds
from .inputs import Input, ModelInput, StoredVectorInput, is_task_vector, open_input
from .io.checkpoint import Checkpoint, open_checkpoint
from .io.model_folder import copy_aux_files, model_card
from .io.writer import ShardedWriter, prepare_target
from .methods import REQUIRED, MergeMethod
from .engine.plan import TensorPlan, plan_tensors
from .recipe import Recipe, input_specs, load_recipe, validate_recipe
from .parameters import count_layers, evaluate, position


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
    workers = options.workers or default_workers()
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
        method.base != "weighted" or fingerprint is not None or not all(type(i) is ModelInput for i in inputs)
    )

    merger = TensorMerger(method, base, inputs, device, options.compute_dtype, needs_base, fingerprint)
    fused = None
    if FusedMerger.applies(method, base, inputs, device, options.compute_dtype, fingerprint):
        fused = FusedMerger(method, base, inputs, BufferPool(options.memory_budget // 2))

    def job(plan: TensorPlan) -> Job:
        if not plan.merge:
            return Job(plan.name, plan.shape, plan.out_dtype, plan.read_bytes, lambda: merger.copy(plan),
                       math.prod(plan.shape) * (plan.source_dtype.itemsize + plan.out_dtype.itemsize))
        model_params, params = resolved[plan.name]
        if fused is not None and fused.covers(plan, params):
            return Job(plan.name, plan.shape, plan.out_dtype, plan.read_bytes,
                       lambda: fused.merge(plan, model_params, params), fused.memory(plan),
                       fused.outputs.give)
        return Job(plan.name, plan.shape, plan.out_dtype, plan.read_bytes,
                   lambda: merger.merge(plan, model_params, params), merger.memory(plan))

    if global_scope(method, resolved):
        set_global_thresholds(method, resolved, [p for p in plans if p.merge], base, inputs, device, workers)

    specs = [(p.name, p.out_dtype, p.shape) for p in plans]
    with ShardedWriter(out, specs, options.shard_size, force=options.force) as writer:
        copy_aux_files(writer, reference.folder, tokenizer_folder, dtype_name(out_dtype) if out_dtype else None)
        if card:
            writer.write_text("README.md", card)
        # block-parallel elementwise work runs best one thread per worker; statistics (TIES) use torch's own threads
        threads = torch.get_num_threads()
        if (method.streaming or fused is not None) and workers > 1:
            torch.set_num_threads(1)
        try:
            stats = execute([job(p) for p in plans], writer, workers, label=method.name, progress=options.progress,
                            memory_budget=options.memory_budget)
        finally:
            torch.set_num_threads(threads)
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


class TensorMerger:
    """Merges one tensor at a time, in blocks of rows where the method's granularity allows.

    Per block it reads the rows of the base and of every input, hands float32 copies to the method, and stores the
    cast result in the output tensor: float32 temporaries stay the size of a block. A method with a per-tensor
    statistic (TIES' threshold) first gets it over all blocks, one model at a time; the base is then read once,
    whole, in its stored dtype, and sliced.
    """

    def __init__(self, method, base, inputs, device, compute_dtype, needs_base, fingerprint):
        self.method, self.base, self.inputs = method, base, inputs
        self.device, self.cd, self.needs_base, self.fingerprint = device, compute_dtype, needs_base, fingerprint

    def copy(self, plan: TensorPlan) -> torch.Tensor:
        src = plan.copy_from.read(plan.name)
        if plan.copy_from is self.base and self.fingerprint is not None:
            self.fingerprint.add(plan.name, src)
        return src.to(plan.out_dtype)

    def memory(self, plan: TensorPlan) -> int:
        """Peak bytes of a merge job: output, plus the whole base and one |task vector| for a statistic, plus the
        float32 temporaries of a block (every input, its pruned copy and the masks)."""
        numel = math.prod(plan.shape)
        block = block_numel(plan.shape, row_blocks(plan.shape, self.method.granularity)[0])
        held = 3 if self.method.streaming else 2 * len(self.inputs) + 4
        total = numel * plan.out_dtype.itemsize + held * block * self.cd.itemsize
        if self.method.statistic is not None:
            total += numel * (plan.source_dtype.itemsize + self.cd.itemsize)
        return total

    def merge(self, plan: TensorPlan, model_params: list[dict], params: dict) -> torch.Tensor:
        name, method = plan.name, self.method
        blocks = row_blocks(plan.shape, method.granularity)
        whole_base = None
        if self.needs_base and (method.statistic is not None or blocks == [None]):
            whole_base = self.base.read(name)
        digest = new_digest() if self.fingerprint is not None and self.needs_base else None
        if digest is not None and whole_base is not None:
            update(digest, whole_base)

        def base_rows(rows, hash_it=False):
            if not self.needs_base:
                return None
            if whole_base is not None:
                raw = whole_base if rows is None else whole_base[rows[0]:rows[1]]
            else:
                raw = self.base.read(name, rows)
                if hash_it and digest is not None:
                    update(digest, raw)
            return raw.to(device=self.device, dtype=self.cd)

        if method.statistic is not None:
            model_params = [self._with_statistic(name, blocks, mp, params, inp, base_rows)
                            for mp, inp in zip(model_params, self.inputs)]
        out = None if blocks == [None] else torch.empty(plan.shape, dtype=plan.out_dtype)
        for rows in blocks:
            b = base_rows(rows, hash_it=True)
            mps = model_params
            if (method.random or method.statistic is not None) and rows is not None:  # the block's flat start
                mps = [{**mp, "_offset": block_start(plan.shape, rows)} for mp in mps]
            if method.inputs == "deltas":
                xs = (inp.delta(name, b, self.cd, self.device, rows) for inp in self.inputs)
            else:
                xs = (inp.weights(name, b, self.cd, self.device, rows) for inp in self.inputs)
            merged = method.fn(b, xs if method.streaming else list(xs), mps, params)
            if method.inputs == "deltas":
                merged = merged.add_(b)
            if out is None:
                out = check_finite(name, merged.to(plan.out_dtype), self.inputs).cpu()
            else:  # cast while copying into place, then check the stored values
                check_finite(name, out[rows[0]:rows[1]].copy_(merged), self.inputs)
        if digest is not None:
            self.fingerprint.add_digest(name, plan.source_dtype, plan.shape, digest.hexdigest())
        return out

    def _with_statistic(self, name, blocks, model_params, params, inp, base_rows) -> dict:
        flat = abs_flat(self.base.info(name).shape, blocks,
                        lambda rows: inp.delta(name, base_rows(rows), self.cd, self.device, rows), self.cd, self.device)
        return {**model_params, **self.method.statistic(flat, model_params, params)}


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

