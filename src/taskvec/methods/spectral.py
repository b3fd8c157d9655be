"""Shared linear algebra of the subspace methods (TSV, Iso-C, Iso-CTS): which tensors are matrices, the SVD kept to
the directions a matrix really has, and the closest orthogonal matrix.

Not a method (it registers nothing). Everything is in float64 on the tensor's device: the decompositions then give
the same float32 result for any thread count, and sign conventions of singular vectors never matter, because every
product formed here (u·vᵀ pairs, polar factors) is invariant to them.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _tall(m: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """m with its longer side first (so the Gram matrix is the small one; a view, no copy), and whether it was."""
    tall = m.shape[0] >= m.shape[1]
    return (m if tall else m.T), tall


def _rank_floor(a: torch.Tensor) -> float:
    return max(a.shape) * torch.finfo(torch.float32).eps


def _gram(a: torch.Tensor) -> torch.Tensor:
    """aᵀa in float64, accumulated over blocks of rows (no float64 copy of a)."""
    g = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], ROWS_PER_BLOCK):
        block = a[i:i + ROWS_PER_BLOCK].double()
        g.addmm_(block.T, block)
    return g


def _times(a: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a·w computed in float64 a block of rows at a time, stored in `dtype`."""
    out = torch.empty(a.shape[0], w.shape[1], dtype=dtype, device=a.device)
    for i in range(0, a.shape[0], ROWS_PER_BLOCK):
        out[i:i + ROWS_PER_BLOCK] = a[i:i + ROWS_PER_BLOCK].double() @ w
    return out


def _spectrum(a: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """V and S of a tall matrix a = U·diag(S)·Vᵀ from the float64 eigendecomposition of its Gram matrix aᵀa, largest
    first, without the directions at or below floor · S_max.

    Why the Gram matrix: on a CPU, aᵀa plus its eigh costs about half of an SVD of a (5632×2048: 2.8 s against 7.5 s
    on 2 cores). Squaring loses nothing that matters in float64: an eigenvalue is off by about eps(float64)·S_max²,
    so each kept singular value is exact to ~1e-9 relative, far below the float32 of the output."""
    w, v = torch.linalg.eigh(_gram(a))
    s = w.flip(0).clamp_min(0).sqrt()
    if s.numel() == 0 or s[0] == 0:
        return v[:, :0], s[:0]
    keep = int((s > s[0] * floor).sum())
    return v.flip(1)[:, :keep], s[:keep]


def svd(m: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of a matrix in float64, largest first (the `top` largest only, when given), without the directions
    whose singular value is numerically zero (at or below max(m.shape) · eps(float32) · S_max): a rank-deficient
    matrix has no direction there, and an SVD routine fills it with arbitrary vectors."""
    a, tall = _tall(m)
    v, s = _spectrum(a, _rank_floor(a))
    v, s = v[:, :top], s[:top]
    u = _times(a, v / s, torch.float64)
    return (u, s, v.T) if tall else (v, s, u.T)


def isotropic(m: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """scale · mean(S) · U·Vᵀ in `dtype`, over the directions `svd` keeps: the matrix's singular directions with a
    flat spectrum at its mean singular value (Iso-C), written block by block into the output."""
    return _through_spectrum(m, _rank_floor, lambda v, s: v * (scale * s.mean() / s), dtype)


def polar(m: torch.Tensor) -> torch.Tensor:
    """The closest partial isometry to `m` in the Frobenius norm (float64): P·Qᵀ from m = P·S·Qᵀ (the orthogonal
    Procrustes solution; orthonormal columns, or rows for a wide matrix, where `m` has full rank). Directions that m
    lacks (two tasks sharing a singular vector) are left out, where an SVD would fill them with arbitrary vectors.
    Nearly dependent directions are kept down to 10·sqrt(max(m.shape) · eps(float64)) · S_max (~3e-6 for a
    384-wide matrix, the smallest the Gram matrix still resolves to 1%): they are a real part of the polar factor
    (MiniLM's Iso-CTS has one at 2e-5)."""
    return _through_spectrum(m, lambda a: 10 * (max(a.shape) * torch.finfo(torch.float64).eps) ** 0.5,
                             lambda v, s: v / s, torch.float64)


def _through_spectrum(m: torch.Tensor, floor, scaled, dtype: torch.dtype) -> torch.Tensor:
    """m·scaled(V, S)·Vᵀ in `dtype`, on the directions above floor(m) · S_max: with scaled = V/S it is U·Vᵀ, the
    singular directions with a unit spectrum. No directions (a zero matrix) give zeros."""
    a, tall = _tall(m)
    v, s = _spectrum(a, floor(a))
    p = _times(a, scaled(v, s) @ v.T, dtype)
    return p if tall else p.T
