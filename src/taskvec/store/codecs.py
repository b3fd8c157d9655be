"""Compressed task vectors: tiny pure functions that encode one tensor into a few plain tensors and decode it back.

    dense-bf16         the deltas in bfloat16 (half the bytes; ~3 significant digits)
    sparse:D           the top D fraction of entries by magnitude: flat indices (sorted) + values
    lowrank:R          rank-R truncated SVD of a matrix: u = U·S [m, R], v = Vᵀ [R, n]
    lowrank-energy:E   the smallest rank keeping a fraction E of the squared singular values, per matrix
    sign[:tensor]      one bit per entry (1 = positive, packed 8 per byte, most significant bit first, row by row)
                       and a scale per row (or per tensor): mean |τ|, the L2-best scale for a sign (BitDelta without
                       its distillation step)

A tensor is kept dense (in the storage dtype) where its encoding would not be smaller: lowrank for 1-D tensors and
matrices too small or too full-rank to gain. Everything here is a function of tensors only: no files, no manifests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TaskvecError
from ..lazy import torch

KINDS = ("dense-bf16", "sparse", "lowrank", "lowrank-energy", "sign")


@dataclass(frozen=True)
class Compression:
    kind: str
    value: float | None = None  # density, rank, energy; "tensor" scale for sign is value 0

    def __str__(self) -> str:
        if self.kind == "sign":
            return "sign:tensor" if self.value == 0 else "sign"
        if self.value is None:
            return self.kind
        return f"{self.kind}:{int(self.value) if self.kind == 'lowrank' else f'{self.value:g}'}"


def parse(spec: str) -> Compression:
    """``sparse:0.1`` -> Compression("sparse", 0.1); one clear error for anything else."""
    kind, _, arg = str(spec).strip().partition(":")
    usage = ("use dense-bf16, sparse:DENSITY (0 < DENSITY <= 1), lowrank:RANK (an integer >= 1), "
             "lowrank-energy:E (0 < E <= 1) or sign (sign:tensor for one scale per tensor)")
    if kind == "dense-bf16" and not arg:
        return Compression(kind)
    if kind == "sign" and arg in ("", "row", "tensor"):
        return Compression(kind, 0.0 if arg == "tensor" else None)
    try:
        value = float(arg)
    except ValueError:
        raise TaskvecError(f"--compress {spec!r}: {usage}") from None
    if kind in ("sparse", "lowrank-energy") and 0 < value <= 1:
        return Compression(kind, value)
    if kind == "lowrank" and value >= 1 and value == int(value):
        return Compression(kind, int(value))
    raise TaskvecError(f"--compress {spec!r}: {usage}")


# ---- sparse: top-k by magnitude -------------------------------------------------------------------------------

def sparse_count(numel: int, density: float) -> int:
    """Entries kept: ceil(density * numel), so density 1 keeps every entry."""
    return min(numel, math.ceil(density * numel - 1e-9))


def index_dtype(numel: int):
    return torch.int32 if numel <= 2**31 - 1 else torch.int64


def sparse_encode(t, density: float, dtype=None):
    """(indices, values): the flat positions (ascending) and values of the ceil(density·numel) largest |entries|."""
    return sparse_encode_count(t, sparse_count(t.numel(), density), dtype)


def sparse_encode_count(t, k: int, dtype=None):
    """``sparse_encode`` keeping exactly k entries (ties at the cut: whichever ``torch.topk`` returns)."""
    flat = t.reshape(-1)
    idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values if k < flat.numel() else \
        torch.arange(flat.numel())
    return idx.to(index_dtype(flat.numel())), flat[idx].to(dtype or t.dtype)


def sparse_decode(indices, values, shape, start: int = 0, stop: int | None = None):
    """The dense float32 entries [start, stop) of the flat tensor (all of it by default); stored entries outside
    the window are left out."""
    stop = math.prod(shape) if stop is None else stop
    lo, hi = sparse_window(indices, start, stop) if (start, stop) != (0, math.prod(shape)) else (0, len(indices))
    out = torch.zeros(stop - start, dtype=torch.float32)
    out[indices[lo:hi].long() - start] = values[lo:hi].float()
    return out


def sparse_window(indices, start: int, stop: int) -> tuple[int, int]:
    """Which stored entries fall in flat positions [start, stop) (indices ascending)."""
    bounds = torch.tensor([start, stop], dtype=indices.dtype)
    lo, hi = torch.searchsorted(indices, bounds).tolist()
    return lo, hi


# ---- low rank: truncated SVD ----------------------------------------------------------------------------------

def lowrank_pays(shape: tuple[int, ...], rank: int) -> bool:
    """Factors of a matrix beat the matrix when rank·(m + n) < m·n."""
    return len(shape) == 2 and rank * (shape[0] + shape[1]) < shape[0] * shape[1]


def energy_rank(singular_values, energy: float) -> int:
    """The smallest k with Σ_{i<k} s_i² >= energy · Σ s_i² (at least 1; energy 1 keeps every non-zero s_i)."""
    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    if energy >= 1:
        return max(1, int((sq > 0).sum()))
    cum = torch.cumsum(sq, 0)
    first = int(torch.searchsorted(cum, torch.tensor([energy * total], dtype=cum.dtype)))
    return max(1, min(len(sq), first + 1))


def lowrank_encode(t, rank: int, dtype=None):
    """(u, v) with u = U[:, :r]·S[:r] and v = Vᵀ[:r], the best rank-r approximation u @ v (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(t.float(), full_matrices=False)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).to(dtype or t.dtype).contiguous(), vh[:r].to(dtype or t.dtype).contiguous()


def lowrank_decode(u, v):
    return u.float() @ v.float()


# ---- sign: one bit per entry plus a scale ---------------------------------------------------------------------

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor seen as rows: [shape[0], rest] for 2-D and up, one row for 1-D and scalars."""
    if len(shape) >= 2:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def pack_bits(bits):
    """[rows, cols] bool -> [rows, ceil(cols / 8)] uint8, most significant bit first (numpy.packbits' order)."""
    rows, cols = bits.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.uint8)
    padded[:, :cols] = bits
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8)
    return (padded.reshape(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8) if cols else padded[:, :0]


def unpack_bits(packed, cols: int):
    """The inverse of ``pack_bits``: [rows, ceil(cols / 8)] uint8 -> [rows, cols] bool."""
    shifts = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :cols].bool()


def sign_encode(t, per_row: bool = True):
    """(bits, scale): bit 1 where τ >= 0, scale = mean |τ| per row ([rows]) or over the tensor ([1])."""
    rows, cols = as_rows(tuple(t.shape))
    m = t.float().reshape(rows, cols)
    scale = m.abs().mean(dim=1) if per_row else m.abs().mean().reshape(1)
    return pack_bits(m >= 0), scale.float()


def sign_decode(bits, scale, cols: int):
    """[rows, cols] float32: ±scale (a [1] scale serves every row)."""
    signs = unpack_bits(bits, cols).float() * 2 - 1
    return signs * scale.float().reshape(-1, 1)


def relative_error(t, approx) -> tuple[float, float]:
    """(‖τ − τ̂‖², ‖τ‖²) in float64, to be summed over tensors before the square root."""
    t64 = t.double().reshape(-1)
    return float((t64 - approx.double().reshape(-1)).square().sum()), float(t64.square().sum())
