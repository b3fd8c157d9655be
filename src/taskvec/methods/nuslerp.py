"""NuSLERP: SLERP between two models with weights instead of t (t = w_2 / (w_1 + w_2)), row-wise or flattened;
with a base, it interpolates the two task vectors and adds the result to the base.

A vector of (near) zero norm has no direction -- common with a base: a tensor one fine-tune left frozen has a zero
task vector -- so it is interpolated linearly ((1 - t) * 0 + t * v, not sin(t * pi/2) * v as the spherical formula
would give; mergekit 0.1.5 does the latter).
"""

from __future__ import annotations

from ..lazy import torch
from . import WEIGHT, MergeMethod, Param, register

NORM_EPS = 1e-7


def nuslerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool,
                    eps: float = 1e-8) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise and v0.dim() > 1:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    n0 = torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    n1 = torch.linalg.vector_norm(v1, dim=-1, keepdim=True)
    cos = ((v0 / n0.clamp(min=NORM_EPS)) * (v1 / n1.clamp(min=NORM_EPS))).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = ((1 - cos.square()) <= eps**2) | (n0 <= NORM_EPS) | (n1 <= NORM_EPS)
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if row_wise and not flatten and result.dim() > 1:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp(base, weights, models, params):
    w0, w1 = (m["weight"] for m in models)
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    v0, v1 = weights
    row_wise, flatten = params["nuslerp_row_wise"], params["nuslerp_flatten"]
    if base is None:
        return nuslerp_tensors(t, v0, v1, row_wise, flatten)
    return base + nuslerp_tensors(t, v0 - base, v1 - base, row_wise, flatten)


register(
    MergeMethod(
        name="nuslerp",
        description="SLERP of two models (or of their task vectors, given a base) weighted by `weight`",
        inputs="weights",
        fn=nuslerp,
        params=(
            Param("nuslerp_row_wise", bool, False, "without flatten: interpolate vectors along dim 0 instead of the last"),
            Param("nuslerp_flatten", bool, True, "interpolate the whole tensor as one vector"),
        ),
        model_params=(WEIGHT,),
        base="optional",
        min_models=2,
        max_models=2,
        paper="mergekit's NuSLERP (SLERP generalised to weights and task vectors)",
    )
)
