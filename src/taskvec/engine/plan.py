"""The plan: what a merge will do, tensor by tensor, decided from file headers alone.

One ``TensorPlan`` per output tensor holds everything a worker needs -- where the tensor comes from, its shape and
dtypes, each input's resolved parameters (``ModelArgs``: weight, density, seed, selection...), the method's global
parameters, and which path computes it (copied, the fused kernels, or the methods' reference code). Workers get
parameters only through it. ``taskvec merge --dry-run`` prints it.

Which tensors: every floating tensor that the base and all inputs provide is merged. Integer and boolean tensors
(position ids, masks) are copied from the base, never averaged -- also when a fine-tuned model lacks them
(transformers 5 no longer saves ``position_ids``). A tensor that some inputs lack is an error, unless
``on_missing="carry"``: then it is copied from the base, or else from the first model that has it (for models with
extra modules such as a vision tower or a reward head).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import TaskvecError
from ..inputs import Input
from ..io.checkpoint import Checkpoint, TensorInfo
from ..methods import REQUIRED, MergeMethod, ModelArgs
from ..parameters import count_layers, evaluate, position

ON_MISSING = ("error", "carry")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: copied from ``copy_from``, or merged from every input with ``models`` and ``params``."""

    name: str
    shape: tuple[int, ...]
    source_dtype: torch.dtype  # the reference checkpoint's stored dtype
    out_dtype: torch.dtype
    read_bytes: int
    input_dtypes: tuple[torch.dtype, ...] = ()  # per input, as stored (merged tensors)
    copy_from: Checkpoint | None = None
    models: tuple[ModelArgs, ...] = ()  # per input, in the plan's input order
    params: Mapping[str, Any] = field(default_factory=dict)
    fused: bool = False  # computed by the fused kernels (else, if merged, by the method's reference code)
    lacking: tuple[int, ...] = ()  # inputs without this tensor (--carry-missing): they keep the base's value, τ = 0

    @property
    def merge(self) -> bool:
        return self.copy_from is None

    @property
    def path(self) -> str:
        return "copy" if not self.merge else "fused" if self.fused else "reference"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def write_bytes(self) -> int:
        return self.numel * self.out_dtype.itemsize


@dataclass
class MergePlan:
    """A whole merge: the method, the inputs in canonical order, and one plan per output tensor (on-disk order)."""

    method: MergeMethod
    base: Checkpoint | None
    inputs: list[Input]
    tensors: list[TensorPlan]
    out_dtype: torch.dtype | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def merged(self) -> list[TensorPlan]:
        return [t for t in self.tensors if t.merge]

    @property
    def global_scope(self) -> bool:
        """Selections over each whole task vector (trim_scope: global), found by counting passes before merging."""
        return any(t.params.get("trim_scope") == "global" for t in self.merged)

    def read_bytes(self) -> int:
        return sum(t.read_bytes for t in self.tensors)

    def write_bytes(self) -> int:
        return sum(t.write_bytes for t in self.tensors)


def plan_merge(
    base: Checkpoint | None,
    inputs: list[Input],
    method: MergeMethod,
    model_settings: list[dict[str, Any]],
    global_settings: dict[str, Any],
    *,
    out_dtype: torch.dtype | None = None,
    on_missing: str = "error",
    seed: int = 0,
    fusable: Callable[[TensorPlan], bool] = lambda plan: False,
) -> MergePlan:
    """Plan a merge from headers: tensors, resolved parameters per tensor and model, and each tensor's path.
    Inputs are put in a canonical order (by label), so reordering models in a recipe changes nothing."""
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].label)
    inputs, model_settings = [inputs[i] for i in order], [model_settings[i] for i in order]
    reference = base if base is not None else inputs[0].checkpoint
    num_layers = count_layers(reference.names(), reference.config())
    seeds = _model_seeds(seed, inputs) if method.random else None
    advice: dict[str, str] = {}
    tensors = []
    for plan in plan_tensors(base, inputs, out_dtype, on_missing, reference):
        if plan.merge:
            models, params = resolve(method, plan.name, num_layers, model_settings, global_settings, inputs, seeds,
                                     advice)
            plan = replace(plan, models=models, params=params)
            plan = replace(plan, fused=fusable(plan))
        tensors.append(plan)
    _check_scope(method, tensors, inputs)
    notes = [f"{method.name}: {label}: {text}" for label, text in advice.items()]
    for note in notes:
        warnings.warn(note)
    return MergePlan(method, base, inputs, tensors, out_dtype, notes)


