"""Karcher mean (arXiv:2603.04972, as mergekit cites it): merge models by their centre of mass on the sphere, not
in flat space.

Per tensor, each model's weights are a length times a direction. The merged direction is the Karcher (Riemannian)
mean of the directions on the unit sphere -- the point with the least sum of squared arc lengths to them -- and the
merged length is the mean of the lengths. Averaging directions on the sphere, unlike a linear average, does not
shrink the merge towards the origin when the models point apart.
Every input counts equally, and there is no per-model weight; a `base_model` is one more input, as in mergekit
(where karcher has no notion of a base).

The mean is found by the classic fixed-point iteration (Karcher 1977; Buss & Fillmore 2001): start from the
normalised Euclidean mean of the directions; at the current estimate, average the log maps of the directions (the
tangent vectors pointing at each, as long as its arc); walk that far along the average (the exponential map);
repeat `max_iter` times at most, stopping once the step is shorter than `tol`. A direction within `tol` of the
estimate adds nothing to a step. Inputs whose norm is at most `tol` have no direction: they are left out of the
direction (their near-zero length still enters the mean length); if every input is, the result is zero.

Computed in float32 (float64 for float64 inputs), with mergekit 0.1.5's thresholds, so the outputs match its.
"""

from __future__ import annotations

from ..lazy import torch
from . import MergeMethod, Param, Range, register

MAX_ITER = Param("max_iter", int, 10, "fixed-point steps at most", range=Range(0, None))
TOL = Param("tol", float, 1e-5, "stop when a step is shorter than this (radians); also the norm below which an input "
            "has no direction", range=Range(0.0, None))


def _norm(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.vector_norm(x.to(dtype))


def log_map_mean(mean: torch.Tensor, units: list[torch.Tensor], alphas: list[float], tol: float) -> torch.Tensor:
    """The weighted average of the tangent vectors at `mean` that point at each unit vector, as long as its arc."""
    step = torch.zeros_like(mean)
    for alpha, unit in zip(alphas, units):
        cos = torch.dot(mean.reshape(-1), unit.reshape(-1)).clamp(-1.0, 1.0)
        angle = torch.arccos(cos)
        if angle.item() < tol:
            continue
        step += alpha * (angle / torch.sin(angle)) * (unit - cos * mean)
    return step


def karcher_direction(units: list[torch.Tensor], alphas: list[float], max_iter: int, tol: float,
                      dtype: torch.dtype) -> torch.Tensor:
    """The Karcher mean of unit vectors with weights `alphas` (summing to 1), by fixed-point iteration."""
    mean = torch.zeros_like(units[0])
    for alpha, unit in zip(alphas, units):
        mean += alpha * unit
    length = _norm(mean, dtype)
    mean = units[0].clone() if length.item() < tol else (mean / length).to(mean.dtype)
    for _ in range(max_iter):
        step = log_map_mean(mean, units, alphas, tol)
        size = _norm(step, dtype)
        if size.item() < tol:
            break
        mean = (torch.cos(size) * mean + torch.sin(size) * (step / size)).to(mean.dtype)  # the exponential map
        length = _norm(mean, dtype)
        if length.item() > tol:  # back onto the sphere: rounding drifts
            mean = (mean / length).to(mean.dtype)
    return mean


def karcher_tensors(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [_norm(t, dtype) for t in tensors]
    kept = [i for i, n in enumerate(norms) if n.item() > tol]  # the inputs that have a direction
    if not kept:
        return torch.zeros_like(tensors[0])
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in kept]
    direction = karcher_direction(units, [1.0 / len(kept)] * len(kept), max_iter, tol, dtype)
    share = 1.0 / len(tensors)
    length = sum(share * n for n in norms)  # the mean of every input's length, the directionless ones' too
    return length * direction


def karcher(base, weights, models, params):
    return karcher_tensors(list(weights), params["max_iter"], params["tol"])


register(
    MergeMethod(
        name="karcher",
        description="Karcher mean: the models' directions averaged on the sphere, their mean norm as the length",
        inputs="weights",
        fn=karcher,
        params=(MAX_ITER, TOL),
        base="weighted",
        paper="Karcher mean merging, arXiv:2603.04972 (the reference mergekit 0.1.5 gives)",
    )
)
