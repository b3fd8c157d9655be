"""Task Singular Vectors merge, TSV-M (Gargiulo et al., CVPR 2025): each task keeps its top singular directions,
those of all tasks are made mutually orthogonal (the closest orthogonal matrices), and the kept singular values
rebuild the merged update. Interference between tasks lives in overlapping singular vectors; orthogonalising them
removes it without any data.

Per matrix, with T task vectors of rank r: each keeps k = int(r · fraction) directions (fraction 1/T by default, as
in the paper: together they fill the rank), U = [U₁ₖ … U_Tₖ], V likewise, S their singular values, and

    τ = lambda · polar(U) · diag(S) · polar(V)ᵀ

Other tensors (biases, norms) are the mean of the task vectors. lambda is 1.0 by default, the paper's setting.
"""

from __future__ import annotations

from operator import itemgetter

from ..lazy import torch
from . import LAMBDA, MergeMethod, Param, Range, register
from .spectral import (UNIT_WEIGHT, grams, in_memory, is_matrix, mean, polar, polar_times, rank_floor, spectrum, times,
                       weighted)

FRACTION = Param("fraction", float, 0.0, "share of each task's rank it keeps (0: 1/number of models, the paper's)",
                 range=Range(0.0, 1.0))


def tsv(base, deltas, models, params):
    deltas = list(deltas)
    if not is_matrix(deltas[0]):
        return mean(weighted(deltas, models)).mul_(params["lambda"])
    return in_memory(tsv_rows, deltas, models, params)


def tsv_rows(rows, models, params):
    """Three passes over a tall matrix's rows: each task's Gram matrix (its top singular directions V_t, S_t), then
    the Gram matrix of U = [U₁ … U_T] (its polar factor; U_t's rows are τ_t's rows times V_t/S_t), then the merged
    rows polar(U)·diag(S)·polar(V)ᵀ·lambda."""
    rows = rows.weighted(models)
    height, width = rows.shape
    k = max(1, int(width * (params["fraction"] or 1.0 / len(models))))
    spectra = [spectrum(g, rank_floor(height)) for g in grams(rows, list)]
    spectra = [(v[:, :k], s[:k]) for v, s in spectra]
    s = torch.cat([s for _, s in spectra])
    if s.numel() == 0:  # every task vector is zero here
        return times(rows, itemgetter(0), torch.zeros(width, width, dtype=torch.float64, device=s.device))
    maps = [v / s for v, s in spectra]

    def left(deltas):  # rows of U
        return torch.cat([d.double() @ m for d, m in zip(deltas, maps)], dim=1)

    right = (s[:, None] * polar(torch.cat([v.T for v, _ in spectra]))).mul_(params["lambda"])
    return polar_times(rows, left, right)


register(
    MergeMethod(
        name="tsv",
        description="task singular vectors (TSV-M): each task's top singular directions, orthogonalised, summed",
        inputs="deltas",
        fn=tsv,
        by_rows=tsv_rows,
        params=(LAMBDA, FRACTION),
        model_params=(UNIT_WEIGHT,),
        paper="Gargiulo et al. 2025, Task Singular Vectors (arXiv:2412.00081)",
    )
)
