"""Arcee Fusion (Arcee AI, mergekit): keep only the changes of one model that matter most, judged by how far each
entry moved and how much its row's output distribution moved, with a threshold set by the tensor's own outliers.

Per tensor, with b = base and m = the model:

    importance = |m - b| * KL(softmax(m) || softmax(b))    (softmax and KL along the last dimension, one KL per row)
    threshold  = median + 1.5 * (Q3 - Q1)                   (of the importance over the whole tensor)
    merged     = b + (m - b) * [importance >= threshold]

Q1, median and Q3 are the sorted importances at positions floor(q * (n - 1)) for q = 1/4, 1/2, 3/4. The KL uses
softmax + 1e-8 on both sides, as mergekit 0.1.5 does. A row changed by a constant (softmax does not see it) has KL 0
and so importance 0; and when three quarters or more of the importances are 0 (a model that changed few rows), the
threshold is 0 and `>=` keeps every entry, i.e. the whole model -- mergekit's behaviour, kept here.

Where taskvec differs: mergekit estimates the quantiles of a tensor of more than 1,000,000 entries from 1,000,000
entries drawn with replacement from torch's global generator, so such tensors differ from run to run. taskvec
computes the exact quantiles of every tensor (a selection, no random numbers), which is what that sample
estimates; on tensors up to 1,000,000 entries both are exact and agree.
"""

from __future__ import annotations

from ..lazy import torch
from . import MergeMethod, register

KL_EPS = 1e-8


def importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """How much each entry matters: its change times its row's KL divergence between the two softmaxes."""
    p = torch.softmax(model, dim=-1) + KL_EPS
    q = torch.softmax(base, dim=-1) + KL_EPS
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (model - base).abs() * kl


def outlier_threshold(values: torch.Tensor) -> torch.Tensor:
    """median + 1.5 * interquartile range, with the quantiles at sorted positions floor(q * (n - 1))."""
    flat = values.reshape(-1)
    last = flat.numel() - 1

    def at(position: int) -> torch.Tensor:  # the sorted value at a 0-based position, by selection
        return torch.kthvalue(flat, position + 1).values

    q1, median, q3 = at(last // 4), at(last // 2), at(3 * last // 4)
    return median + 1.5 * (q3 - q1)


def arcee_fusion(base, weights, models, params):
    model = weights[0]
    if model.numel() == 0:
        return model.clone()
    score = importance(model, base)
    keep = score >= outlier_threshold(score)
    return base + (model - base) * keep


register(
    MergeMethod(
        name="arcee_fusion",
        description="keep a model's changes whose size times its row's softmax KL is an outlier (>= median + 1.5 IQR)",
        inputs="weights",
        fn=arcee_fusion,
        max_models=1,
        paper="Arcee AI, Arcee Fusion (mergekit; arcee.ai)",
    )
)