def resolve(method: MergeMethod, name: str, num_layers: int, model_settings: list[dict], global_settings: dict,
            inputs: list[Input], seeds: list[str] | None = None,
            advice: dict[str, str] | None = None) -> tuple[tuple[ModelArgs, ...], dict[str, Any]]:
    """Per-model and global parameter values for one tensor: model setting, then top-level setting, then default;
    each checked (ranges, and the method's checks across a model's parameters)."""
    t = position(name, num_layers)

    def value(param, settings: dict, model: str | None):
        v = evaluate(settings.get(param.name), name, t)
        if v is None and settings is not global_settings:
            v = evaluate(global_settings.get(param.name), name, t)
        who = f" for {model}" if model else ""
        if v is None:
            if param.default is REQUIRED:
                raise TaskvecError(
                    f"{method.name}: parameter {param.name!r} has no value{who} at tensor {name!r}; set it under the "
                    "model's parameters or the top-level parameters (a filter list needs a final entry without filter)"
                )
            return param.default
        return param.coerce(v, f"{method.name}: {param.name}{who} at tensor {name!r}")

    params = {p.name: value(p, global_settings, None) for p in method.params}
    models = []
    for i, (settings, inp) in enumerate(zip(model_settings, inputs)):
        values = {p.name: value(p, settings, inp.label) for p in method.model_params}
        if method.check is not None and (problem := method.check(values, params)):
            raise TaskvecError(f"{method.name}: {inp.label} at tensor {name!r}: {problem}")
        if advice is not None and method.advice is not None and (note := method.advice(values, params)):
            advice.setdefault(inp.label, note)
        models.append(ModelArgs(values, seed=None if seeds is None else tensor_seed(seeds[i], name)))
    return tuple(models), params


def _check_scope(method: MergeMethod, tensors: list[TensorPlan], inputs: list[Input]) -> None:
    """trim_scope global ranks each whole task vector: one scope for every tensor, one density (and gamma) per
    model."""
    merged = [t for t in tensors if t.merge]
    scopes = {t.params.get("trim_scope") for t in merged} - {None}
    if len(scopes) > 1:
        raise TaskvecError(f"{method.name}: trim_scope must be the same for every tensor (filters or gradients set it "
                           "to both 'tensor' and 'global')")
    if scopes != {"global"}:
        return
    for key in ("density", "gamma"):
        if method.param(key) is None:
            continue
        for i, inp in enumerate(inputs):
            values = {t.models[i][key] for t in merged}
            if len(values) > 1:
                raise TaskvecError(f"{method.name}: trim_scope global needs one {key} per model, but {inp.label} "
                                   f"has {len(values)} different values across tensors (filters or gradients)")


def _model_seeds(seed: int, inputs: list[Input]) -> list[str]:
    """A random stream per model, named by the model (and its occurrence), not by its position in the recipe."""
    seen: dict[str, int] = {}
    keys = []
    for inp in inputs:
        seen[inp.label] = seen.get(inp.label, -1) + 1
        keys.append(f"{seed}\0{inp.label}\0{seen[inp.label]}")
    return keys


