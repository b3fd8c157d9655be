"""Run a merge: validate everything from headers, plan one job per tensor, stream them through the engine.

``merge_recipe`` runs a mergekit-style recipe and ``plan_recipe`` only plans it (``--dry-run``); ``merge_inputs``
is the shared core that the ``TaskVector`` API and ``taskvec apply`` use too.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .dry_run import PlanView, describe
from .dtypes import dtype_name, parse_dtype
from .engine import fused
from .engine.plan import MergePlan, TensorPlan, plan_merge
from .engine.reference import ReferenceMerger
from .engine.scheduler import DEFAULT_MEMORY_BUDGET, BufferPool, Job, RunStats, default_workers, execute
from .engine.statistics import with_global_selections
from .errors import TaskvecError
from .inputs import Input, ModelInput, StoredVectorInput, is_task_vector, open_input
from .io.checkpoint import Checkpoint, open_checkpoint
from .io.model_folder import copy_aux_files, model_card
from .io.writer import ShardedWriter, prepare_target
from .methods import MergeMethod
from .recipe import Recipe, input_specs, load_recipe, validate_recipe
from .store.base_check import BaseCheck
from .vocab import VocabAlignment, align_vocabularies


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
    force_base: bool = False  # a stored task vector into a base other than its own: warn instead of refusing


@dataclass
class MergeResult:
    path: Path
    stats: RunStats
    warnings: list[str] = field(default_factory=list)
    vocabulary: str | None = None  # how vocabularies were aligned (tokenizer_source), when they differed


def merge_recipe(recipe: Recipe | str | Path, out: str | Path, options: MergeOptions | None = None,
                 architecture: str | None = None) -> MergeResult:
    """Run a recipe (a parsed ``Recipe`` or a YAML path) and write a model folder at ``out``. `architecture` (a
    transformers class, e.g. LlamaForSequenceClassification) picks the config.json the output is loaded with."""
    options = options or MergeOptions()
    stacked = _slices(recipe)
    if stacked is not None:
        from .slices import merge_slices

        if architecture:
            raise TaskvecError("--architecture: not with slices (the output's config is the base's)")
        return merge_slices(*stacked, Path(out), options)
    prepare_target(Path(out), options.force)
    with _opened(recipe) as run:
        return merge_inputs(
            run.base, run.inputs, run.method, run.model_settings, run.global_settings, Path(out), options,
            out_dtype=run.out_dtype,
            card=model_card([(i.label, i.checkpoint.config()) for i in run.inputs]
                            + ([(run.base.label, run.base.config())] if run.base else []), run.method.name,
                            run.recipe.to_yaml(), Path(out)),
            tokenizer_folder=run.tokenizer_folder, vocab=run.vocab, architecture=architecture,
        )


def plan_recipe(recipe: Recipe | str | Path, options: MergeOptions | None = None) -> MergePlan:
    """What ``merge_recipe`` would do, tensor by tensor, from headers alone; nothing is written (``--dry-run``)."""
    options = options or MergeOptions()
    with _opened(recipe) as run:
        return make_plan(run.base, run.inputs, run.method, run.model_settings, run.global_settings, options,
                         run.out_dtype)


@dataclass
class _Run:
    recipe: Recipe
    method: MergeMethod
    base: Checkpoint | None
    inputs: list[Input]
    model_settings: list[dict]
    global_settings: dict
    out_dtype: torch.dtype | None
    tokenizer_folder: Path | None
    vocab: VocabAlignment | None = None  # models whose vocabularies differ, aligned by token (tokenizer_source)


@contextmanager
def _opened(recipe: Recipe | str | Path, opener=None) -> Iterator[_Run]:
    """A recipe validated and its checkpoints opened (headers only; or by ``opener(ref, search_dirs)``, which may
    hand out checkpoints held in memory); closed on exit."""
    opener = opener or open_checkpoint
    search: tuple[Path, ...] = ()
    if not isinstance(recipe, Recipe):
        search = (Path(recipe).resolve().parent,)
        recipe = load_recipe(recipe)
    method = validate_recipe(recipe)
    if recipe.slices is not None:
        raise TaskvecError("a slices recipe is merged by taskvec merge (merge_recipe); tune, apply and in-memory "
                           "merges take recipes with 'models'")
    base = None
    inputs: list[Input] = []
    vocab = None
    try:
        if recipe.base_model:
            if any(is_task_vector(d / recipe.base_model) for d in (Path("."),) + search):
                raise TaskvecError(f"base_model {recipe.base_model}: is a task vector; the base must be a model")
            base = opener(recipe.base_model, search)
        specs = input_specs(recipe, method, search)
        for s in specs:
            inputs.append(open_input(s.model, search, opener, base))
        if base is None and any(isinstance(i, StoredVectorInput) for i in inputs):
            raise TaskvecError(f"{method.name}: a task vector among 'models' needs a base_model to be added to")
        tokenizer_folder = None
        if recipe.tokenizer_source is not None:
            vocab = align_vocabularies(recipe.tokenizer_source, base, inputs, search, opener)
        if vocab is not None:
            base = vocab.wrap(base) if base is not None else None
            for inp in inputs:
                inp.checkpoint = vocab.wrap(inp.checkpoint)
            tokenizer_folder = vocab.tokenizer_folder
        elif recipe.tokenizer_source not in (None, "base"):
            tokenizer_folder = opener(recipe.tokenizer_source, search).folder
        out_dtype = recipe.out_dtype or recipe.dtype
        yield _Run(recipe, method, base, inputs, [s.parameters or {} for s in specs], recipe.parameters or {},
                   parse_dtype(out_dtype) if out_dtype else None, tokenizer_folder, vocab)
    finally:
        if vocab is not None:
            vocab.close()
        for inp in inputs:
            inp.close()
        if base is not None:
            base.close()


def make_plan(base: Checkpoint | None, inputs: list[Input], method: MergeMethod, model_settings: list[dict],
              global_settings: dict, options: MergeOptions, out_dtype: torch.dtype | None = None,
              fingerprint=None) -> MergePlan:
    """The plan of a merge with these options: each tensor's resolved parameters and path (fused or reference)."""
    device = _device(options.device)
    fast = fused.runs(method, base, inputs, device, options.compute_dtype, fingerprint)
    return plan_merge(base, inputs, method, model_settings, global_settings, out_dtype=out_dtype,
                      on_missing=options.on_missing, seed=options.seed,
                      fusable=lambda plan: fast and fused.covers(method, plan))


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
    vocab: VocabAlignment | None = None,
    architecture: str | None = None,
) -> MergeResult:
    """Merge ``inputs`` into ``base`` with ``method``; settings are recipe-style (scalars, gradients, filters)."""
    _refuse_overwriting_inputs(out, [base] if base else [], inputs)
    run = _prepare(base, inputs, method, model_settings, global_settings, options, out_dtype, vocab)
    reference_checkpoint = base if base is not None else run.plan.inputs[0].checkpoint
    specs = [(t.name, t.out_dtype, t.shape) for t in run.plan.tensors]
    config = config_for(architecture, [base] if base else [], run.plan.inputs) if architecture else None
    with ShardedWriter(out, specs, options.shard_size, force=options.force) as writer:
        copy_aux_files(writer, reference_checkpoint, tokenizer_folder, dtype_name(out_dtype) if out_dtype else None,
                       vocab.config_updates() if vocab is not None else None, config)
        if card:
            writer.write_text("README.md", card)
        stats, notes = run.execute(writer)
        path = writer.commit()
    return MergeResult(path, stats, notes, vocab.summary() if vocab is not None else None)


