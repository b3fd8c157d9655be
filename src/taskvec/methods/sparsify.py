"""Masks that sparsify a task vector, and the sign election that resolves conflicts between task vectors.

Small pure functions in the spirit of PEFT's merge utilities; the merge methods compose them. Selections use
``kthvalue`` (linear-time selection), never a full sort: an entry is kept when its magnitude clears the k-th
largest magnitude, so on exact ties at the threshold a few more than k entries survive (mergekit breaks such ties
by position instead).
"""

import torch


def keep_count(numel: int, density: float) -> int:
    """How many entries a density keeps: at least one of a non-empty tensor, as in mergekit."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def kth_largest(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a flat tensor (1-based), by selection rather than sorting."""
    flat = magnitudes.reshape(-1)
    return torch.kthvalue(flat, flat.numel() - k + 1).values


def magnitude_mask(delta: torch.Tensor, density: float, threshold: float | None = None) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude (TIES' trim step).

    With `threshold` (found over the whole task vector, for global trimming) keep |delta| >= threshold instead.
    """
    magnitude = delta.abs()
    if threshold is not None:
        return magnitude >= threshold
    k = keep_count(delta.numel(), density)
    if k >= delta.numel():
        return torch.ones_like(delta, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    return magnitude >= kth_largest(magnitude, k)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest `gamma` fraction (outliers) and the smallest entries, keeping `density`.

    In ascending order of magnitude, entries ranked [n_bottom, n_bottom + n_keep) survive, where n_keep =
    int(density * n) and n_bottom = max(0, n - n_keep - int(gamma * n)): the outlier cut shrinks when it would
    leave fewer than n_keep entries.
    """
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    n_keep = int(density * n)
    if n_keep == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    n_bottom = max(0, n - n_keep - int(gamma * n))
    flat = delta.abs().reshape(-1)
    low = torch.kthvalue(flat, n_bottom + 1).values
    high = torch.kthvalue(flat, n_bottom + n_keep).values
    magnitude = delta.abs()
    return (magnitude >= low) & (magnitude <= high)


def random_keep(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE's drop: keep each entry independently with probability `density`.

    The mask is drawn on the CPU from a generator seeded per tensor and model, so it is the same on every run,
    for every thread count and on every device.
    """
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(delta.shape, generator=g) < density).to(delta.device)


def rank_keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: per row, keep probabilities rise linearly with magnitude rank from density - epsilon to
    density + epsilon (the smallest entry of a row gets the lowest). 1-D tensors are one row."""
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon < 1 (density {density}, epsilon {epsilon})")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0 = smallest
    span = max(rows.shape[1] - 1, 1)
    probabilities = (density - epsilon) + (ranks / span) * (2 * epsilon)
    return probabilities.reshape(delta.shape)


def random_keep_ranked(delta: torch.Tensor, probabilities: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(delta.shape, generator=g).to(delta.device) < probabilities


def elect_sign(weighted_deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """The sign each entry takes in the merge: that of the total mass (TIES, `sum`) or of the most task vectors
    (`count`); ties go to +1."""
    if method == "sum":
        total = weighted_deltas.sum(dim=0)
    elif method == "count":
        total = weighted_deltas.sign().sum(dim=0)
    else:
        raise ValueError(f"unknown consensus method {method!r}")
    return torch.where(total >= 0, 1.0, -1.0).to(weighted_deltas.dtype)


def l1_rescale(original: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale a pruned task vector back to the L1 norm it had before pruning (mergekit's `rescale` for magnitude
    pruning, where 1/density would not preserve anything)."""
    before, after = original.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)
