"""Consensus merging (Wang et al., ICML 2024, "Localizing Task Information for Improved Model Merging and
Compression"): keep only the entries of the task-arithmetic sum that at least k tasks care about. An entry a single
task cares about is selfish (it helps that task, interferes with the rest); an entry no task cares about is a
catastrophic one (noise). Both are dropped.

Task t cares about an entry (its TALL mask) where |τ_t| > mask_lambda_t · |τ_MTL − τ_t|, with τ_MTL = Σ wᵢτᵢ:
its own change outweighs what the other tasks add there. Then

    τ = lambda · τ_MTL · [number of tasks that care ≥ k]

Entry by entry, so it streams in blocks like task arithmetic. k = 2 is the paper's; the paper picks mask_lambda per
task on validation data, from 0.2 to 0.6; 0.4, the middle of that range, is the data-free default here (tune it with
`taskvec tune`). Note what it implies: n tasks that change an entry equally each hold 1/n of the sum, so they count
only while mask_lambda < 1/(n - 1).
"""

from __future__ import annotations

from ..errors import TaskvecError
from ..lazy import torch
from . import LAMBDA, MergeMethod, Param, Range, register
from .spectral import UNIT_WEIGHT, total, weighted

MASK_LAMBDA = Param("mask_lambda", float, 0.4, "a task cares about an entry where |tau_t| > mask_lambda * "
                    "|tau_MTL - tau_t| (per model)", range=Range(0.0, None))
K = Param("k", int, 2, "keep entries at least k tasks care about (2: drop selfish and catastrophic weights)",
          range=Range(1, None))


def consensus(base, deltas, models, params):
    deltas = weighted(list(deltas), models)
    if params["k"] > len(deltas):
        raise TaskvecError(f"consensus: k = {params['k']} tasks must agree, but only {len(deltas)} model(s) are "
                           "merged; lower k or merge more models")
    summed = total(deltas)
    votes = torch.zeros(summed.shape, dtype=torch.int32, device=summed.device)
    for d, m in zip(deltas, models):
        votes += d.abs() > (summed - d).abs_().mul_(m["mask_lambda"])
    return summed.mul_(votes >= params["k"]).mul_(params["lambda"])


register(
    MergeMethod(
        name="consensus",
        description="consensus merging: the task-arithmetic sum where at least k tasks' TALL masks agree",
        inputs="deltas",
        fn=consensus,
        params=(LAMBDA, K),
        model_params=(UNIT_WEIGHT, MASK_LAMBDA),
        min_models=2,
        paper="Wang et al. 2024, Localizing Task Information for Improved Model Merging (arXiv:2405.07813)",
        granularity="entry",
    )
)
