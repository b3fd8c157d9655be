"""NearSwap (alchemonaut, 2024): take the other model's value where it is near the base's, and move only a step of
t towards it where it is far. Entry by entry, with a = base, b = the model:

    w = clamp(t / max(|a - b|, 1e-6), 0, 1),    merged = w * b + (1 - w) * a

Where |a - b| <= t, w = 1 and the entry is the model's; further apart, w = t / |a - b| and the entry is a moved by
exactly t towards b. So, for t >= 1e-6, the merge is the base plus the task vector clipped to [-t, t]: small changes
pass, large ones are capped -- hence small t (the method's reference model used 1e-4). As in mergekit 0.1.5.
"""

from __future__ import annotations

from ..lazy import torch
from . import REQUIRED, MergeMethod, Param, Range, register

T = Param("t", float, REQUIRED, "distance from the base within which the model's value is taken; beyond it the base "
          "moves this far towards the model", range=Range(0.0, None))
MIN_DISTANCE = 1e-6  # |a - b| is taken as at least this when dividing (mergekit's rule)


def nearswap_tensors(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    w = (t / (a - b).abs().clamp(min=MIN_DISTANCE)).clamp(0, 1)
    return w * b + (1 - w) * a


def nearswap(base, weights, models, params):
    return nearswap_tensors(params["t"], base, weights[0])


register(
    MergeMethod(
        name="nearswap",
        description="the model's value where it is within t of the base's; elsewhere the base moved t towards it",
        inputs="weights",
        fn=nearswap,
        params=(T,),
        max_models=1,
        granularity="entry",
        paper="alchemonaut 2024, QuartetAnemoi-70B-t0.0001 model card (huggingface.co/alchemonaut)",
    )
)
