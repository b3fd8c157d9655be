"""Exact magnitude selections -- the top k, a band of ranks -- without sorting, streamed, in constant memory.

Non-negative float32 values sort like their bit patterns read as integers. So the r-th smallest magnitude among any
number of entries, streamed in blocks, is found by counting: pass 1 counts magnitudes by their top 16 bits (32,768
bins) to find the bin that holds rank r; pass 2 counts the low 16 bits of the entries in that bin only, which pins
the exact value and how many entries equal it. When the wanted count splits those equal entries, a partial pass 3
finds the flat index where to cut them: ties go to the earliest entries, as a stable sort would. This matters for
bfloat16 fine-tunes, whose task vectors are quantised and tie a lot.

One arithmetic serves every consumer through a *source* that streams magnitudes (``Magnitudes``): torch tensors
here (the methods, the reference path, ``trim_scope: global``, ``taskvec inspect``), numba kernels over the stored
bits in ``engine/fused.py``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .lazy import torch

HI_BINS, LO_BINS = 1 << 15, 1 << 16  # magnitudes have no sign bit: their top 16 bits are < 2^15
CUT_ALL = 1 << 62  # a cut beyond any flat index: every entry tied with the threshold is kept


@dataclass(frozen=True)
class TopK:
    """Keep |x| > threshold, and |x| == threshold at flat index <= cut (TIES' trim)."""

    threshold: float
    cut: int

    @classmethod
    def at_least(cls, threshold: float) -> TopK:
        """Everything that clears a threshold, ties included (a whole-task-vector threshold)."""
        return cls(threshold, CUT_ALL)


@dataclass(frozen=True)
class Band:
    """Keep low < |x| < high, |x| == low past flat index low_cut, |x| == high up to high_cut (Model Breadcrumbs)."""

    low: float
    high: float
    low_cut: int
    high_cut: int

    @classmethod
    def between(cls, low: float, high: float) -> Band:
        """low <= |x| <= high, ties at both ends included (a whole-task-vector band)."""
        return cls(low, high, -1, CUT_ALL)


Selection = TopK | Band


def keep_count(numel: int, density: float) -> int:
    """How many entries a density keeps: at least one of a non-empty tensor, as in mergekit."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def top_k_rank(total: int, density: float) -> int | None:
    """The ascending rank (1-based) of the smallest magnitude kept by the top `density` of `total` entries, or None
    when nothing is kept."""
    keep = keep_count(total, density)
    return total - keep + 1 if keep else None


def band_ranks(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """Model Breadcrumbs' kept ascending ranks [bottom, bottom + keep) (0-based): drop the largest `gamma` fraction
    and keep `density`, the outlier cut shrinking when it would leave fewer than `keep` entries."""
    if density >= 1:
        return 0, numel
    keep = int(density * numel)
    return max(0, numel - keep - int(gamma * numel)), keep


# --- the bin arithmetic every backend shares -------------------------------------------------------------------


def bin_of_rank(cumulative, rank: int) -> tuple[int, int]:
    """(bin, rank within that bin) of the 1-based ascending `rank`, from a histogram's cumulative counts."""
    b = int(np.searchsorted(np.asarray(cumulative), rank))
    return b, rank - (int(cumulative[b - 1]) if b > 0 else 0)


def magnitude_of(high: int, low: int) -> float:
    """The non-negative float32 whose top 16 bits are `high` and low 16 bits `low`."""
    return float(np.array([(high << 16) | low], dtype=np.uint32).view(np.float32)[0])


class Magnitudes(Protocol):
    """|x| of several vectors, streamed in flat-index order; what a backend provides to the selections."""

    def high(self, which: list[int]) -> np.ndarray:
        """Counts by top 16 bits: int64 [len(which), HI_BINS]."""

    def low(self, which: list[int], bins: np.ndarray) -> np.ndarray:
        """Counts by low 16 bits of the entries whose top bits are bins[p, q] (-1: none): int64 [p, q, LO_BINS]."""

    def nth_equal(self, vector: int, value: float, count: int) -> int:
        """Flat index of the count-th entry (count >= 1) of `vector` whose magnitude equals `value`."""


@dataclass(frozen=True)
class Ranked:
    """The r-th smallest magnitude, with the number of entries below it and equal to it."""

    value: float
    below: int
    equal: int


def ranked(source: Magnitudes, ranks: Sequence[Sequence[int]]) -> list[list[Ranked]]:
    """For each vector i, the magnitudes at the 1-based ascending ranks ``ranks[i]``: two counting passes."""
    which = [i for i, wanted in enumerate(ranks) if wanted]
    out: list[list[Ranked]] = [[] for _ in ranks]
    if not which:
        return out
    cumulative = source.high(which).cumsum(axis=1)
    targets = [[bin_of_rank(cumulative[p], r) for r in ranks[i]] for p, i in enumerate(which)]
    bins = np.full((len(which), max(map(len, targets))), -1, dtype=np.int64)
    for p, row in enumerate(targets):
        bins[p, :len(row)] = [b for b, _ in row]
    low = source.low(which, bins)
    for p, i in enumerate(which):
        for q, (b, within) in enumerate(targets[p]):
            low_cumulative = low[p, q].cumsum()
            lo, _ = bin_of_rank(low_cumulative, within)
            below = (int(cumulative[p, b - 1]) if b else 0) + (int(low_cumulative[lo - 1]) if lo else 0)
            out[i].append(Ranked(magnitude_of(b, lo), below, int(low[p, q, lo])))
    return out


def _cut(source: Magnitudes, vector: int, value: float, count: int, equal: int) -> int:
    """Flat index of the count-th entry equal to `value`: -1 for none, CUT_ALL for all of them (no scan)."""
    if count <= 0:
        return -1
    return CUT_ALL if count >= equal else source.nth_equal(vector, value, count)


def top_k(source: Magnitudes, numel: int, densities: Sequence[float], exact_zeros: bool = True) -> list[TopK]:
    """Each vector's exact top k = keep_count(numel, density) by magnitude, ties to the earliest entries. With
    `exact_zeros` off, a threshold of zero keeps the non-zero entries only: the same merge, without a tie scan."""
    result: list[TopK | None] = [None] * len(densities)
    ranks: list[list[int]] = []
    for i, density in enumerate(densities):
        k = keep_count(numel, density)
        if k >= numel:
            result[i] = TopK(-math.inf, numel)
        elif k == 0:
            result[i] = TopK(math.inf, -1)
        ranks.append([] if result[i] else [numel - k + 1])
    for i, found in enumerate(ranked(source, ranks)):
        if not found:
            continue
        at = found[0]
        if at.value == 0 and not exact_zeros:
            result[i] = TopK(0.0, -1)
            continue
        greater = numel - at.below - at.equal
        needed = keep_count(numel, densities[i]) - greater
        result[i] = TopK(at.value, _cut(source, i, at.value, needed, at.equal))
    return result


def band(source: Magnitudes, numel: int, densities: Sequence[float], gammas: Sequence[float]) -> list[Band]:
    """Each vector's Model Breadcrumbs band (``band_ranks``), ties in memory order at both ends."""
    result: list[Band | None] = [None] * len(densities)
    ranks: list[list[int]] = []
    for i, (density, gamma) in enumerate(zip(densities, gammas)):
        bottom, keep = band_ranks(numel, density, gamma)
        if density >= 1:
            result[i] = Band(-math.inf, math.inf, -1, numel)
        elif keep == 0:
            result[i] = Band(math.inf, -math.inf, numel, -1)
        ranks.append([] if result[i] else [bottom + 1, bottom + keep])
    for i, found in enumerate(ranked(source, ranks)):
        if not found:
            continue
        low, high = found
        bottom, keep = band_ranks(numel, densities[i], gammas[i])
        result[i] = Band(low.value, high.value, _cut(source, i, low.value, bottom - low.below, low.equal),
                         _cut(source, i, high.value, bottom + keep - high.below, high.equal))
    return result


def keep_mask(magnitude: torch.Tensor, selection: Selection, offset: int = 0) -> torch.Tensor:
    """The entries of `magnitude` (a block starting at flat index `offset` of its tensor) a selection keeps."""
    if isinstance(selection, TopK):
        t = selection.threshold
        return (magnitude > t) | _tied(magnitude, t, -1, selection.cut, offset)
    low, high = selection.low, selection.high
    if low == high:
        return _tied(magnitude, low, selection.low_cut, selection.high_cut, offset)
    return ((magnitude > low) & (magnitude < high)) | _tied(magnitude, low, selection.low_cut, CUT_ALL, offset) \
        | _tied(magnitude, high, -1, selection.high_cut, offset)


def _tied(magnitude: torch.Tensor, value: float, low_cut: int, high_cut: int, offset: int) -> torch.Tensor:
    """Entries equal to `value` whose flat index (plus `offset`) is in (low_cut, high_cut]: a contiguous range, so a
    slice, never an index list."""
    tied = (magnitude == value).reshape(-1)
    start = min(max(0, low_cut + 1 - offset), tied.numel())
    stop = min(max(0, high_cut + 1 - offset), tied.numel())
    if start == 0 and stop == tied.numel():
        return tied.reshape(magnitude.shape)
    keep = torch.zeros_like(tied)
    if start < stop:
        keep[start:stop] = tied[start:stop]
    return keep.reshape(magnitude.shape)


# --- the torch backend ------------------------------------------------------------------------------------------


class TorchMagnitudes:
    """Magnitudes streamed with torch: ``read(unit)`` returns every vector's values (any sign, any float dtype) for
    one unit -- a block of rows of a tensor, a whole tensor -- in flat-index order. Counting passes run on `workers`
    threads; the tie scan runs in order."""

    def __init__(self, units: Sequence, read: Callable[[object], list[torch.Tensor]], workers: int = 1):
        self.units, self.read, self.workers = list(units), read, max(1, workers)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, *tensors: torch.Tensor) -> TorchMagnitudes:
        """Whole tensors already in memory."""
        return cls([None], lambda _: list(tensors))

    def _each(self, fn: Callable[[object], None]) -> None:
        if self.workers == 1 or len(self.units) == 1:
            for unit in self.units:
                fn(unit)
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                list(pool.map(fn, self.units))

    def high(self, which: list[int]) -> np.ndarray:
        hist = np.zeros((len(which), HI_BINS), dtype=np.int64)

        def count(unit):
            xs = self.read(unit)
            counts = [torch.bincount(_bits(xs[i]) >> 16, minlength=HI_BINS).cpu().numpy() for i in which]
            with self._lock:
                hist[:] += np.stack(counts)

        self._each(count)
        return hist

    def low(self, which: list[int], bins: np.ndarray) -> np.ndarray:
        hist = np.zeros((len(which), bins.shape[1], LO_BINS), dtype=np.int64)

        def count(unit):
            xs = self.read(unit)
            for p, i in enumerate(which):
                bits = _bits(xs[i])
                top = bits >> 16
                for q, b in enumerate(bins[p]):
                    if b >= 0:
                        counts = torch.bincount(bits[top == int(b)] & 0xFFFF, minlength=LO_BINS).cpu().numpy()
                        with self._lock:
                            hist[p, q] += counts

        self._each(count)
        return hist

    def nth_equal(self, vector: int, value: float, count: int) -> int:
        start = 0
        for unit in self.units:
            flat = self.read(unit)[vector].detach().float().abs().reshape(-1)
            step = 1 << 20  # in slices: a tie class of millions never becomes one giant index tensor
            for at in range(0, flat.numel(), step):
                tied = flat[at:at + step] == value
                found = int(torch.count_nonzero(tied))
                if count <= found:
                    return start + at + int(tied.nonzero()[count - 1])
                count -= found
            start += flat.numel()
        raise RuntimeError("fewer entries equal to the threshold than counted")


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().abs().reshape(-1).view(torch.int32)
