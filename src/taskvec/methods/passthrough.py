"""Passthrough: one model's tensors as they are, optionally scaled -- the method of mergekit's "frankenmerges",
which stack layer ranges of several models through ``slices`` (one source per slice)."""

from __future__ import annotations

from . import FINITE, MergeMethod, Param, register

SCALE = Param("scale", float, 1.0, "multiply the model's tensors by this", range=FINITE)


def passthrough(base, weights_in, models, params):
    (x,), (model,) = list(weights_in), models
    return x if model["scale"] == 1.0 else x.mul(model["scale"])


register(
    MergeMethod(
        name="passthrough",
        description="one model's tensors as they are (times scale): stacks layer ranges through slices",
        inputs="weights",
        fn=passthrough,
        model_params=(SCALE,),
        base="optional",
        max_models=1,
        paper="mergekit (Goddard et al. 2024, arXiv:2403.13257): frankenmerges such as Goliath-120B",
        granularity="entry",
    )
)
