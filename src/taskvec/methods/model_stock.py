"""Model Stock (Jang et al., 2024): average the fine-tuned models, then pull the average towards the base by a
ratio set by how aligned their task vectors are: t = N cos / (1 + (N - 1) cos), with cos the mean pairwise cosine.

Aligned task vectors (cos -> 1) keep the average (t -> 1); orthogonal ones (cos -> 0) fall back to the base.
"""

from __future__ import annotations

from ..lazy import torch
from . import MergeMethod, Param, register


def model_stock(base, weights, models, params):
    shape = base.shape
    if params["filter_wise"]:  # one ratio per output row
        w0 = base.reshape(1, -1) if base.dim() < 2 else base.reshape(base.shape[0], -1)
        ws = [w.reshape(w0.shape) for w in weights]
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in weights]
    deltas = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(deltas):
        for b in deltas[i + 1:]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # opposing task vectors: no finite estimate, keep the base
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(cos), denominator))
    average = torch.stack(ws).mean(dim=0)
    return (t * average + (1 - t) * w0).reshape(shape)


register(
    MergeMethod(
        name="model_stock",
        description="average of the fine-tunes, pulled towards the base by their task vectors' angle",
        inputs="weights",
        fn=model_stock,
        params=(Param("filter_wise", bool, False, "one ratio per output row instead of per tensor"),),
        min_models=2,
        paper="Jang et al. 2024, Model Stock (arXiv:2403.19522)",
    )
)