def tensor_seed(model_key: str, tensor: str) -> int:
    digest = hashlib.blake2b(f"{model_key}\0{tensor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def plan_tensors(
    base: Checkpoint | None,
    inputs: list[Input],
    out_dtype: torch.dtype | None = None,
    on_missing: str = "error",
    reference: Checkpoint | None = None,
) -> list[TensorPlan]:
    """The output's tensors in the reference's on-disk order (the base, else `reference`, else the first input),
    without parameters yet."""
    if on_missing not in ON_MISSING:
        raise TaskvecError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    reference = base if base is not None else (reference or inputs[0].checkpoint)
    ref_label = f"base {reference.label}" if base is not None else f"{reference.label}"
    ordered = sorted(reference.tensors.values(), key=lambda t: (str(t.file), t.offset))
    extra: dict[str, tuple[Input, TensorInfo]] = {}
    for inp in inputs:
        for name in inp.names():
            if name not in reference and name not in extra:
                extra[name] = (inp, inp.info(name))
    missing: list[str] = []
    plans: list[TensorPlan] = []
    for ref in ordered:
        holders, lacking = [], []
        for inp in inputs:
            info = inp.info(ref.name)
            if info is None:
                if not inp.absent_means_zero and ref.dtype.is_floating_point:
                    lacking.append(inp)
                continue
            if info.shape != ref.shape:
                raise TaskvecError(
                    f"tensor {ref.name!r}: shape {list(info.shape)} in {info.file} but {list(ref.shape)} in "
                    f"{ref.file}; " + _shape_advice(ref.name, info.shape, ref.shape)
                )
            holders.append(info)
        missing += [f"{ref.name!r} is in {ref_label} but not in {inp.label}" for inp in lacking]
        # carried: a model without the tensor keeps the base's value (its task vector is zero there), so the
        # tensor merges over the models that have it; without a base it is copied from the first input
        keeps_base = on_missing == "carry" and base is not None and any(i.info(ref.name) for i in inputs)
        merge = ref.dtype.is_floating_point and (not lacking or keeps_base)
        plan = _plan(ref, None if merge else reference, out_dtype, holders, merge,
                     [inp.info(ref.name) for inp in inputs])
        if merge and lacking:
            plan = replace(plan, lacking=tuple(k for k, inp in enumerate(inputs) if inp in lacking))
        plans.append(plan)
    for name, (owner, info) in extra.items():
        if owner.absent_means_zero and base is not None:
            raise TaskvecError(
                f"tensor {name!r}: task vector {owner.label} changes it, but the base {base.label} has no such tensor"
            )
        missing.append(f"{name!r} is in {owner.label} but not in {ref_label}")
        plans.append(_plan(info, owner.checkpoint, out_dtype, [], False, []))
    if missing and on_missing == "error":
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TaskvecError(
            f"tensor {missing[0]}{more}. Models must have the same tensors; to copy such tensors from the model "
            "that has them (extra modules such as a vision tower or reward head), pass --carry-missing"
        )
    return plans


def _shape_advice(name: str, shape: tuple[int, ...], other: tuple[int, ...]) -> str:
    from ..vocab import ROW_MODULES, module_of

    if module_of(name) in ROW_MODULES and shape[1:] == other[1:]:
        return ("the vocabularies differ: align them by token with tokenizer_source: union (or base, or a model) in "
                "the recipe")
    return "merging needs models of the same architecture fine-tuned from the same base"


def _plan(ref: TensorInfo, copy_from, out_dtype, holders: list[TensorInfo], merge: bool,
          infos: list[TensorInfo | None]) -> TensorPlan:
    floating = ref.dtype.is_floating_point
    dtype = out_dtype if (floating and out_dtype is not None) else ref.dtype
    read = ref.nbytes + (sum(h.nbytes for h in holders) if merge else 0)
    dtypes = tuple(i.dtype if i is not None else ref.dtype for i in infos) if merge else ()
    return TensorPlan(ref.name, ref.shape, ref.dtype, dtype, read, dtypes, None if merge else copy_from)
