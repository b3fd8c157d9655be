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

from ..lazy import torch
from . import LAMBDA, MergeMethod, Param, Range, register
from .spectral import UNIT_WEIGHT, is_matrix, mean, polar, svd, weighted

FRACTION = Param("fraction", float, 0.0, "share of each task's rank it keeps (0: 1/number of models, the paper's)",
                 range=Range(0.0, 1.0))


def tsv(base, deltas, models, params):
    deltas = weighted(list(deltas), models)
    if not is_matrix(deltas[0]):
        return mean(deltas).mul_(params["lambda"])
    rank = min(deltas[0].shape)
    k = max(1, int(rank * (params["fraction"] or 1.0 / len(deltas))))
    us, ss, vhs = [], [], []
    for d in deltas:
        u, s, vh = svd(d, top=k)
        us.append(u), ss.append(s), vhs.append(vh)
    s = torch.cat(ss)
    if s.numel() == 0:  # every task vector is zero here
        return torch.zeros_like(deltas[0])
    merged = (polar(torch.cat(us, dim=1)) * s) @ polar(torch.cat(vhs, dim=0))
    return merged.mul_(params["lambda"]).to(deltas[0].dtype)


register(
    MergeMethod(
        name="tsv",
        description="task singular vectors (TSV-M): each task's top singular directions, orthogonalised, summed",
        inputs="deltas",
        fn=tsv,
        params=(LAMBDA, FRACTION),
        model_params=(UNIT_WEIGHT,),
        paper="Gargiulo et al. 2025, Task Singular Vectors (arXiv:2412.00081)",
    )
)
