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


def _tall(m: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """m in float64 with its longer side first (so the Gram matrix is the small one), and whether it already was."""
    m = m.double()
    tall = m.shape[0] >= m.shape[1]
    return (m if tall else m.T), tall


def _rank_floor(a: torch.Tensor) -> float:
    return max(a.shape) * torch.finfo(torch.float32).eps


def _spectrum(a: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """V and S of a tall float64 matrix a = U·diag(S)·Vᵀ from the eigendecomposition of its Gram matrix aᵀa, largest
    first, without the directions at or below floor · S_max.

    Why the Gram matrix: on a CPU, aᵀa plus its eigh costs about half of an SVD of a (5632×2048: 2.8 s against 7.5 s
    on 2 cores). Squaring loses nothing that matters in float64: an eigenvalue is off by about eps(float64)·S_max²,
    so each kept singular value is exact to ~1e-9 relative, far below the float32 of the output."""
    w, v = torch.linalg.eigh(a.T @ a)
    s = w.flip(0).clamp_min(0).sqrt()
    if s.numel() == 0 or s[0] == 0:
        return v[:, :0], s[:0]
    keep = int((s > s[0] * floor).sum())
    return v.flip(1)[:, :keep], s[:keep]


def svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of a matrix in float64, largest first, without the directions whose singular value is numerically
    zero (at or below max(m.shape) · eps(float32) · S_max): a rank-deficient matrix has no direction there, and an
    SVD routine fills it with arbitrary vectors."""
    a, tall = _tall(m)
    v, s = _spectrum(a, _rank_floor(a))
    u = (a @ v).div_(s)
    return (u, s, v.T) if tall else (v, s, u.T)


def flattened(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U·Vᵀ (float64) and S of a matrix, over the directions `svd` keeps: its singular directions with a flat unit
    spectrum, from one matrix product instead of two."""
    return _isometry(m, _rank_floor)


def polar(m: torch.Tensor) -> torch.Tensor:
    """The closest partial isometry to `m` in the Frobenius norm: P·Qᵀ from m = P·S·Qᵀ (the orthogonal Procrustes
    solution; orthonormal columns, or rows for a wide matrix, where `m` has full rank). Directions that m lacks (two
    tasks sharing a singular vector) are left out, where an SVD would fill them with arbitrary vectors. Nearly
    dependent directions are kept down to 10·sqrt(max(m.shape) · eps(float64)) · S_max (~3e-6 for a 384-wide
    matrix, the smallest the Gram matrix still resolves to 1%): they are a real part of the polar factor (MiniLM's
    Iso-CTS has one at 2e-5)."""
    return _isometry(m, lambda a: 10 * (max(a.shape) * torch.finfo(torch.float64).eps) ** 0.5)[0]


def _isometry(m: torch.Tensor, floor) -> tuple[torch.Tensor, torch.Tensor]:
    """m·(mᵀm)^(-1/2) on the directions above floor(m) · S_max, and their S."""
    a, tall = _tall(m)
    v, s = _spectrum(a, floor(a))
    p = a @ ((v / s) @ v.T)
    return (p if tall else p.T), s
