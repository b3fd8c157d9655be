"""Linear: a weighted average of the models' weights ("model soup", Wortsman et al., 2022). Needs no base."""

from __future__ import annotations

from . import ANY, NORMALIZE_ON, WEIGHT, Kernel, MergeMethod, register, weight_total, weighted_sum, weights_of


def linear(base, weights_in, models, params):
    weights = weights_of(models)
    merged = weighted_sum(weights_in, weights)
    if params["normalize"]:
        merged.div_(weight_total(weights))
    return merged


register(
    MergeMethod(
        name="linear",
        description="weighted average of the models' weights (model soup)",
        inputs="weights",
        fn=linear,
        params=(NORMALIZE_ON,),
        model_params=(WEIGHT,),
        base="weighted",
        paper="Wortsman et al. 2022, Model soups (arXiv:2203.05482)",
        streaming=True,
        granularity="entry",
        ignored=("int8_mask",),
        kernel=Kernel("weighted_models", linear, {"weight": ANY, "normalize": ANY}),
    )
)
