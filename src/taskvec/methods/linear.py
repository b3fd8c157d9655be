"""Linear: a weighted average of the models' weights ("model soup", Wortsman et al., 2022). Needs no base."""

from . import NORMALIZE_ON, WEIGHT, MergeMethod, register, weight_total, weighted_sum


def linear(base, weights_in, model_params, params):
    weights = [p["weight"] for p in model_params]
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
    )
)
