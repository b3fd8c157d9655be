"""Task arithmetic: theta_base + lambda * sum_i w_i * tau_i (Ilharco et al., 2023).

A negative weight subtracts a task vector (negation); weights of +1, +1, -1 give an analogy.
"""

from . import NORMALIZE_OFF, WEIGHT, MergeMethod, Param, register, weight_total, weighted_sum


def task_arithmetic(base, deltas, model_params, params):
    weights = [p["weight"] for p in model_params]
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
        params=(
            Param("lambda", float, 1.0, "scale applied to the merged task vector"),
            NORMALIZE_OFF,
        ),
        model_params=(WEIGHT,),
        paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (arXiv:2212.04089)",
        streaming=True,
        granularity="entry",
        ignored=("int8_mask", "density", "rescale"),  # mergekit 0.1.5 accepts and ignores them here
    )
)
