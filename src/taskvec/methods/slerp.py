"""SLERP: spherical interpolation from the base (t = 0) to one other model (t = 1), per tensor.

The angle comes from the tensors flattened and normalised; the interpolation uses the tensors themselves. Nearly
parallel tensors (|cos| > 0.9995) are interpolated linearly, where the spherical formula is unstable, and so is a
tensor whose norm is (near) zero, which has no direction: spherical would give sin(pi/4) = 0.707 of the other at
t = 0.5 instead of half of it. (mergekit 0.1.5 takes the spherical branch there.)
"""

from __future__ import annotations

from ..lazy import torch
from . import REQUIRED, UNIT, MergeMethod, Param, register

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return v0.clone()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na <= EPS or nb <= EPS:
        return (1 - t) * v0 + t * v1
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin_theta) * v0 + (torch.sin(t * theta) / sin_theta) * v1


def slerp(base, weights, models, params):
    return slerp_tensors(params["t"], base, weights[0])


register(
    MergeMethod(
        name="slerp",
        description="spherical interpolation between the base (t=0) and one other model (t=1)",
        inputs="weights",
        fn=slerp,
        params=(Param("t", float, REQUIRED, "interpolation factor: 0 is the base, 1 the other model", range=UNIT),),
        max_models=1,
        paper="Shoemake 1985, Animating rotation with quaternion curves (SLERP); used for LLMs by mergekit",
    )
)
