"""DELLA (Deep et al., 2024): MagPrune drops entries with probabilities that fall with magnitude rank, and
rescales each survivor by 1 / its keep probability; `della` adds TIES' sign election, `della_linear` does not."""

from __future__ import annotations

from . import Param, Range, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import random_keep_ranked, rank_keep_probabilities

EPSILON = Param("epsilon", float, 0.15, "keep probabilities span density - epsilon .. density + epsilon by rank",
                range=Range(0.0))


def magprune(delta, model, params):
    density = model["density"]
    if density >= 1:
        return delta
    probabilities = rank_keep_probabilities(delta, density, model["epsilon"])
    kept = delta * random_keep_ranked(delta, probabilities, model.require_seed(), model.offset)
    return kept.div_(probabilities) if params["rescale"] else kept


def check(values, params):
    """Every keep probability must be a probability, and never 0: survivors are divided by it."""
    density, epsilon = values["density"], values["epsilon"]
    if density < 1 and not (density - epsilon > 0 and density + epsilon <= 1):
        return (f"density - epsilon must be above 0 and density + epsilon at most 1 (density {density:g}, "
                f"epsilon {epsilon:g}): lower epsilon")
    return None


PAPER = "Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)"
register(task_vector_method(
    "della", "drop entries with rank-based probabilities, rescale, elect signs (TIES)", magprune, consensus=True,
    normalize=True, rescale=True, model_params=MODEL_PARAMS + (EPSILON,), paper=PAPER, random=True,
    granularity="row", check=check,
))
register(task_vector_method(
    "della_linear", "drop entries with rank-based probabilities, rescale, add", magprune, consensus=False,
    normalize=False, rescale=True, model_params=MODEL_PARAMS + (EPSILON,), paper=PAPER, random=True,
    granularity="row", check=check,
))
