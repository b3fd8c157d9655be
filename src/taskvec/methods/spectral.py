"""Shared linear algebra of the subspace methods (TSV, Iso-C, Iso-CTS): which tensors are matrices, the SVD kept to
the directions a matrix really has, the closest orthogonal matrix, and the passes over blocks of rows (`TaskRows`)
that let the engine merge a tall matrix without holding its task vectors whole.

Not a method (it registers nothing). Everything is in float64 on the tensor's device: the decompositions then give
the same float32 result for any thread count, and sign conventions of singular vectors never matter, because every
product formed here (u·vᵀ pairs, polar factors) is invariant to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..lazy import torch
from . import WEIGHT, Param, weights_of

# the subspace methods' per-model weight: optional (the papers merge task vectors as they are)
UNIT_WEIGHT = Param("weight", float, 1.0, WEIGHT.help, range=WEIGHT.range)


def weighted(deltas: Sequence[torch.Tensor], models) -> list[torch.Tensor]:
    return [d.mul(w) if w != 1.0 else d for d, w in zip(deltas, weights_of(models))]


def is_matrix(t: torch.Tensor) -> bool:
    """The tensors the subspace methods decompose; the others (biases, norms, scalars) are averaged."""
    return t.dim() == 2 and min(t.shape) > 1


def total(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum, in a fresh tensor (the inputs are left as they are)."""
    out = tensors[0].clone()
    for t in tensors[1:]:
        out.add_(t)
    return out


def mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return total(tensors).div_(len(tensors))


ROWS_PER_BLOCK = 4096  # float64 work is done this many rows at a time: memory stays near the float32 inputs


@dataclass(frozen=True)
class TaskRows:
    """One tall matrix's task vectors as blocks of rows, read again on every pass over them. A subspace merge needs
    only small matrices between its passes (Gram matrices, maps of its width), so the merge holds one block, never a
    whole tensor: the task vectors of a 128K-token embedding are gigabytes; its Gram matrix is tens of megabytes."""

    shape: tuple[int, int]  # rows ≥ columns
    read: Callable[[int, int], list[torch.Tensor]]  # rows [start, stop) of every task vector, in compute dtype

    @classmethod
    def of(cls, deltas: Sequence[torch.Tensor]) -> TaskRows:
        """Task vectors already in memory."""
        return cls(tuple(deltas[0].shape), lambda start, stop: [d[start:stop] for d in deltas])

    def weighted(self, models) -> TaskRows:
        return TaskRows(self.shape, lambda start, stop: weighted(self.read(start, stop), models))

    def blocks(self) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
        for start in range(0, self.shape[0], ROWS_PER_BLOCK):
            stop = min(self.shape[0], start + ROWS_PER_BLOCK)
            yield start, stop, self.read(start, stop)


RowMerge = Callable[[TaskRows, Sequence[Any], Mapping[str, Any]], Iterator[tuple[int, int, torch.Tensor]]]


def is_tall(shape: Sequence[int]) -> bool:
    """The matrices a row-pass merge streams: the Gram matrix of their rows is the small one."""
    return len(shape) == 2 and shape[0] >= shape[1] > 1


def in_memory(merge: RowMerge, deltas: Sequence[torch.Tensor], models, params) -> torch.Tensor:
    """A row-pass merge of task vectors held in memory; a wide matrix goes through its transpose, so the Gram matrix
    is always the small one (for TSV and Iso-C, which treat rows and columns alike; Iso-CTS does not, and passes only
    tall matrices here)."""
    tall = deltas[0].shape[0] >= deltas[0].shape[1]
    rows = TaskRows.of(deltas if tall else [d.T for d in deltas])
    out = _collect(merge(rows, models, params), rows.shape, deltas[0].dtype, deltas[0].device)
    return out if tall else out.T


def _collect(blocks: Iterator[tuple[int, int, torch.Tensor]], shape, dtype, device) -> torch.Tensor:
    """Row blocks written into one tensor."""
    out = torch.empty(shape, dtype=dtype, device=device)
    for start, stop, block in blocks:
        out[start:stop] = block
    return out


def grams(rows: TaskRows, parts: Callable[[list[torch.Tensor]], Iterable[torch.Tensor]]) -> list[torch.Tensor]:
    """For each matrix parts(block) gives (functions of a block's task vectors, made one at a time), the float64 Gram
    matrix pᵀp of its rows, all in one pass."""
    out: list[torch.Tensor] = []
    for _, _, deltas in rows.blocks():
        for i, p in enumerate(parts(deltas)):
            p = p.double()
            if len(out) <= i:
                out.append(torch.zeros(p.shape[1], p.shape[1], dtype=torch.float64, device=p.device))
            out[i].addmm_(p.T, p)
    return out


