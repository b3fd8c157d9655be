"""TIES-Merging (Yadav et al., 2023): trim each task vector to its largest entries, elect one sign per entry,
and average only the entries that agree with it."""

from . import Param, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import l1_rescale, magnitude_mask, top_k_selection

TRIM_SCOPE = Param("trim_scope", str, "tensor", "rank magnitudes per tensor (mergekit) or over the whole task vector "
                   "(global, as in the TIES paper; two extra streaming passes, exact)", choices=("tensor", "global"))


def selection(magnitudes, model_params, params):
    """The tensor's trim selection (unless a global threshold was given) and the L1 rescale factor it implies."""
    chosen = model_params.get("_threshold")
    if chosen is None:
        chosen = top_k_selection(magnitudes, model_params["density"], exact_zeros=False)
    out = {"_threshold": chosen}
    if params["rescale"]:
        kept = (magnitudes * magnitude_mask(magnitudes, 1.0, chosen)).sum()
        out["_l1_scale"] = float(magnitudes.sum() / kept) if kept > 0 else 1.0
    return out


def trim(delta, model_params, params):
    mask = magnitude_mask(delta, model_params["density"], model_params.get("_threshold"), model_params.get("_offset", 0))
    kept = delta * mask
    if not params["rescale"]:
        return kept
    scale = model_params.get("_l1_scale")
    return kept.mul_(scale) if scale is not None else l1_rescale(delta, kept)


register(task_vector_method(
    "ties", "trim task vectors to their largest entries, elect signs, average the agreeing entries", trim,
    consensus=True, normalize=True, rescale=False, model_params=MODEL_PARAMS, extra=(TRIM_SCOPE,),
    paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)", statistic=selection,
))
