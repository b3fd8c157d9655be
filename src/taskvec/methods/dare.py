"""DARE (Yu et al., 2024): drop each task-vector entry with probability 1 - density and rescale the survivors by
1 / density, which keeps the task vector's expected value; `dare_ties` adds TIES' sign election."""

from . import MergeMethod, register
from .generalized import MODEL_PARAMS, common_params, merge_deltas
from .sparsify import random_keep


def drop_and_rescale(delta, model_params, params):
    density = model_params["density"]
    if density <= 0:
        return delta * 0
    kept = delta * random_keep(delta, density, model_params["_seed"])
    return kept.div_(density) if params["rescale"] else kept


def dare_linear(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, drop_and_rescale, None)


def dare_ties(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, drop_and_rescale, params["consensus_method"])


PAPER = "Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099)"
for name, fn, consensus, what in (
    ("dare_linear", dare_linear, False, "randomly drop task-vector entries, rescale survivors, add"),
    ("dare_ties", dare_ties, True, "randomly drop task-vector entries, rescale survivors, elect signs (TIES)"),
):
    register(
        MergeMethod(
            name=name, description=what, inputs="deltas", fn=fn,
            params=common_params(normalize=False, rescale=True, consensus=consensus),
            model_params=MODEL_PARAMS, paper=PAPER, random=True, ignored=("int8_mask",),
        )
    )
