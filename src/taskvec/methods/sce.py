"""SCE (Wan et al., 2024, FuseChat): Select, Calculate, Erase. A task-vector merge that takes its weights from the
task vectors themselves, so it needs no per-model weight. Per tensor, with task vectors tau_1 .. tau_n:

    Select     keep the entries where the models disagree most: the top `select_topk` fraction, by variance across
               the models, of the entries whose variance is not zero (1.0, the default, keeps everything). An entry
               every model changed alike has no variance and is dropped: SCE keeps what tells the models apart.
    Calculate  each model's weight is its selected task vector's mean square, normalised to sum to 1: the model
               that moved this tensor most counts most.
    Erase      elect each entry's sign by the sum of the selected task vectors (TIES) and drop the entries of the
               other sign.

    tau = sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6)      (m_i: entry i survived the erase)

As in mergekit 0.1.5, and worth knowing: when the mean squares sum below 1e-6 -- an absolute threshold, reached by
task vectors whose entries are around 1e-3 or smaller, common for LLM fine-tunes -- every model gets the same weight,
so SCE then is TIES' disjoint mean of the selected entries. taskvec does the same. Ties in variance at the selection's
edge go to the earliest entries (mergekit's top-k leaves them to the sort).
"""

from __future__ import annotations

from ..lazy import torch
from ..selection import CUT_ALL, TopK, TorchMagnitudes, keep_mask, ranked
from . import MergeMethod, Param, Range, register
from .sparsify import elect_positive

SELECT_TOPK = Param("select_topk", float, 1.0, "fraction of the entries (with non-zero variance across the models) "
                    "kept, largest variance first", range=Range(0.0, 1.0, low_open=True))
EQUAL_BELOW = 1e-6  # a sum of mean squares below this: the models count equally (mergekit's rule)
MIN_DIVISOR = 1e-6  # the agreeing weights' sum is clamped here (mergekit's rule)


def keep_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of a non-negative tensor, exactly, without a sort; ties at the edge to the earliest."""
    n = values.numel()
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    source = TorchMagnitudes.of(values)
    ((at,),) = ranked(source, [[n - k + 1]])  # the k-th largest value
    needed = k - (n - at.below - at.equal)  # how many of the entries equal to it are kept (>= 1)
    cut = CUT_ALL if needed >= at.equal else source.nth_equal(0, at.value, needed)
    return keep_mask(values, TopK(at.value, cut))


def select(deltas: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Keep the entries with the largest variance across the task vectors (population variance)."""
    if fraction >= 1:
        return deltas
    variance = torch.var(torch.stack(deltas), dim=0, correction=0)
    # k as mergekit computes it: the count times the fraction in float32, truncated
    keep = keep_largest(variance, int(torch.count_nonzero(variance) * fraction))
    return [d * keep for d in deltas]


def mean_square_weights(deltas: list[torch.Tensor]) -> list[float]:
    """Each task vector's mean square, normalised to sum to 1; equal weights when they sum to (near) zero."""
    squares = [float(d.square().mean()) if d.numel() else 0.0 for d in deltas]
    total = sum(squares)
    if abs(total) < EQUAL_BELOW:
        return [1.0 / len(deltas)] * len(deltas)
    return [s / total for s in squares]


def sce(base, deltas, models, params):
    deltas = select(list(deltas), params["select_topk"])
    weights = mean_square_weights(deltas)
    positive = elect_positive(deltas, "sum")
    merged = torch.zeros_like(deltas[0])
    divisor = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        agree = ((d > 0) == positive) & (d != 0)
        merged.add_(d * (agree * w))
        divisor.add_(agree, alpha=w)
    return merged.div_(divisor.clamp_(min=MIN_DIVISOR))


register(
    MergeMethod(
        name="sce",
        description="select high-variance entries, weight task vectors by their mean square, erase minority signs",
        inputs="deltas",
        fn=sce,
        params=(SELECT_TOPK,),
        paper="Wan et al. 2024, FuseChat: Knowledge Fusion of Chat Models (arXiv:2408.07990)",
        ignored=("int8_mask",),
    )
)
