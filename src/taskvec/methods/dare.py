"""DARE (Yu et al., 2024): drop each task-vector entry with probability 1 - density and rescale the survivors by
1 / density, which keeps the task vector's expected value; `dare_ties` adds TIES' sign election."""

from __future__ import annotations

from . import ANY, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import random_keep


def drop_and_rescale(delta, model, params):
    density = model["density"]
    kept = delta * random_keep(delta, density, model.require_seed(), model.offset)
    return kept.div_(density) if params["rescale"] else kept


PAPER = "Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099)"
KERNEL = {"sparsifier": "random", "handles": {"rescale": ANY}}
register(task_vector_method(
    "dare_linear", "randomly drop task-vector entries, rescale survivors, add", drop_and_rescale,
    consensus=False, normalize=False, rescale=True, model_params=MODEL_PARAMS, paper=PAPER, random=True,
    kernel=KERNEL,
))
register(task_vector_method(
    "dare_ties", "randomly drop task-vector entries, rescale survivors, elect signs (TIES)", drop_and_rescale,
    consensus=True, normalize=False, rescale=True, model_params=MODEL_PARAMS, paper=PAPER, random=True,
    kernel=KERNEL,
))
