"""DELLA (Deep et al., 2024): MagPrune drops entries with probabilities that fall with magnitude rank, and
rescales each survivor by 1 / its keep probability; `della` adds TIES' sign election, `della_linear` does not."""

from . import Param, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import random_keep_ranked, rank_keep_probabilities

EPSILON = Param("epsilon", float, 0.15, "keep probabilities span density - epsilon .. density + epsilon by rank")


def magprune(delta, model_params, params):
    density = model_params["density"]
    if density >= 1:
        return delta
    if density <= 0:
        return delta * 0
    probabilities = rank_keep_probabilities(delta, density, model_params["epsilon"])
    kept = delta * random_keep_ranked(delta, probabilities, model_params["_seed"], model_params.get("_offset", 0))
    return kept.div_(probabilities) if params["rescale"] else kept


PAPER = "Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)"
register(task_vector_method(
    "della", "drop entries with rank-based probabilities, rescale, elect signs (TIES)", magprune, consensus=True,
    normalize=True, rescale=True, model_params=MODEL_PARAMS + (EPSILON,), paper=PAPER, random=True,
    granularity="row",
))
register(task_vector_method(
    "della_linear", "drop entries with rank-based probabilities, rescale, add", magprune, consensus=False,
    normalize=False, rescale=True, model_params=MODEL_PARAMS + (EPSILON,), paper=PAPER, random=True,
    granularity="row",
))
