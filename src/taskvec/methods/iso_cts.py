"""Isotropic merging in common and task-specific subspaces, Iso-CTS (Marczak et al., ICML 2025): Iso-C's common
subspace keeps only its top directions, and each task adds its own top directions outside it, so that a task the
sum hardly shows still gets directions of its own. Then the directions are orthogonalised and the spectrum flattened.

Per matrix of rank r, with T task vectors and Σ wᵢτᵢ = U·diag(S)·Vᵀ: the common subspace is the top k of U, V with
k = int(r · common_space_fraction) moved so that r − k divides by T (as the reference code does); each task's
τᵢ − U_k·U_kᵀ·τᵢ gives its top (r − k)/T directions; with U', V' all directions side by side and S' their singular
values:  τ = lambda · mean(S') · polar(U')·polar(V')ᵀ. Other tensors: the mean of the task vectors.
Departure as Iso-C's: numerically zero directions are dropped before orthogonalising.
"""

from __future__ import annotations

from ..lazy import torch
from . import LAMBDA, MergeMethod, Param, Range, register
from .spectral import UNIT_WEIGHT, is_matrix, mean, polar, svd, total, weighted

COMMON = Param("common_space_fraction", float, 0.8, "share of the rank given to the common subspace (the paper's "
               "default 0.8)", range=Range(0.0, 1.0))


def common_size(rank: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(common directions, directions per task): int(rank · fraction), adjusted so the rest divides by the tasks."""
    common = int(rank * fraction)
    per_task = round((rank - common) / tasks)
    return rank - per_task * tasks, per_task


def iso_cts(base, deltas, models, params):
    deltas = weighted(list(deltas), models)
    if not is_matrix(deltas[0]):
        return mean(deltas).mul_(params["lambda"])
    summed = total(deltas)
    common, per_task = common_size(min(summed.shape), len(deltas), params["common_space_fraction"])
    u, s, vh = svd(summed, top=common)
    us, ss, vhs = [u], [s], [vh]
    for d in deltas:
        d = d.double()
        u_t, s_t, vh_t = svd(d - u @ (u.T @ d), top=per_task)
        us.append(u_t), ss.append(s_t), vhs.append(vh_t)
    s = torch.cat(ss)
    if s.numel() == 0:
        return summed.zero_()
    merged = (polar(torch.cat(us, dim=1)) * s.mean()) @ polar(torch.cat(vhs, dim=0))
    return merged.mul_(params["lambda"]).to(summed.dtype)


register(
    MergeMethod(
        name="iso_cts",
        description="isotropic merging (Iso-CTS): common plus task-specific singular directions, flat spectrum",
        inputs="deltas",
        fn=iso_cts,
        params=(LAMBDA, COMMON),
        model_params=(UNIT_WEIGHT,),
        paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging (arXiv:2502.04959)",
    )
)
