"""Masks that sparsify a task vector, and the sign election that resolves conflicts between task vectors.

Small pure functions in the spirit of PEFT's merge utilities; the merge methods compose them. Selections never
sort a whole tensor (``kth_smallest``) and keep exactly the intended count: entries tied at a threshold are taken
in memory order, as a stable sort would (mergekit's unstable sort leaves that choice to the implementation).
"""

import math

import torch


def keep_count(numel: int, density: float) -> int:
    """How many entries a density keeps: at least one of a non-empty tensor, as in mergekit."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def kth_smallest(values: torch.Tensor, r: int) -> float:
    """The r-th smallest (1-based) of a flat tensor, exactly, in a few vectorised passes instead of a sort.

    A strided sample brackets the wanted rank with two sample values; counting the entries below and up to each of
    them either lands the rank on one of the two (common when values tie, as quantised task vectors do) or leaves a
    small band between them for an exact selection. If the bracket misses (an unlucky sample), a full selection
    answers: the result is exact either way.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if n <= 1 << 16:
        return float(torch.kthvalue(flat, r).values)
    sample = flat[:: max(1, n // (1 << 14))].sort().values
    s = sample.numel()
    at = (r - 0.5) / n * s
    margin = 4 * math.sqrt(s) + 8
    low = float(sample[max(0, int(at - margin))])
    high = float(sample[min(s - 1, int(at + margin))])
    below_low, upto_low = int(torch.count_nonzero(flat < low)), int(torch.count_nonzero(flat <= low))
    if below_low < r <= upto_low:
        return low
    below_high, upto_high = int(torch.count_nonzero(flat < high)), int(torch.count_nonzero(flat <= high))
    if below_high < r <= upto_high:
        return high
    if upto_low < r <= below_high:
        band = flat[(flat > low) & (flat < high)]
        return float(torch.kthvalue(band, r - upto_low).values)
    return float(torch.kthvalue(flat, r).values)


def _tie_cut(flat: torch.Tensor, value: float, count: int) -> int:
    """Flat index of the `count`-th entry equal to `value` (in memory order); -1 when count is 0.

    Scans in slices, so a tie class of millions of entries never becomes one giant index tensor."""
    if count <= 0:
        return -1
    step = 1 << 20
    for start in range(0, flat.numel(), step):
        tied = flat[start:start + step] == value
        found = int(torch.count_nonzero(tied))
        if count <= found:
            return start + int(tied.nonzero()[count - 1])
        count -= found
    raise ValueError("fewer tied entries than counted")


def _ties_kept(magnitude: torch.Tensor, value: float, low_cut: int, high_cut: int, offset: int) -> torch.Tensor:
    """Entries equal to `value` whose flat index (plus `offset`, the block's place in its tensor) is in
    (low_cut, high_cut]: a contiguous range, so a slice, never an index list."""
    tied = (magnitude == value).reshape(-1)
    start = min(max(0, low_cut + 1 - offset), tied.numel())
    stop = min(max(0, high_cut + 1 - offset), tied.numel())
    if start == 0 and stop == tied.numel():
        return tied.reshape(magnitude.shape)
    keep = torch.zeros_like(tied)
    if start < stop:
        keep[start:stop] = tied[start:stop]
    return keep.reshape(magnitude.shape)


def top_k_selection(magnitudes: torch.Tensor, density: float, exact_zeros: bool = True) -> tuple[float, int]:
    """(threshold, cut) such that the kept entries -- magnitude above the threshold, or equal to it at a flat index
    up to `cut` -- are exactly the top k = keep_count(n, density): ties at the threshold go to the earliest entries,
    as a stable sort would. Quantised task vectors (bfloat16 fine-tunes) tie often, so this matters. With
    `exact_zeros` off, a threshold of zero keeps only the non-zero entries: the same merge, without the tie scan."""
    flat = magnitudes.reshape(-1)
    n = flat.numel()
    k = keep_count(n, density)
    if k >= n:
        return -math.inf, n
    if k == 0:
        return math.inf, -1
    threshold = kth_smallest(flat, n - k + 1)
    if threshold == 0 and not exact_zeros:  # which zero entries are "kept" changes no merge: skip the tie scan
        return 0.0, -1
    return threshold, _tie_cut(flat, threshold, k - int(torch.count_nonzero(flat > threshold)))


def magnitude_mask(delta: torch.Tensor, density: float, selection: tuple[float, int] | float | None = None,
                   offset: int = 0) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude (TIES' trim step).

    `selection` -- found beforehand over the whole tensor (`top_k_selection`), of which `delta` may be a block
    starting at flat index `offset`, or a bare threshold found over the whole task vector -- replaces the selection
    over `delta` itself.
    """
    magnitude = delta.abs()
    if selection is None:
        selection = top_k_selection(magnitude, density)
    if not isinstance(selection, tuple):  # a global threshold: keep everything that clears it
        return magnitude >= selection
    threshold, cut = selection
    return (magnitude > threshold) | _ties_kept(magnitude, threshold, -1, cut, offset)


def band_selection(magnitudes: torch.Tensor, density: float, gamma: float) -> tuple[float, float, int, int]:
    """Model Breadcrumbs' kept band: (low, high, low_cut, high_cut).

    In ascending order of magnitude (ties by position), entries ranked [n_bottom, n_bottom + n_keep) survive, where
    n_keep = int(density * n) and n_bottom = max(0, n - n_keep - int(gamma * n)): the outlier cut shrinks when it
    would leave fewer than n_keep entries. Entries equal to `low` survive past flat index `low_cut`, entries equal
    to `high` up to `high_cut`.
    """
    flat = magnitudes.reshape(-1)
    n = flat.numel()
    if density >= 1:
        return -math.inf, math.inf, -1, n
    n_keep = int(density * n)
    if n_keep == 0:
        return math.inf, -math.inf, n, -1
    n_bottom = max(0, n - n_keep - int(gamma * n))
    low, high = kth_smallest(flat, n_bottom + 1), kth_smallest(flat, n_bottom + n_keep)
    low_cut = _tie_cut(flat, low, n_bottom - int(torch.count_nonzero(flat < low)))
    high_cut = _tie_cut(flat, high, n_bottom + n_keep - int(torch.count_nonzero(flat < high)))
    return low, high, low_cut, high_cut


def outlier_mask(delta: torch.Tensor, density: float, gamma: float, band: tuple | None = None,
                 offset: int = 0) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest `gamma` fraction (outliers) and the smallest entries, keeping `density`.

    `band` is `band_selection` over the whole tensor (of which `delta` is a block at `offset`), or a bare
    (low, high) found over the whole task vector."""
    magnitude = delta.abs()
    if band is None:
        band = band_selection(magnitude, density, gamma)
    if len(band) == 2:  # global: keep everything inside the band
        return (magnitude >= band[0]) & (magnitude <= band[1])
    low, high, low_cut, high_cut = band
    if low == high:
        return _ties_kept(magnitude, low, low_cut, high_cut, offset)
    return ((magnitude > low) & (magnitude < high)) | _ties_kept(magnitude, low, low_cut, math.inf, offset) \
        | _ties_kept(magnitude, high, -1, high_cut, offset)


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
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon < 1 (density {density}, epsilon {epsilon})")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0 = smallest
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


def l1_rescale(original: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale a pruned task vector back to the L1 norm it had before pruning (mergekit's `rescale` for magnitude
    pruning, where 1/density would not preserve anything)."""
    before, after = original.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)
