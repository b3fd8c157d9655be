"""Merge methods: pure functions over one parameter tensor of every input, registered by their recipe name.

A method sees float32 tensors of one parameter and its resolved parameters -- never files, names or models. A
``deltas`` method receives task vectors (model minus base) and returns the merged task vector, which the engine
adds to the base; a ``weights`` method receives the models' weights and returns the merged weights.
Adding a method is adding one module here that calls ``register``.
"""

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..errors import TaskvecError

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A recipe parameter: its name, type, default (or REQUIRED) and one line of help."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

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
                return float(value)
        elif self.type is str and isinstance(value, str):
            if self.choices and value not in self.choices:
                raise TaskvecError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        raise TaskvecError(f"{where}: {self.name} must be {self.type.__name__}, got {value!r}")


# fn(base, tensors, model_params, params) -> merged tensor (a task vector for "deltas" methods)
MethodFn = Callable[[torch.Tensor | None, list[torch.Tensor], list[dict[str, Any]], dict[str, Any]], torch.Tensor]


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
    random: bool = False  # draws random masks: gets a per-model `_seed`
    granularity: Literal["entry", "row", "tensor"] = "tensor"
    # statistic(|task vector| of one model over the whole tensor, flat; that model's params; global params) -> dict
    # of private parameters added to that model's params
    statistic: Callable[[torch.Tensor, dict, dict], dict] | None = None
    # True: the method folds its inputs one at a time (a weighted sum), so it is handed an iterator and at most one
    # input tensor is in memory at once, however many models are merged
    streaming: bool = False
    ignored: tuple[str, ...] = field(default=())  # mergekit parameters accepted for compatibility, without effect

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params + self.model_params if p.name == name), None)


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


WEIGHT = Param("weight", float, REQUIRED, "coefficient of this model (negative subtracts it)")
NORMALIZE_OFF = Param("normalize", bool, False, "divide by the sum of the weights")
NORMALIZE_ON = Param("normalize", bool, True, "divide by the sum of the weights")


def weighted_sum(tensors, weights: list[float]) -> torch.Tensor:
    """sum_i w_i * x_i, accumulated in one buffer; `tensors` may be a lazy iterator. Each product is rounded before
    it is added (no fused multiply-add), as the fused kernels compute it, so both give the same bits."""
    out = None
    for x, w in zip(tensors, weights):
        out = torch.mul(x, w) if out is None else out.add_(torch.mul(x, w))
    return out


def weight_total(weights: list[float]) -> float:
    """The normalisation divisor; a (near) zero sum is left at 1, as mergekit does, instead of dividing by zero."""
    total = sum(weights)
    return 1.0 if abs(total) < 1e-8 else total
