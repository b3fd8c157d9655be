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

from operator import itemgetter

from ..lazy import torch
from . import LAMBDA, MergeMethod, Param, Range, register
from .spectral import (UNIT_WEIGHT, grams, in_memory, is_matrix, mean, polar, polar_times, rank_floor, spectrum, svd,
                       times, total, weighted)

COMMON = Param("common_space_fraction", float, 0.8, "share of the rank given to the common subspace (the paper's "
               "default 0.8)", range=Range(0.0, 1.0))


def common_size(rank: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(common directions, directions per task): int(rank · fraction), adjusted so the rest divides by the tasks."""
    common = int(rank * fraction)
    per_task = round((rank - common) / tasks)
    return rank - per_task * tasks, per_task


def iso_cts(base, deltas, models, params):
    deltas = list(deltas)
    if not is_matrix(deltas[0]):
        return mean(weighted(deltas, models)).mul_(params["lambda"])
    if deltas[0].shape[0] >= deltas[0].shape[1]:
        return in_memory(iso_cts_rows, deltas, models, params)
    return _wide(weighted(deltas, models), params)


def iso_cts_rows(rows, models, params):
    """Five passes over a tall matrix's rows: the sum's Gram matrix (its top directions V_k, S_k; U_k's rows are the
    sum's rows times V_k/S_k), then U_kᵀτ_t for each task, then the Gram matrices of each τ_t − U_k·U_kᵀτ_t (the
    task's own directions), then polar(U') and the output rows lambda·mean(S')·polar(U')·polar(V')ᵀ."""
    rows = rows.weighted(models)
    height, width = rows.shape
    tasks = len(models)
    common, per_task = common_size(width, tasks, params["common_space_fraction"])
    v, s = spectrum(grams(rows, lambda deltas: [total(deltas)])[0], rank_floor(height))
    v, s = v[:, :common], s[:common]
    to_common = v / s

    def shared(deltas):  # rows of U_k
        return total(deltas).double() @ to_common

    overlap = [torch.zeros(v.shape[1], width, dtype=torch.float64, device=v.device) for _ in range(tasks)]
    for _, _, deltas in rows.blocks():
        u = shared(deltas)
        for t in range(tasks):
            overlap[t].addmm_(u.T, deltas[t].double())

    def own(deltas):  # rows of each τ_t − U_k·U_kᵀτ_t, one task at a time
        u = shared(deltas)
        return (d.double() - u @ o for d, o in zip(deltas, overlap))

    spectra = [spectrum(g, rank_floor(height)) for g in grams(rows, own)]
    spectra = [(v, s)] + [(v_t[:, :per_task], s_t[:per_task]) for v_t, s_t in spectra]
    values = torch.cat([s for _, s in spectra])
    if values.numel() == 0:  # every task vector is zero here
        return times(rows, itemgetter(0), torch.zeros(width, width, dtype=torch.float64, device=v.device))
    maps = [v_t / s_t for v_t, s_t in spectra[1:]]

    def left(deltas):  # rows of U' = [U_k, U_1 … U_T]
        u = shared(deltas)
        return torch.cat([u] + [(d.double() - u @ o) @ m for d, o, m in zip(deltas, overlap, maps)], dim=1)

    right = polar(torch.cat([v_t.T for v_t, _ in spectra])).mul_(values.mean() * params["lambda"])
    return polar_times(rows, left, right)


def _wide(deltas, params):
    """A matrix with fewer rows than columns, in memory: the common subspace is still the sum's left (row-space)
    singular vectors, as in the paper, which the row passes of a tall matrix cannot reach, so it is not streamed."""
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
        by_rows=iso_cts_rows,
        params=(LAMBDA, COMMON),
        model_params=(UNIT_WEIGHT,),
        paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging (arXiv:2502.04959)",
    )
)
