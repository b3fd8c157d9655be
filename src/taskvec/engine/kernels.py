"""Fused CPU kernels: one pass over a block does what a method's reference tensor code does in a dozen passes.

Each kernel repeats, operation for operation, the float32 arithmetic of the pure functions in ``taskvec.methods``
(same operations in the same order, each rounded to float32, no fused multiply-add), so its results are
bit-identical to theirs -- the tests check it -- while it reads the stored bfloat16 bits directly, keeps every
temporary in registers and writes the output dtype in place. Compiled by numba on first use and cached on disk.

Arrays are flat numpy arrays: bfloat16 travels as its uint16 bits, anything else as float32.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from .. import methods
from ..methods import sparsify

# Per-model sparsifiers of the task-vector family (methods/generalized.py)
KEEP_ALL, KEEP_MAGNITUDE, KEEP_RANDOM = 0, 1, 2
# What happens to the survivors: nothing, or divided by the density (DARE)
RESCALE_NONE, RESCALE_DIV = 0, 2
CONSENSUS_NONE, CONSENSUS_SUM = 0, 1

# Literals, not imports: numba freezes globals into its cached machine code and checks that cache only against this
# file, so a constant changed in methods/ would leave stale kernels (another random stream, another divisor rule).
# The check keeps the copies equal.
GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # sparsify's keyed draws
NEAR_ZERO = np.float32(1e-8)  # methods.NEAR_ZERO: a smaller divisor is taken as 1
if (GAMMA, MIX1, MIX2) != (sparsify.GAMMA, sparsify.MIX1, sparsify.MIX2) or NEAR_ZERO != np.float32(methods.NEAR_ZERO):
    raise ImportError("engine/kernels.py's constants differ from methods/sparsify.py's or methods.NEAR_ZERO")


def load(a, j):
    """Entry j of a flat array as float32 (overloaded for numba below)."""
    raise NotImplementedError


def store(out, j, value):
    """Write float32 `value` as entry j of `out` (bfloat16 bits or float32)."""
    raise NotImplementedError


@overload(load)
def _load(a, j):
    if a.dtype == types.uint16:  # bfloat16: its bits are the top half of the float32
        return lambda a, j: np.uint32(np.uint32(a[j]) << np.uint32(16)).view(np.float32)
    return lambda a, j: np.float32(a[j])


@overload(store)
def _store(out, j, value):
    if out.dtype == types.uint16:
        return lambda out, j, value: _set(out, j, bfloat16_bits(value))
    return lambda out, j, value: _set(out, j, value)


@njit
def _set(out, j, value):
    out[j] = value


@njit
def bfloat16_bits(value):
    """float32 -> bfloat16 as torch rounds it: to nearest, ties to even; every NaN becomes 0x7FC0."""
    if value != value:
        return np.uint16(0x7FC0)
    bits = np.float32(value).view(np.uint32)
    return np.uint16((bits + ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)) >> np.uint32(16))


_GAMMA, _MIX1, _MIX2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)


@njit
def keyed_draw(seed, index):
    """sparsify.random_draws for one entry: the 32-bit draw of flat index `index` in the stream `seed` (uint64)."""
    z = seed + np.uint64(index + 1) * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.uint32((z ^ (z >> np.uint64(31))) >> np.uint64(32))


@njit
def _magnitude_bits(value):
    return np.float32(abs(value)).view(np.uint32)


@njit(nogil=True, cache=True)
def weighted_models(xs, weights, normalize, divisor, out, acc):
    """Linear: (sum_i w_i * x_i) [/ divisor]."""
    n = out.size
    for j in range(n):
        acc[j] = load(xs[0], j) * weights[0]
    for i in range(1, len(xs)):
        x, w = xs[i], weights[i]
        for j in range(n):
            acc[j] = acc[j] + load(x, j) * w
    for j in range(n):
        store(out, j, acc[j] / divisor if normalize else acc[j])


@njit(nogil=True, cache=True)
def weighted_deltas(base, xs, weights, normalize, divisor, lam, out, acc):
    """Task arithmetic: base + lam * (sum_i w_i * (x_i - base)) [/ divisor]."""
    n = base.size
    for j in range(n):
        acc[j] = (load(xs[0], j) - load(base, j)) * weights[0]
    for i in range(1, len(xs)):
        x, w = xs[i], weights[i]
        for j in range(n):
            acc[j] = acc[j] + (load(x, j) - load(base, j)) * w
    for j in range(n):
        value = acc[j]
        if normalize:
            value = value / divisor
        store(out, j, value * lam + load(base, j))


CHUNK = 4096  # entries per pass inside a block: the per-model rows of scratch stay in L1/L2


@njit(nogil=True, cache=True)
def sparse_consensus(base, xs, kinds, thresholds, cuts, offset, seeds, random_thresholds, rescales, factors,
                     weights, consensus, normalize, divisor, lam, out, scratch):
    """The task-vector family (methods/generalized.py merge_deltas): sparsify each task vector (ties.trim,
    dare.drop_and_rescale), weight it, keep what agrees with the elected sign (sum consensus) or everything, sum,
    normalise, scale, add to the base. `seeds[i]` is model i's random stream (DARE); `offset` is the block's first
    flat index in its tensor; `scratch` is float32 of shape (len(xs) + 3, CHUNK).

    Loops run model by model over a chunk of entries, so each inner loop is simple enough to vectorise."""
    m = len(xs)
    zero, one = np.float32(0), np.float32(1)
    total, merged, count = scratch[m], scratch[m + 1], scratch[m + 2]
    for c0 in range(0, base.size, CHUNK):
        c = min(CHUNK, base.size - c0)
        base_c, out_c = base[c0:c0 + c], out[c0:c0 + c]  # slices: plain j indices let the loops vectorise
        for i in range(m):  # branch-free inner loops: no mispredicted jumps on random data, and they vectorise
            x, kind, row = xs[i][c0:c0 + c], kinds[i], scratch[i]
            if kind == KEEP_MAGNITUDE:
                threshold, cut = thresholds[i], cuts[i] - offset - c0
                for j in range(c):
                    d = load(x, j) - load(base_c, j)
                    magnitude = abs(d)
                    row[j] = d * np.float32((magnitude > threshold) | ((magnitude == threshold) & (j <= cut)))
            elif kind == KEEP_RANDOM:
                seed, limit, start = seeds[i], random_thresholds[i], offset + c0
                for j in range(c):
                    row[j] = (load(x, j) - load(base_c, j)) * np.float32(keyed_draw(seed, start + j) < limit)
            else:
                for j in range(c):
                    row[j] = load(x, j) - load(base_c, j)
            if rescales[i] == RESCALE_DIV:
                for j in range(c):
                    row[j] = row[j] / factors[i]
            w = weights[i]
            for j in range(c):
                row[j] = row[j] * w
        if consensus == CONSENSUS_SUM and not normalize:  # _agreeing_sum: positive and negative parts apart
            for j in range(c):
                x = scratch[0, j]
                total[j] = x if not x < 0 else zero
                merged[j] = x if not x > 0 else zero
            for i in range(1, m):
                row = scratch[i]
                for j in range(c):
                    x = row[j]
                    total[j] = total[j] + (x if not x < 0 else zero)
                    merged[j] = merged[j] + (x if not x > 0 else zero)
            for j in range(c):
                value = total[j] if total[j] + merged[j] >= 0 else merged[j]
                store(out_c, j, value * lam + load(base_c, j))
        elif consensus == CONSENSUS_SUM:  # disjoint mean over the task vectors that agree with the sign
            for j in range(c):
                total[j] = scratch[0, j]
                merged[j] = zero
                count[j] = zero
            for i in range(1, m):
                row = scratch[i]
                for j in range(c):
                    total[j] = total[j] + row[j]
            for i in range(m):
                row, w = scratch[i], weights[i]
                for j in range(c):
                    x = row[j]
                    agree = np.float32(((x > 0) == (total[j] >= 0)) & (x != 0))
                    merged[j] = merged[j] + x * agree
                    count[j] = count[j] + w * agree
            for j in range(c):
                value = merged[j] / (count[j] if abs(count[j]) >= NEAR_ZERO else one)
                store(out_c, j, value * lam + load(base_c, j))
        else:
            for j in range(c):
                merged[j] = scratch[0, j]
            for i in range(1, m):
                row = scratch[i]
                for j in range(c):
                    merged[j] = merged[j] + row[j]
            for j in range(c):
                value = merged[j] / divisor if normalize else merged[j]
                store(out_c, j, value * lam + load(base_c, j))


def not_finite(out, j):
    """Whether entry j of `out` is inf or nan (overloaded for numba below)."""
    raise NotImplementedError


@overload(not_finite)
def _not_finite(out, j):
    if out.dtype == types.uint16:  # bfloat16 bits: the exponent is all ones
        return lambda out, j: (out[j] & np.uint16(0x7F80)) == np.uint16(0x7F80)
    return lambda out, j: not np.isfinite(out[j])


@njit(nogil=True, cache=True)
def all_finite(out):
    """Whether every stored value is finite."""
    bad = 0
    for j in range(out.size):
        bad += not_finite(out, j)
    return bad == 0


@njit(nogil=True, cache=True)
def count_zeros(base, xs, models, zeros):
    """zeros[k] += how many entries of x_models[k] equal the base (a zero task-vector entry)."""
    for k in range(models.size):
        x, found = xs[models[k]], 0
        for j in range(base.size):
            found += load(x, j) - load(base, j) == 0
        zeros[k] += found


@njit(nogil=True, cache=True)
def magnitude_histograms(base, xs, hist):
    """Count |x_i - base| by the top 16 bits of its float32 pattern (non-negative floats sort like their bits): the
    first pass of selection.ranked."""
    for i in range(len(xs)):
        x = xs[i]
        for j in range(base.size):
            hist[i, _magnitude_bits(load(x, j) - load(base, j)) >> np.uint32(16)] += 1


@njit(nogil=True, cache=True)
def magnitude_low_histograms(base, xs, bins, hist):
    """Within each top-bits bin bins[i, q] (-1: none), count model i's magnitudes by their low 16 bits: the second
    pass of selection.ranked."""
    for i in range(len(xs)):
        x = xs[i]
        for q in range(bins.shape[1]):
            if bins[i, q] < 0:
                continue
            wanted = np.uint32(bins[i, q])
            for j in range(base.size):
                bits = _magnitude_bits(load(x, j) - load(base, j))
                if bits >> np.uint32(16) == wanted:
                    hist[i, q, bits & np.uint32(0xFFFF)] += 1


@njit(nogil=True, cache=True)
def find_nth_equal(base, x, value, remaining):
    """Index in this block of the remaining[0]-th entry with |x - base| == value, or -1 after counting the block's
    matches off remaining[0]."""
    for j in range(base.size):
        if abs(load(x, j) - load(base, j)) == value:
            remaining[0] -= 1
            if remaining[0] == 0:
                return j
    return -1
