"""The shared skeleton of the task-vector methods (TIES, DARE, Breadcrumbs, DELLA): sparsify each task vector,
weight it, optionally keep only the entries that agree with an elected sign, sum, normalise, scale by lambda.

    merged = lambda * sum_i w_i * m_i * s_i(tau_i) / (sum_i w_i * m_i  if normalize)

s_i is the sparsifier (with its rescaling), m_i the agreement mask (all ones without consensus). Under consensus,
entries a task vector leaves at zero count neither in the sum nor in the divisor: TIES' disjoint mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..lazy import torch
from . import (ANY, DENSITY, LAMBDA, NEAR_ZERO, WEIGHT, Kernel, MergeMethod, ModelArgs, Param, weight_total,
               weights_of)
from .sparsify import elect_positive

# (task vector, its model's args, global params) -> the sparsified (and rescaled) task vector
Sparsifier = Callable[["torch.Tensor", ModelArgs, Mapping[str, Any]], "torch.Tensor"]


def merge_deltas(deltas: Sequence[torch.Tensor], models: Sequence[ModelArgs], params: Mapping[str, Any],
                 sparsify: Sparsifier | None, consensus: str | None) -> torch.Tensor:
    """In place on the task vectors it is given (the engine hands over fresh tensors): a few block-sized buffers."""
    weights = weights_of(models)
    weighted = [(sparsify(d, m, params) if sparsify else d).mul_(w) for d, m, w in zip(deltas, models, weights)]
    normalize = params["normalize"]
    if consensus == "sum" and not normalize:
        merged, divisor = _agreeing_sum(weighted), 1.0
    elif consensus:
        positive = elect_positive(weighted, consensus)
        merged = torch.zeros_like(weighted[0])
        divisor = torch.zeros_like(weighted[0])
        for x, w in zip(weighted, weights):
            agree = ((x > 0) == positive) & (x != 0)  # torch.where here is 5x slower on the CPU
            merged.add_(x * agree)
            divisor.add_(agree, alpha=w)
    else:
        merged = weighted[0]
        for x in weighted[1:]:
            merged.add_(x)
        divisor = weight_total(weights)
    if normalize:
        if isinstance(divisor, torch.Tensor):  # the agreeing weights' sum: the same near-zero rule as weight_total
            divisor[divisor.abs() < NEAR_ZERO] = 1
        merged /= divisor
    return merged.mul_(params["lambda"])


def _agreeing_sum(weighted: list[torch.Tensor]) -> torch.Tensor:
    """TIES' elect-and-merge, sign elected by total mass, without masks: the positive parts and the negative parts
    are summed apart, and each entry takes the sum whose side outweighs the other (ties to +). Same result as the
    masked loop, in fewer passes (used when no divisor is needed)."""
    pos = weighted[0].clamp(min=0)
    neg = weighted[0].clamp(max=0)
    for x in weighted[1:]:
        pos.add_(x.clamp(min=0))
        neg.add_(x.clamp(max=0))
    return torch.where((pos + neg) >= 0, pos, neg)


def common_params(normalize: bool, rescale: bool | None, consensus: bool) -> tuple[Param, ...]:
    params = [
        LAMBDA,
        Param("normalize", bool, normalize, "divide by the sum of the weights (of agreeing models, under consensus)"),
    ]
    if rescale is not None:
        params.append(Param("rescale", bool, rescale, "rescale the survivors of pruning (see the method)"))
    if consensus:
        params.append(Param("consensus_method", str, "sum", "elect each entry's sign by total mass (sum, as in the "
                            "TIES paper) or by number of task vectors (count)", choices=("sum", "count")))
    return tuple(params)


MODEL_PARAMS = (WEIGHT, DENSITY)


def negation_advice(values: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    """Under sign election with `normalize`, an entry is divided by the sum of the agreeing weights: a lone
    negative weight divides its own sign away (weight -1 on tau gives +tau; mergekit does the same)."""
    if values["weight"] < 0 and params["normalize"]:
        return ("a negative weight with normalize: the disjoint mean divides by the (negative) weights that agree, "
                "so the task vector is added, not subtracted; for negation use task_arithmetic")
    return None


def task_vector_method(name: str, description: str, sparsify: Sparsifier | None, consensus: bool, normalize: bool,
                       rescale: bool | None, model_params: tuple[Param, ...], paper: str, random: bool = False,
                       extra: tuple[Param, ...] = (), granularity: str = "entry", selection: str | None = None,
                       kernel: dict | None = None, check=None) -> MergeMethod:
    """A method of this family: a sparsifier, with or without sign election, and its parameters. `kernel`: the
    fused kernels' sparsifier and the parameter values they handle beyond the family's common ones."""

    def merge(base, deltas, models, params):
        return merge_deltas(deltas, models, params, sparsify, params["consensus_method"] if consensus else None)

    merge.__name__ = name
    fused = None
    if kernel is not None:
        handles = {"weight": ANY, "density": ANY, "lambda": ANY, "normalize": ANY, **kernel["handles"]}
        if consensus:
            handles["consensus_method"] = lambda v: v == "sum"
        fused = Kernel("sparse_consensus", merge, handles, sparsifier=kernel["sparsifier"], consensus=consensus)
    return MergeMethod(
        name=name, description=description, inputs="deltas", fn=merge,
        params=common_params(normalize, rescale, consensus) + extra, model_params=model_params, paper=paper,
        random=random, ignored=("int8_mask",), granularity=granularity, selection=selection, kernel=fused,
        check=check, advice=negation_advice if consensus else None,
    )
