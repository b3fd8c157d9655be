"""DELLA (Deep et al., 2024): MagPrune drops entries with probabilities that fall with magnitude rank, and
rescales each survivor by 1 / its keep probability; `della` adds TIES' sign election, `della_linear` does not."""

from . import MergeMethod, Param, register
from .generalized import MODEL_PARAMS, common_params, merge_deltas
from .sparsify import random_keep_ranked, rank_keep_probabilities

EPSILON = Param("epsilon", float, 0.15, "keep probabilities span density - epsilon .. density + epsilon by rank")


def magprune(delta, model_params, params):
    density = model_params["density"]
    if density >= 1:
        return delta
    if density <= 0:
        return delta * 0
    probabilities = rank_keep_probabilities(delta, density, model_params["epsilon"])
    kept = delta * random_keep_ranked(delta, probabilities, model_params["_seed"])
    return kept.div_(probabilities) if params["rescale"] else kept


def della(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, magprune, params["consensus_method"])


def della_linear(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, magprune, None)


PAPER = "Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)"
for name, fn, consensus, normalize, what in (
    ("della", della, True, True, "drop entries with rank-based probabilities, rescale, elect signs (TIES)"),
    ("della_linear", della_linear, False, False, "drop entries with rank-based probabilities, rescale, add"),
):
    register(
        MergeMethod(
            name=name, description=what, inputs="deltas", fn=fn,
            params=common_params(normalize=normalize, rescale=True, consensus=consensus),
            model_params=MODEL_PARAMS + (EPSILON,), paper=PAPER, random=True, ignored=("int8_mask",),
        )
    )
