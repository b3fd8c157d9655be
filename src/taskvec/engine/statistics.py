"""What some methods need before a tensor's blocks are merged: each model's magnitude selection -- over the tensor
(TIES' top k, Breadcrumbs' band) or over its whole task vector (``trim_scope: global``) -- and, with ``rescale``,
the L1 factor that restores a pruned tensor's mass. All of it is counted by streaming blocks of rows through
``taskvec.selection``: memory stays at a block of every input, never a whole tensor."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..methods import MergeMethod, ModelArgs
from ..methods.sparsify import l1_factor, l1_masses
from ..selection import Band, TopK, TorchMagnitudes, band, band_ranks, ranked, top_k, top_k_rank
from .blocks import block_start, row_blocks
from .plan import MergePlan, TensorPlan

# read(rows, which) -> the task vectors of models `which`, rows [start, stop) (None: whole), float32
ReadDeltas = Callable[[object, Sequence[int]], list[torch.Tensor]]


def with_statistics(method: MergeMethod, plan: TensorPlan, blocks: list, read: ReadDeltas) -> tuple[ModelArgs, ...]:
    """The tensor's models with their selections (those the plan does not already hold) and L1 factors."""
    models = list(plan.models)
    need = [i for i, m in enumerate(models) if m.selection is None]
    if need:
        source = TorchMagnitudes(blocks, lambda rows: read(rows, need))
        densities = [models[i]["density"] for i in need]
        if method.selection == "top_k":
            found = top_k(source, plan.numel, densities, exact_zeros=False)
        else:
            found = band(source, plan.numel, densities, [models[i]["gamma"] for i in need])
        for i, selection in zip(need, found):
            models[i] = replace(models[i], selection=selection)
    if plan.params.get("rescale"):
        masses = [[0.0, 0.0] for _ in models]
        everyone = list(range(len(models)))
        for rows in blocks:
            for i, delta in zip(everyone, read(rows, everyone)):
                before, after = l1_masses(delta, models[i].selection, block_start(plan.shape, rows))
                masses[i][0] += before
                masses[i][1] += after
        models = [replace(m, l1_scale=l1_factor(*mass)) for m, mass in zip(models, masses)]
    return tuple(models)


def with_global_selections(plan: MergePlan, read: Callable[[TensorPlan, object], list[torch.Tensor]],
                           workers: int = 1) -> MergePlan:
    """trim_scope: global -- each model's selection over its whole task vector, exact, in two streaming counting
    passes; every entry tied with a threshold is kept."""
    merged = plan.merged
    total = sum(t.numel for t in merged)
    units = [(t, rows) for t in merged for rows in row_blocks(t.shape, "entry")]
    source = TorchMagnitudes(units, lambda unit: read(*unit), workers)
    first = merged[0].models  # one density (and gamma) per model: checked when planned
    selections: list[TopK | Band] = []
    if plan.method.selection == "top_k":
        ranks = [top_k_rank(total, m["density"]) for m in first]
        found = ranked(source, [[r] if r else [] for r in ranks])
        selections = [TopK.at_least(f[0].value if f else math.inf) for f in found]
    else:
        spans = [band_ranks(total, m["density"], m["gamma"]) for m in first]
        wanted = [[bottom + 1, bottom + keep] if keep and m["density"] < 1 else []
                  for (bottom, keep), m in zip(spans, first)]
        found = ranked(source, wanted)
        for f, m, (_, keep) in zip(found, first, spans):
            if m["density"] >= 1:
                selections.append(Band.between(-math.inf, math.inf))
            else:
                selections.append(Band.between(f[0].value, f[1].value) if keep else Band.between(math.inf, -math.inf))
    tensors = [replace(t, models=tuple(replace(m, selection=s) for m, s in zip(t.models, selections)))
               if t.merge else t for t in plan.tensors]
    return replace(plan, tensors=tensors)
