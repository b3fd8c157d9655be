"""RAM, Reinforced Agent Merging (arXiv:2601.13572), and RAM+ (`ramplus_tl`): merging RL-trained models, whose task
vectors are sparse. Averaging them, as task arithmetic with equal weights does, halves an update only one model
made. RAM instead looks, entry by entry, at which task vectors changed it (|tau| >
epsilon):

    no model     the base's value (entries at most epsilon are dropped)
    one model    that model's change, whole (a unique entry)
    several      the mean of the changes of those models (a shared entry)

`ramplus_tl` (RAM+, tensor-local) also scales up each model's unique entries, by more for a model whose changes in
this tensor are mostly shared with others (whose unique part the averaging elsewhere would leave weak):

    rho_i = (# shared entries model i changed) / (# unique entries it changed),    lambda_i = 1 + r * min(rho_i, alpha)

rho and lambda are per tensor ("tensor-local"), as in mergekit 0.1.5, which both follow. RAM works entry by entry
(streamed in blocks of rows); RAM+ counts over the whole tensor.
"""

from __future__ import annotations

from ..lazy import torch
from . import MergeMethod, Param, Range, register

EPSILON = Param("epsilon", float, 1e-5, "a task-vector entry counts as changed where |tau| > epsilon", range=Range(0.0))
R = Param("r", float, 0.1, "RAM+: unique entries are scaled by 1 + r * min(rho, alpha)", range=Range(0.0))
ALPHA = Param("alpha", float, 0.2, "RAM+: the cap on rho, the shared-to-unique ratio of a model's changed entries",
              range=Range(0.0))


def changed(deltas: list[torch.Tensor], epsilon: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Where each task vector changed its entries, and how many task vectors changed each entry."""
    masks = [d.abs() > epsilon for d in deltas]
    count = torch.zeros(deltas[0].shape, dtype=torch.int32, device=deltas[0].device)
    for m in masks:
        count += m
    return masks, count


def merge_changes(deltas, masks, count, unique_scale: list[float] | None = None) -> torch.Tensor:
    """Shared entries: the mean of the changes; unique entries: the one change (times its model's scale)."""
    shared = count > 1
    divisor = torch.where(shared, count, 1).to(deltas[0].dtype)
    merged = torch.zeros_like(deltas[0])
    for i, (d, m) in enumerate(zip(deltas, masks)):
        kept = d * m
        if unique_scale is not None:
            kept = torch.where(shared, kept, kept * unique_scale[i])
        merged += kept / divisor
    return merged


def ram(base, deltas, models, params):
    deltas = list(deltas)
    masks, count = changed(deltas, params["epsilon"])
    return merge_changes(deltas, masks, count)


def unique_scales(masks: list[torch.Tensor], count: torch.Tensor, params) -> list[float]:
    """lambda_i = 1 + r * min(rho_i, alpha), rho_i = shared / unique changed entries of model i (the divisor at
    least epsilon, as in mergekit). A model with no unique entry has nothing to scale: its lambda is never used."""
    shared, unique = count > 1, count == 1
    scales = []
    for m in masks:
        n_shared, n_unique = int((m & shared).sum()), int((m & unique).sum())
        rho = n_shared / max(n_unique, params["epsilon"]) if n_unique else 0.0
        scales.append(1 + params["r"] * min(rho, params["alpha"]))
    return scales


def ramplus_tl(base, deltas, models, params):
    deltas = list(deltas)
    masks, count = changed(deltas, params["epsilon"])
    return merge_changes(deltas, masks, count, unique_scales(masks, count, params))


PAPER = "Reinforced Agent Merging, arXiv:2601.13572 (the reference mergekit 0.1.5 gives)"
register(
    MergeMethod(
        name="ram",
        description="per entry: a change only one task vector made is kept whole, shared changes are averaged",
        inputs="deltas",
        fn=ram,
        params=(EPSILON,),
        granularity="entry",
        paper=PAPER,
    )
)
register(
    MergeMethod(
        name="ramplus_tl",
        description="RAM+, tensor-local: RAM, unique changes scaled up by the model's shared-to-unique ratio",
        inputs="deltas",
        fn=ramplus_tl,
        params=(R, ALPHA, EPSILON),
        paper=PAPER,
    )
)
