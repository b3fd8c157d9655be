"""TIES-Merging (Yadav et al., 2023): trim each task vector to its largest entries, elect one sign per entry,
and average only the entries that agree with it."""

from . import MergeMethod, Param, register
from .generalized import MODEL_PARAMS, common_params, merge_deltas
from .sparsify import l1_rescale, magnitude_mask

TRIM_SCOPE = Param("trim_scope", str, "tensor", "rank magnitudes per tensor (mergekit) or over the whole task vector "
                   "(global, as in the TIES paper; one extra streaming pass, exact)", choices=("tensor", "global"))


def trim(delta, model_params, params):
    kept = delta * magnitude_mask(delta, model_params["density"], model_params.get("_threshold"))
    return l1_rescale(delta, kept) if params["rescale"] else kept


def ties(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, trim, params["consensus_method"])


register(
    MergeMethod(
        name="ties",
        description="trim task vectors to their largest entries, elect signs, average the agreeing entries",
        inputs="deltas",
        fn=ties,
        params=common_params(normalize=True, rescale=False, consensus=True) + (TRIM_SCOPE,),
        model_params=MODEL_PARAMS,
        paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)",
        ignored=("int8_mask",),
    )
)