def times(rows: TaskRows, part: Callable[[list[torch.Tensor]], torch.Tensor], w: torch.Tensor, dtype=None
          ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """part(block)·w for each block of rows, in float64, then stored in `dtype` (default: the block's)."""
    for start, stop, deltas in rows.blocks():
        yield start, stop, (part(deltas).double() @ w).to(dtype or deltas[0].dtype)


def spectrum(gram: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """V and S of a tall matrix a = U·diag(S)·Vᵀ from the float64 eigendecomposition of its Gram matrix aᵀa, largest
    first, without the directions at or below floor · S_max.

    Why the Gram matrix: on a CPU, aᵀa plus its eigh costs about half of an SVD of a (5632×2048: 2.8 s against 7.5 s
    on 2 cores), and it accumulates over blocks of rows. Squaring loses nothing that matters in float64: an
    eigenvalue is off by about eps(float64)·S_max², so each kept singular value is exact to ~1e-9 relative, far
    below the float32 of the output."""
    w, v = torch.linalg.eigh(gram)
    s = w.flip(0).clamp_min(0).sqrt()
    if s.numel() == 0 or s[0] == 0:
        return v[:, :0], s[:0]
    keep = int((s > s[0] * floor).sum())
    return v.flip(1)[:, :keep], s[:keep]


def rank_floor(rows: int) -> float:
    """Singular values at or below this share of the largest are numerically zero (a float32 matrix this tall)."""
    return rows * torch.finfo(torch.float32).eps


def polar_floor(rows: int) -> float:
    """Nearly dependent directions are kept down to 10·sqrt(rows · eps(float64)) · S_max (~3e-6 for 384 rows, the
    smallest the Gram matrix still resolves to 1%): they are a real part of a polar factor (MiniLM's Iso-CTS has
    one at 2e-5)."""
    return 10 * (rows * torch.finfo(torch.float64).eps) ** 0.5


def _tall(m: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """m with its longer side first (so the Gram matrix is the small one; a view, no copy), and whether it was."""
    tall = m.shape[0] >= m.shape[1]
    return (m if tall else m.T), tall


def _first(deltas: list[torch.Tensor]) -> torch.Tensor:
    return deltas[0]


def _gram(a: torch.Tensor) -> torch.Tensor:
    return grams(TaskRows.of([a]), list)[0]


def _times(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a·w in float64, a block of rows at a time (no float64 copy of a)."""
    return _collect(times(TaskRows.of([a]), _first, w, torch.float64), (a.shape[0], w.shape[1]), torch.float64,
                    a.device)


def svd(m: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of a matrix in float64, largest first (the `top` largest only, when given), without the directions
    whose singular value is numerically zero (at or below max(m.shape) · eps(float32) · S_max): a rank-deficient
    matrix has no direction there, and an SVD routine fills it with arbitrary vectors."""
    a, tall = _tall(m)
    v, s = spectrum(_gram(a), rank_floor(a.shape[0]))
    v, s = v[:, :top], s[:top]
    u = _times(a, v / s)
    return (u, s, v.T) if tall else (v, s, u.T)


def polar(m: torch.Tensor) -> torch.Tensor:
    """The closest partial isometry to `m` in the Frobenius norm (float64): P·Qᵀ from m = P·S·Qᵀ (the orthogonal
    Procrustes solution; orthonormal columns, or rows for a wide matrix, where `m` has full rank). Directions that m
    lacks (two tasks sharing a singular vector) are left out, where an SVD would fill them with arbitrary vectors;
    nearly dependent ones are kept (`polar_floor`)."""
    a, tall = _tall(m)
    p = _times(a, polar_map(_gram(a), a.shape[0]))
    return p if tall else p.T


def polar_map(gram: torch.Tensor, rows: int) -> torch.Tensor:
    """W with a·W the polar factor of a tall matrix a (= U·Vᵀ), from a's Gram matrix: V·diag(1/S)·Vᵀ."""
    v, s = spectrum(gram, polar_floor(rows))
    return (v / s) @ v.T


def isotropic_map(gram: torch.Tensor, rows: int, scale: float) -> torch.Tensor:
    """W with a·W = scale · mean(S) · U·Vᵀ for a tall matrix a (Iso-C's flat spectrum), over the directions `svd`
    keeps. A zero matrix has none, and W is zero."""
    v, s = spectrum(gram, rank_floor(rows))
    return (v * (scale * s.mean() / s)) @ v.T


def polar_times(rows: TaskRows, left: Callable[[list[torch.Tensor]], torch.Tensor], right: torch.Tensor
                ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The rows of polar(L)·right, where L's rows are left(block): directions put side by side (TSV's, Iso-CTS's)
    made orthonormal, then mapped back. One pass for L's Gram matrix, one for the output; where L has more columns
    than rows (a near-square matrix keeping more than its rank), L is small and held whole."""
    height = rows.shape[0]
    if right.shape[0] <= height:
        return times(rows, left, polar_map(grams(rows, lambda deltas: [left(deltas)])[0], height) @ right)
    parts, dtype = [], None
    for _, _, deltas in rows.blocks():
        parts.append(left(deltas))
        dtype = deltas[0].dtype
    merged = polar(torch.cat(parts)) @ right
    return ((start, min(height, start + ROWS_PER_BLOCK), merged[start:start + ROWS_PER_BLOCK].to(dtype))
            for start in range(0, height, ROWS_PER_BLOCK))
