"""Exact magnitude thresholds over a whole task vector, in two streaming passes and constant memory.

TIES' paper keeps the top-k% entries of each task vector as a whole, not of each tensor. The k-th largest
magnitude of a multi-gigabyte task vector is found without holding it: non-negative float32 values sort like their
bit patterns read as integers, so pass 1 counts magnitudes by their top 16 bits (32,768 bins) to find the bin that
holds each wanted rank, and pass 2 counts the low 16 bits of the entries in that bin only, which pins the exact
value. The result is exact, not an approximation; the cost is two extra reads of the inputs.
"""

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import TaskvecError
from .methods import MergeMethod
from .methods.sparsify import keep_count

HI_BINS, LO_BINS = 1 << 15, 1 << 16


def bin_of_rank(cumulative, rank: int) -> tuple[int, int]:
    """(bin, rank within that bin) of the 1-based ascending `rank`, from a histogram's cumulative counts."""
    b = int(np.searchsorted(np.asarray(cumulative), rank))
    return b, rank - (int(cumulative[b - 1]) if b > 0 else 0)


def magnitude_of(high: int, low: int) -> float:
    """The non-negative float32 whose top 16 bits are `high` and low 16 bits `low`."""
    return float(np.array([(high << 16) | low], dtype=np.uint32).view(np.float32)[0])


def _bits(delta: torch.Tensor) -> torch.Tensor:
    return delta.detach().float().abs().reshape(-1).cpu().view(torch.int32)


def exact_ascending_ranks(
    tensors: Sequence,
    read_deltas: Callable[[object], list[torch.Tensor]],
    ranks: list[list[int]],
    workers: int = 1,
) -> list[list[float]]:
    """For each input i, the values of |delta_i| at the 1-based ascending ranks ``ranks[i]``, over all ``tensors``.

    ``read_deltas(t)`` returns every input's float task vector for tensor ``t``.
    """
    n_inputs = len(ranks)
    hi = torch.zeros(n_inputs, HI_BINS, dtype=torch.int64)
    lock = threading.Lock()

    def count_hi(t):
        counts = torch.stack([torch.bincount(_bits(d) >> 16, minlength=HI_BINS) for d in read_deltas(t)])
        with lock:
            hi.add_(counts)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(count_hi, tensors))
    cum_hi = hi.cumsum(dim=1)
    targets = []  # per input: [(bin, rank within bin)]
    for i, wanted in enumerate(ranks):
        row = []
        for r in wanted:
            row.append(bin_of_rank(cum_hi[i].numpy(), r))
        targets.append(row)
    bins = [sorted({b for b, _ in row}) for row in targets]
    lo = [{b: torch.zeros(LO_BINS, dtype=torch.int64) for b in row} for row in bins]

    def count_lo(t):
        for i, d in enumerate(read_deltas(t)):
            bits = _bits(d)
            top = bits >> 16
            counts = {b: torch.bincount(bits[top == b] & 0xFFFF, minlength=LO_BINS) for b in bins[i]}
            with lock:
                for b, c in counts.items():
                    lo[i][b].add_(c)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(count_lo, tensors))
    values = []
    for i, row in enumerate(targets):
        found = []
        for b, r in row:
            found.append(magnitude_of(b, bin_of_rank(lo[i][b].cumsum(0).numpy(), r)[0]))
        values.append(found)
    return values


def top_k_rank(total: int, density: float) -> int | None:
    """The ascending rank (1-based) of the smallest magnitude kept when the top `density` of `total` entries are
    kept (``keep_count`` of them), or None when nothing is kept."""
    keep = keep_count(total, density)
    return total - keep + 1 if keep else None


def global_scope(method: MergeMethod, resolved: dict) -> bool:
    if method.param("trim_scope") is None or not resolved:
        return False
    scopes = {params["trim_scope"] for _, params in resolved.values()}
    if len(scopes) > 1:
        raise TaskvecError(f"{method.name}: trim_scope must be the same for every tensor (filters or gradients set it "
                           "to both 'tensor' and 'global')")
    return scopes == {"global"}


def set_global_thresholds(method, resolved, plans, base, inputs, device, workers: int) -> None:
    """trim_scope: global -- rank magnitudes over each whole task vector (two extra streaming passes, exact)."""
    names = [p.name for p in plans]
    per_model = {}
    for key in ("density", "gamma"):
        if method.param(key) is None:
            continue
        for i, inp in enumerate(inputs):
            values = {resolved[n][0][i][key] for n in names}
            if len(values) > 1:
                raise TaskvecError(f"{method.name}: trim_scope global needs one {key} per model, but {inp.label} has "
                                   f"{len(values)} different values across tensors (filters or gradients)")
            per_model.setdefault(i, {})[key] = values.pop()
    total = sum(math.prod(p.shape) for p in plans)
    ranks, spans = [], []
    for i in range(len(inputs)):
        density = per_model[i]["density"]
        if "gamma" in per_model[i]:  # breadcrumbs: keep ascending ranks [bottom, bottom + keep)
            keep = int(density * total) if density < 1 else total
            bottom = max(0, total - keep - int(per_model[i]["gamma"] * total)) if density < 1 else 0
            spans.append((bottom + 1, bottom + keep) if keep else None)
        else:  # ties: keep the k largest
            rank = top_k_rank(total, density)
            spans.append((rank,) if rank else None)
        ranks.append(list(spans[-1] or ()))
    def read_deltas(name):
        b = base.read(name).to(device=device, dtype=torch.float32)
        return [inp.delta(name, b, torch.float32, device) for inp in inputs]

    values = exact_ascending_ranks(names, read_deltas, ranks, workers)
    for i, found in enumerate(values):
        if spans[i] is None:
            threshold = (math.inf, -math.inf) if "gamma" in per_model[i] else math.inf
        else:
            threshold = (found[0], found[1]) if "gamma" in per_model[i] else found[0]
        for n in names:
            resolved[n][0][i]["_threshold"] = threshold
