"""Merge methods: pure functions over one parameter tensor of every input, registered by their recipe name.

A method sees float32 tensors of one parameter (or a block of its rows) and, per input, a ``ModelArgs`` -- its
resolved recipe parameters plus what the planner found for it (random seed, magnitude selection) -- never files,
names or models. A ``deltas`` method receives task vectors (model minus base) and returns the merged task vector,
which the engine adds to the base; a ``weights`` method receives the models' weights and returns the merged weights.
Adding a method is adding one module here that calls ``register``.

Nothing here imports torch at import time, so ``taskvec methods`` answers at once.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..errors import TaskvecError
from ..lazy import torch
from ..selection import Selection

REQUIRED = object()


@dataclass(frozen=True)
class Range:
    """The values a numeric parameter accepts, e.g. (0, 1] for a density."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"


@dataclass(frozen=True)
class Param:
    """A recipe parameter: its name, type, default (or REQUIRED), one line of help, and the values it accepts."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    range: Range | None = None

    def coerce(self, value: Any, where: str) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif self.type is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
                if not math.isfinite(value):
                    raise TaskvecError(f"{where}: {self.name} must be a finite number, got {value}")
                if self.range is not None and value not in self.range:
                    raise TaskvecError(f"{where}: {self.name} must be in {self.range}, got {value:g}")
                return value
        elif self.type is int:
            if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer():
                value = int(value)
                if self.range is not None and value not in self.range:
                    raise TaskvecError(f"{where}: {self.name} must be in {self.range}, got {value}")
                return value
        elif self.type is str and isinstance(value, str):
            if self.choices and value not in self.choices:
                raise TaskvecError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        raise TaskvecError(f"{where}: {self.name} must be {self.type.__name__}, got {value!r}")


@dataclass(frozen=True)
class ModelArgs:
    """One input, as a method sees it for one tensor: its resolved per-model parameters (``args["weight"]``) and
    what the planner found for it. ``offset`` is the flat index, in its tensor, of the block being merged."""

    values: Mapping[str, Any]
    seed: int | None = None  # the tensor's random stream for this model (random methods)
    selection: Selection | None = None  # magnitude selection over the tensor, or the whole task vector
    l1_scale: float | None = None  # L1 rescale factor over the whole tensor (magnitude pruning with rescale)
    offset: int = 0

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def at(self, offset: int) -> ModelArgs:
        return replace(self, offset=offset)

    def require_seed(self) -> int:
        if self.seed is None:
            raise RuntimeError("a random method was planned without a seed")  # a bug, never a user error
        return self.seed


# fn(base, tensors, models, params) -> merged tensor (a task vector for "deltas" methods)
MethodFn = Callable[["torch.Tensor | None", Sequence["torch.Tensor"], Sequence[ModelArgs], Mapping[str, Any]],
                    "torch.Tensor"]


def ANY(value: Any) -> bool:
    """A kernel handles every value of this parameter."""
    return True


@dataclass(frozen=True)
class Kernel:
    """What the fused CPU kernels (engine/fused.py) compute for a method, and for which parameter values.

    ``handles`` lists every parameter the kernel honours, each with a test of the values it supports; a parameter
    it does not list -- say one added to the method later -- sends the tensor to the reference path, so the fast
    path never silently ignores an option. ``reference`` is the function the kernel reproduces bit for bit: a
    method whose ``fn`` was replaced (a wrapper, a variant) is never fused."""

    kind: Literal["weighted_models", "weighted_deltas", "sparse_consensus"]
    reference: MethodFn
    handles: Mapping[str, Callable[[Any], bool]]
    sparsifier: Literal["all", "magnitude", "random"] = "all"
    consensus: bool = False

    @property
    def uses_base(self) -> bool:
        """Whether the kernel reads the base (task vectors); linear's averages the models alone."""
        return self.kind != "weighted_models"

    def covers(self, fn: MethodFn, params: Mapping[str, Any], models: Sequence[ModelArgs]) -> bool:
        if fn is not self.reference:
            return False
        values = list(params.items()) + [kv for m in models for kv in m.values.items()]
        return all(k in self.handles and self.handles[k](v) for k, v in values)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    description: str
    inputs: Literal["deltas", "weights"]
    fn: MethodFn
    params: tuple[Param, ...] = ()
    model_params: tuple[Param, ...] = ()
    base: Literal["required", "optional", "weighted"] = "required"  # weighted: an ordinary weighted input
    min_models: int = 1  # besides the base
    max_models: int | None = None
    paper: str = ""
    random: bool = False  # draws random masks: each model gets a seed per tensor
    granularity: Literal["entry", "row", "tensor"] = "tensor"
    # a magnitude selection each model needs over the whole tensor before its blocks are merged (TIES: the top k,
    # Breadcrumbs: a band); with `rescale`, also the L1 factor that restores the pruned vector's mass
    selection: Literal["top_k", "band"] | None = None
    # True: the method folds its inputs one at a time (a weighted sum), so it is handed an iterator and at most one
    # input tensor is in memory at once, however many models are merged
    streaming: bool = False
    ignored: tuple[str, ...] = field(default=())  # mergekit parameters accepted for compatibility, without effect
    # a tall matrix's merge as passes over blocks of its rows (spectral.TaskRows -> output row blocks): the engine
    # then holds one block and the method's small factors, never the whole tensor (the subspace methods)
    by_rows: Callable[..., Any] | None = None
    kernel: Kernel | None = None  # what the fused kernels cover (None: always the reference path)
    # checks that tie a model's parameters together (density + gamma <= 1...): a message, or None when fine
    check: Callable[[Mapping[str, Any], Mapping[str, Any]], str | None] | None = None
    # warnings about a combination that runs but likely is not what the user meant, per model: message or None
    advice: Callable[[Mapping[str, Any], Mapping[str, Any]], str | None] | None = None

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params + self.model_params if p.name == name), None)

    def fused(self, params: Mapping[str, Any], models: Sequence[ModelArgs]) -> bool:
        """Whether the fused kernels compute this tensor's merge exactly as ``fn`` would."""
        return self.kernel is not None and self.kernel.covers(self.fn, params, models)


