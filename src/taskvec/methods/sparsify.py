"""Masks that sparsify a task vector, and the sign election that resolves conflicts between task vectors.

Small pure functions in the spirit of PEFT's merge utilities; the merge methods compose them. Magnitude selections
(top k, Breadcrumbs' band) come from ``taskvec.selection``: exact, never a sort, ties in memory order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..lazy import torch
from ..selection import Band, Selection, TopK, TorchMagnitudes, band, keep_mask, top_k


def magnitude_mask(delta: torch.Tensor, density: float, selection: TopK | None = None, offset: int = 0) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude (TIES' trim step). `selection`, found
    beforehand over the whole tensor (of which `delta` is a block at flat index `offset`) or over the whole task
    vector, replaces the selection over `delta` itself."""
    magnitude = delta.abs()
    if selection is None:
        selection = top_k(TorchMagnitudes.of(magnitude), magnitude.numel(), [density])[0]
    return keep_mask(magnitude, selection, offset)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float, selection: Band | None = None,
                 offset: int = 0) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest `gamma` fraction (outliers) and the smallest entries, keeping `density`;
    `selection` as for ``magnitude_mask``."""
    magnitude = delta.abs()
    if selection is None:
        selection = band(TorchMagnitudes.of(magnitude), magnitude.numel(), [density], [gamma])[0]
    return keep_mask(magnitude, selection, offset)


def magnitude_prune(delta: torch.Tensor, model, params, own: Callable[[torch.Tensor, Any], Selection]) -> torch.Tensor:
    """Keep what a magnitude selection keeps (TIES, Breadcrumbs): the planner's -- over the whole tensor or task
    vector, of which `delta` is the block at ``model.offset`` -- else ``own(|delta|, model)``; with ``rescale``,
    restore the L1 mass."""
    magnitude = delta.abs()
    selection = model.selection if model.selection is not None else own(magnitude, model)
    kept = delta * keep_mask(magnitude, selection, model.offset)
    if params["rescale"]:
        kept.mul_(model.l1_scale if model.l1_scale is not None else l1_factor(*l1_masses(delta, selection)))
    return kept


def l1_masses(delta: torch.Tensor, selection: Selection, offset: int = 0) -> tuple[float, float]:
    """(L1 mass of a task vector's block, mass its selection keeps), in float64: summed over blocks, they give
    ``l1_factor`` for the whole tensor."""
    magnitude = delta.abs()
    kept = magnitude * keep_mask(magnitude, selection, offset)
    return float(magnitude.sum(dtype=torch.float64)), float(kept.sum(dtype=torch.float64))


def l1_factor(before: float, after: float) -> float:
    """The factor that brings a pruned task vector back to the L1 norm it had before pruning (mergekit's `rescale`
    for magnitude pruning, where 1/density would not preserve anything); 1 when either mass is (near) zero."""
    return before / after if before >= 1e-7 and after >= 1e-7 else 1.0


# Random draws are a keyed hash of (seed, flat index) -- SplitMix64's output function -- not a sequential stream: an
# entry's draw depends only on the tensor's seed and the entry's position, never on blocks, threads or device, and a
# fused kernel computes it where it needs it (kernels.keyed_draw, the same bits).
GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
RANDOM_STREAM = "splitmix64-keyed-1"  # a merge with a random method is reproducible for a given stream


def _int64(c: int) -> int:
    c %= 1 << 64
    return c - (1 << 64) if c >= 1 << 63 else c


def _shift_right(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 tensors that hold uint64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def random_draws(seed: int, offset: int, n: int, device=None) -> torch.Tensor:
    """Uniform 32-bit draws (int64 values in [0, 2^32)) for flat indices offset .. offset + n - 1 of the tensor whose
    stream is `seed`; int64 arithmetic wraps like the uint64 of the hash."""
    z = torch.arange(offset + 1, offset + n + 1, dtype=torch.int64, device=device) * _int64(GAMMA) + _int64(seed)
    z = (z ^ _shift_right(z, 30)) * _int64(MIX1)
    z = (z ^ _shift_right(z, 27)) * _int64(MIX2)
    return _shift_right(z ^ _shift_right(z, 31), 32)


def keep_limit(density: float) -> int:
    """Draws below this are kept: density * 2^32, at most 2^32 - 1."""
    return min(round(density * (1 << 32)), (1 << 32) - 1)


def random_keep(delta: torch.Tensor, density: float, seed: int, offset: int = 0) -> torch.Tensor:
    """DARE's drop: keep each entry independently with probability `density`; `delta` may be a block that starts at
    flat index `offset` of its tensor."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    return (random_draws(seed, offset, delta.numel(), delta.device) < keep_limit(density)).reshape(delta.shape)


def rank_keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: per row, keep probabilities rise linearly with magnitude rank from density - epsilon to
    density + epsilon (the smallest entry of a row gets the lowest). 1-D tensors are one row."""
    if not (0 < density - epsilon and density + epsilon <= 1):
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon <= 1 (density {density}, epsilon {epsilon})")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    # stable: tied magnitudes (common in bfloat16 task vectors) rank by position, on every device
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1, stable=True).to(torch.float32)  # 0 = smallest
    span = max(rows.shape[1] - 1, 1)
    probabilities = (density - epsilon) + (ranks / span) * (2 * epsilon)
    return probabilities.reshape(delta.shape)


def random_keep_ranked(delta: torch.Tensor, probabilities: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    """Keep each entry with its own probability (DELLA): a uniform in [0, 1) from the top 24 bits of its draw."""
    uniform = (random_draws(seed, offset, delta.numel(), delta.device) >> 8).to(torch.float32) * 2.0**-24
    return uniform.reshape(delta.shape) < probabilities


def elect_positive(weighted_deltas: list[torch.Tensor], method: str = "sum") -> torch.Tensor:
    """Where the elected sign is + : that of the total mass (TIES, `sum`) or of the most task vectors (`count`);
    ties go to +."""
    if method not in ("sum", "count"):
        raise ValueError(f"unknown consensus method {method!r}")
    pick = (lambda x: x) if method == "sum" else torch.sign
    total = pick(weighted_deltas[0]).clone()
    for x in weighted_deltas[1:]:
        total.add_(pick(x))
    return total >= 0
