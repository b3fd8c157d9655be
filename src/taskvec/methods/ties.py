"""TIES-Merging (Yadav et al., 2023): trim each task vector to its largest entries, elect one sign per entry,
and average only the entries that agree with it."""

from . import Param, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import l1_rescale, magnitude_mask

TRIM_SCOPE = Param("trim_scope", str, "tensor", "rank magnitudes per tensor (mergekit) or over the whole task vector "
                   "(global, as in the TIES paper; two extra streaming passes, exact)", choices=("tensor", "global"))


def trim(delta, model_params, params):
    kept = delta * magnitude_mask(delta, model_params["density"], model_params.get("_threshold"))
    return l1_rescale(delta, kept) if params["rescale"] else kept


register(task_vector_method(
    "ties", "trim task vectors to their largest entries, elect signs, average the agreeing entries", trim,
    consensus=True, normalize=True, rescale=False, model_params=MODEL_PARAMS, extra=(TRIM_SCOPE,),
    paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)",
))