_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _REGISTRY:
        raise RuntimeError(f"merge method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get_method(name: str) -> MergeMethod:
    _load_all()
    if name not in _REGISTRY:
        raise TaskvecError(f"merge_method: unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_methods() -> list[MergeMethod]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


FINITE = Range()
WEIGHT = Param("weight", float, REQUIRED, "coefficient of this model (negative subtracts it)", range=FINITE)
LAMBDA = Param("lambda", float, 1.0, "scale applied to the merged task vector", range=FINITE)
NORMALIZE_OFF = Param("normalize", bool, False, "divide by the sum of the weights")
NORMALIZE_ON = Param("normalize", bool, True, "divide by the sum of the weights")
UNIT = Range(0.0, 1.0)
DENSITY = Param("density", float, 1.0, "fraction of the task vector's entries kept", range=Range(0.0, 1.0, low_open=True))
NEAR_ZERO = 1e-8  # a divisor below this (a sum of weights, or of agreeing weights) is taken as 1, as mergekit does


def weighted_sum(tensors, weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i * x_i, accumulated in one buffer; `tensors` may be a lazy iterator. Each product is rounded before
    it is added (no fused multiply-add), as the fused kernels compute it, so both give the same bits."""
    out = None
    for x, w in zip(tensors, weights):
        out = torch.mul(x, w) if out is None else out.add_(torch.mul(x, w))
    return out


def weight_total(weights: Sequence[float]) -> float:
    """The normalisation divisor; a (near) zero sum is left at 1, as mergekit does, instead of dividing by zero."""
    total = sum(weights)
    return 1.0 if abs(total) < NEAR_ZERO else total


def weights_of(models: Sequence[ModelArgs]) -> list[float]:
    return [m["weight"] for m in models]
