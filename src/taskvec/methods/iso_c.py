"""Isotropic merging in the common subspace, Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum's singular
vectors with a flat spectrum. Task arithmetic's sum is dominated by a few directions that the largest tasks share;
giving every direction the same weight lets the smaller tasks' directions count.

Per matrix, with Σ wᵢτᵢ = U·diag(S)·Vᵀ:  τ = lambda · mean(S) · U·Vᵀ. Other tensors: the mean of the task vectors.
The paper picks lambda on validation data; 1.0 is the data-free default (tune it with `taskvec tune`).
Departure: directions with numerically zero singular values are dropped (their vectors are arbitrary), and the mean
is over the singular values kept -- the same as the paper's for the full-rank updates of real fine-tunes.
"""

from __future__ import annotations

from . import LAMBDA, MergeMethod, register
from .spectral import UNIT_WEIGHT, grams, in_memory, is_matrix, isotropic_map, mean, times, total, weighted


def iso_c(base, deltas, models, params):
    deltas = list(deltas)
    if not is_matrix(deltas[0]):
        return mean(weighted(deltas, models)).mul_(params["lambda"])
    return in_memory(iso_c_rows, deltas, models, params)


def iso_c_rows(rows, models, params):
    """Two passes over a tall matrix's rows: the Gram matrix of the weighted sum, then each block of the sum times
    the isotropic map V·diag(lambda·mean(S)/S)·Vᵀ (so the block becomes its rows of lambda·mean(S)·U·Vᵀ)."""
    rows = rows.weighted(models)
    (gram,) = grams(rows, lambda deltas: [total(deltas)])
    return times(rows, total, isotropic_map(gram, rows.shape[0], params["lambda"]))


register(
    MergeMethod(
        name="iso_c",
        description="isotropic merging (Iso-C): the task-arithmetic sum's singular vectors, flat spectrum",
        inputs="deltas",
        fn=iso_c,
        by_rows=iso_c_rows,
        params=(LAMBDA,),
        model_params=(UNIT_WEIGHT,),
        paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging (arXiv:2502.04959)",
    )
)
