"""Multi-SLERP (Goddard, 2025): spherical interpolation of any number of models, or of their task vectors when a
base is given, with a weight each. Per tensor, flattened.

mergekit 0.1.5 projects the unit directions onto the tangent plane at their normalised weighted mean, averages
them there and maps the average back with the exponential map. At that point the weighted average of the
projections is zero by construction (the mean's own component is exactly what the projection removes), so the map
back returns the mean itself, and the result is, up to rounding:

    direction = normalise(sum_i w_i x_i / (|x_i| + eps)),   length = sum_i w_i |x_i|,   merged = length * direction

the normalised weighted mean of the directions ("nlerp"), at the weighted mean of the lengths. taskvec computes
that directly. Unlike a linear blend it keeps the length of models that point apart. It equals SLERP at the
midpoint of two vectors of equal length, not elsewhere: for two unit vectors 90 degrees apart at weights 0.75 and
0.25 it turns 18.4 degrees, SLERP 22.5. For the true spherical mean see `karcher`. `normalize_weights` (default)
divides the weights by their sum first; without it the length is the weighted sum of the lengths.

When the weighted directions cancel (antipodal task vectors with equal weights, or every task vector zero -- a
tensor no fine-tune changed) there is no direction: the result is the linear blend sum_i w_i x_i, as mergekit
gives for two inputs (mergekit raises an error for three or more; taskvec returns the blend, the base for zero task
vectors). One model is returned as it is.
"""

from __future__ import annotations

from ..errors import TaskvecError
from ..lazy import torch
from . import WEIGHT, MergeMethod, Param, Range, register, weights_of

NORMALIZE_WEIGHTS = Param("normalize_weights", bool, True, "divide the weights by their sum")
EPS = Param("eps", float, 1e-8, "added to each norm before dividing by it, and the mean length below which the "
            "directions count as cancelled", range=Range(0.0, None, low_open=True))


def multislerp_tensors(tensors: list[torch.Tensor], weights: list[float], eps: float) -> torch.Tensor:
    flat = [t.reshape(-1) for t in tensors]
    norms = [torch.linalg.vector_norm(x) for x in flat]
    mean = torch.zeros_like(flat[0])
    for x, n, w in zip(flat, norms, weights):
        mean += w * (x / (n + eps))
    length = torch.linalg.vector_norm(mean)
    if length < eps:  # the directions cancel: no direction to interpolate on
        blend = torch.zeros_like(flat[0])
        for x, w in zip(flat, weights):
            blend += x * w
        return blend.reshape(tensors[0].shape)
    scale = sum(w * n for w, n in zip(weights, norms))
    return ((mean / length) * scale).reshape(tensors[0].shape)


def multislerp(base, weights_in, models, params):
    tensors = list(weights_in)
    if len(tensors) == 1:
        return tensors[0]
    weights = weights_of(models)
    if params["normalize_weights"]:
        total = sum(weights)
        if total == 0:
            raise TaskvecError("multislerp: the weights sum to 0 and normalize_weights is on; change a weight or set "
                               "normalize_weights: false")
        weights = [w / total for w in weights]
    if base is None:
        return multislerp_tensors(tensors, weights, params["eps"])
    return base + multislerp_tensors([t - base for t in tensors], weights, params["eps"])


register(
    MergeMethod(
        name="multislerp",
        description="spherical blend of any number of models (of their task vectors, given a base), weighted",
        inputs="weights",
        fn=multislerp,
        params=(NORMALIZE_WEIGHTS, EPS),
        model_params=(WEIGHT,),
        base="optional",
        paper="Goddard 2025, Multi-SLERP (goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit",
    )
)
