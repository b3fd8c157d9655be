"""Task arithmetic: theta_base + lambda * sum_i w_i * tau_i (Ilharco et al., 2023).

A negative weight subtracts a task vector (negation); weights of +1, +1, -1 give an analogy.
"""

from __future__ import annotations

from . import (ANY, LAMBDA, NORMALIZE_OFF, WEIGHT, Kernel, MergeMethod, register, weight_total, weighted_sum,
               weights_of)


def task_arithmetic(base, deltas, models, params):
    weights = weights_of(models)
    merged = weighted_sum(deltas, weights)
    if params["normalize"]:
        merged.div_(weight_total(weights))
    return merged.mul_(params["lambda"])


register(
    MergeMethod(
        name="task_arithmetic",
        description="base + lambda * sum of weighted task vectors (addition, negation, analogy)",
        inputs="deltas",
        fn=task_arithmetic,
        params=(LAMBDA, NORMALIZE_OFF),
        model_params=(WEIGHT,),
        paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (arXiv:2212.04089)",
        streaming=True,
        granularity="entry",
        ignored=("int8_mask", "density", "rescale"),  # mergekit 0.1.5 accepts and ignores them here
        kernel=Kernel("weighted_deltas", task_arithmetic, {"weight": ANY, "lambda": ANY, "normalize": ANY}),
    )
)
