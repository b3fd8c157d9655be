"""DARE (Yu et al., 2024): drop each task-vector entry with probability 1 - density and rescale the survivors by
1 / density, which keeps the task vector's expected value; `dare_ties` adds TIES' sign election."""

from . import register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import random_keep


def drop_and_rescale(delta, model_params, params):
    density = model_params["density"]
    if density <= 0:
        return delta * 0
    kept = delta * random_keep(delta, density, model_params["_seed"], model_params.get("_offset", 0))
    return kept.div_(density) if params["rescale"] else kept


PAPER = "Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099)"
register(task_vector_method(
    "dare_linear", "randomly drop task-vector entries, rescale survivors, add", drop_and_rescale,
    consensus=False, normalize=False, rescale=True, model_params=MODEL_PARAMS, paper=PAPER, random=True,
))
register(task_vector_method(
    "dare_ties", "randomly drop task-vector entries, rescale survivors, elect signs (TIES)", drop_and_rescale,
    consensus=True, normalize=False, rescale=True, model_params=MODEL_PARAMS, paper=PAPER, random=True,
))