def merge_to_memory(recipe: Recipe | str | Path, options: MergeOptions | None = None, opener=None,
                    into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The merged model as a dict name -> tensor, computed exactly as ``merge_recipe`` would write it (same plan,
    same executors, so the same bits), without writing anything. ``opener(ref, search_dirs)`` may supply
    checkpoints (a tuner passes ones held in memory); ``into`` is a previous result whose tensors are overwritten
    in place instead of allocating a new model."""
    options = options or MergeOptions(progress=False)
    with _opened(recipe, opener) as run:
        prepared = _prepare(run.base, run.inputs, run.method, run.model_settings, run.global_settings, options,
                            run.out_dtype, run.vocab)
        writer = MemoryWriter(into)
        prepared.execute(writer)
    return writer.tensors


class MemoryWriter:
    """What the engine writes a merged tensor to, kept in memory: a copy (an executor may reuse its buffer)."""

    def __init__(self, into: dict[str, torch.Tensor] | None = None):
        self.tensors = into if into is not None else {}
        self._lock = threading.Lock()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        old = self.tensors.get(name)
        if old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype:
            old.copy_(tensor)
            return
        copy = tensor.clone()
        with self._lock:
            self.tensors[name] = copy


@dataclass
class _Prepared:
    """A planned merge and its executors, ready to stream into a writer."""

    plan: MergePlan
    jobs: list[Job]
    method: MergeMethod
    options: MergeOptions
    workers: int
    single_threaded: bool
    base_check: BaseCheck | None
    vocab: VocabAlignment | None = None

    def execute(self, writer) -> tuple[RunStats, list[str]]:
        # block-parallel elementwise work runs best one thread per worker; statistics (TIES) use torch's own threads
        threads = torch.get_num_threads()
        if self.single_threaded:
            torch.set_num_threads(1)
        if self.vocab is not None:
            writer = _Patching(writer, self.vocab)
        try:
            stats = execute(self.jobs, writer, self.workers, label=self.method.name, progress=self.options.progress,
                            memory_budget=self.options.memory_budget)
        finally:
            torch.set_num_threads(threads)
        notes = list(self.plan.warnings)
        if self.base_check is not None:  # refuses a wrong base (before the output is committed) unless allowed
            for note in self.base_check.finish():
                notes.append(note)
                warnings.warn(note)
        return stats, notes


def _prepare(base: Checkpoint | None, inputs: list[Input], method: MergeMethod, model_settings: list[dict],
             global_settings: dict, options: MergeOptions, out_dtype: torch.dtype | None,
             vocab: VocabAlignment | None = None) -> _Prepared:
    """Plan the merge (with whole-vector selections, when asked) and make one job per output tensor."""
    device = _device(options.device)
    workers = options.workers or default_workers()
    base_check = BaseCheck.for_inputs(base, inputs, options.force_base)  # names, shapes, dtypes: now
    fingerprint = base_check.fingerprinter if base_check is not None else None
    plan = make_plan(base, inputs, method, model_settings, global_settings, options, out_dtype, fingerprint)
    inputs = plan.inputs  # in the plan's canonical order
    needs_base = base is not None and (
        method.base != "weighted" or fingerprint is not None or not all(type(i) is ModelInput for i in inputs)
    )
    if plan.global_scope:
        plan = with_global_selections(plan, lambda t, rows: _deltas(base, inputs, t, rows, device), workers)
    reference = ReferenceMerger(method, base, inputs, device, options.compute_dtype, needs_base, fingerprint)
    fast = None
    if any(t.fused for t in plan.tensors):
        fast = fused.FusedMerger(method, base, inputs, BufferPool(options.memory_budget // 2))

    def job(t: TensorPlan) -> Job:
        memory = _job_memory(t, reference, fast)
        if not t.merge:
            return Job(t.name, t.shape, t.out_dtype, t.read_bytes, lambda: reference.copy(t), memory)
        if t.fused:
            return Job(t.name, t.shape, t.out_dtype, t.read_bytes, lambda: fast.merge(t), memory, fast.outputs.give)
        return Job(t.name, t.shape, t.out_dtype, t.read_bytes, lambda: reference.merge(t), memory)

    single = (method.streaming or fast is not None) and workers > 1
    return _Prepared(plan, [job(t) for t in plan.tensors], method, options, workers, single, base_check, vocab)


class _Patching:
    """A writer that sets the vocabulary rows only some models have (their average) before writing."""

    def __init__(self, writer, vocab: VocabAlignment):
        self.writer, self.vocab = writer, vocab

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.writer.write(name, self.vocab.patch(name, tensor))


def config_for(architecture: str, bases: list[Checkpoint], inputs: list[Input]) -> dict:
    """The config.json of the first model (the base first) whose ``architectures`` lists `architecture`, with only
    that class listed: the output then loads as that class with its settings (a classifier's labels, say)."""
    checkpoints = bases + [inp.checkpoint for inp in inputs]
    for checkpoint in checkpoints:
        config = checkpoint.config()
        if isinstance(config, dict) and architecture in (config.get("architectures") or []):
            return {**config, "architectures": [architecture]}
    listed = sorted({a for c in checkpoints for a in ((c.config() or {}).get("architectures") or [])})
    raise TaskvecError(f"--architecture {architecture}: no merged model's config.json lists it (they list "
                       f"{', '.join(listed) or 'none'}); pick one of those")


def _job_memory(t: TensorPlan, reference: ReferenceMerger, fast: fused.FusedMerger | None) -> int:
    """The executor's estimate of the bytes a tensor's job holds until its result is written."""
    if not t.merge:
        return t.numel * (t.source_dtype.itemsize + t.out_dtype.itemsize)
    return fast.memory(t) if t.fused else reference.memory(t)


def describe_recipe(recipe: Recipe | str | Path, options: MergeOptions | None = None) -> PlanView:
    """``taskvec merge --dry-run``: the plan as rows and totals, from headers alone; nothing is written. A slices
    recipe gives one view per slice: ``describe_slices``."""
    options = options or MergeOptions()
    if _slices(recipe) is not None:
        raise TaskvecError("a slices recipe has one plan per slice: use describe_slices")
    with _opened(recipe) as run:
        plan = make_plan(run.base, run.inputs, run.method, run.model_settings, run.global_settings, options,
                         run.out_dtype)
        view = describe_plan(plan, options)
        if run.vocab is not None:
            view.totals["vocabulary"] = run.vocab.summary()
        return view


def describe_views(recipe: Recipe | str | Path, options: MergeOptions | None = None) -> list[tuple[str | None, PlanView]]:
    """What ``--dry-run`` prints: one untitled plan, or one titled plan per slice."""
    if _slices(recipe) is not None:
        return describe_slices(recipe, options)
    return [(None, describe_recipe(recipe, options))]


def describe_slices(recipe: Recipe | str | Path, options: MergeOptions | None = None) -> list[tuple[str, PlanView]]:
    """``--dry-run`` for a slices recipe: per slice, a title (its output layers and sources) and its plan, with the
    slice's own layer numbers (0 = the slice's first layer)."""
    from .slices import merge_slices

    return merge_slices(*_slices(recipe), None, options or MergeOptions(), dry_run=True)


def describe_plan(plan: MergePlan, options: MergeOptions) -> PlanView:
    reference = ReferenceMerger(plan.method, plan.base, plan.inputs, _device(options.device),
                                options.compute_dtype, plan.base is not None, None)
    fast = fused.FusedMerger(plan.method, plan.base, plan.inputs) if any(t.fused for t in plan.tensors) else None
    return describe(plan, options.workers or default_workers(), options.memory_budget,
                    lambda t: _job_memory(t, reference, fast))


def _slices(recipe: Recipe | str | Path) -> tuple | None:
    """(recipe, search folders, opener, method) when the recipe stacks slices, else None."""
    search: tuple[Path, ...] = ()
    if not isinstance(recipe, Recipe):
        search = (Path(recipe).resolve().parent,)
        recipe = load_recipe(recipe)
    if recipe.slices is None:
        return None
    return recipe, search, open_checkpoint, validate_recipe(recipe)


def _deltas(base: Checkpoint, inputs: list[Input], t: TensorPlan, rows, device) -> list[torch.Tensor]:
    """Every input's float32 task vector for rows [start, stop) of a tensor (zero for an input that lacks it)."""
    b = base.read(t.name, rows).to(device=device, dtype=torch.float32)
    return [torch.zeros_like(b) if k in t.lacking else inp.delta(t.name, b, torch.float32, device, rows)
            for k, inp in enumerate(inputs)]


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

