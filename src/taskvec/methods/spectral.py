"""Shared linear algebra of the subspace methods (TSV, Iso-C, Iso-CTS): which tensors are matrices, the SVD kept to
the directions a matrix really has, and the closest orthogonal matrix.

Not a method (it registers nothing). Everything is in float64 on the tensor's device: the SVDs then give the same
float32 result for any thread count, and sign conventions of singular vectors never matter, because every product
formed here (u·vᵀ pairs, polar factors) is invariant to them.
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


def svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of a matrix in float64, without the directions whose singular value is numerically zero (at or
    below max(m, n) · eps(float32) · S_max): a rank-deficient matrix has no direction there, and an SVD routine
    fills it with arbitrary vectors."""
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0], s[:0], vh[:0]
    keep = int((s > s[0] * max(m.shape) * torch.finfo(torch.float32).eps).sum())
    return u[:, :keep], s[:keep], vh[:keep]


def polar(m: torch.Tensor) -> torch.Tensor:
    """The closest matrix with orthonormal columns (or rows, for a wide matrix) to `m`, in the Frobenius norm:
    P·Qᵀ from m = P·S·Qᵀ (the orthogonal Procrustes solution)."""
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    return p @ qh
