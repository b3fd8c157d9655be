"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop both the smallest task-vector entries and the largest
`gamma` fraction (outliers), keep `density`; `breadcrumbs_ties` adds TIES' sign election."""

from . import MergeMethod, Param, register
from .generalized import MODEL_PARAMS, common_params, merge_deltas
from .sparsify import l1_rescale, outlier_mask
from .ties import TRIM_SCOPE

GAMMA = Param("gamma", float, 0.01, "fraction of the largest entries dropped as outliers")


def crumbs(delta, model_params, params):
    thresholds = model_params.get("_threshold")
    if thresholds is not None:  # global scope: (low, high) magnitudes over the whole task vector
        magnitude = delta.abs()
        kept = delta * ((magnitude >= thresholds[0]) & (magnitude <= thresholds[1]))
    else:
        kept = delta * outlier_mask(delta, model_params["density"], model_params["gamma"])
    return l1_rescale(delta, kept) if params["rescale"] else kept


def breadcrumbs(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, crumbs, None)


def breadcrumbs_ties(base, deltas, model_params, params):
    return merge_deltas(deltas, model_params, params, crumbs, params["consensus_method"])


PAPER = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795)"
for name, fn, consensus, what in (
    ("breadcrumbs", breadcrumbs, False, "drop the smallest and the largest (outlier) entries, add"),
    ("breadcrumbs_ties", breadcrumbs_ties, True, "drop small and outlier entries, elect signs (TIES)"),
):
    register(
        MergeMethod(
            name=name, description=what, inputs="deltas", fn=fn,
            params=common_params(normalize=False, rescale=False, consensus=consensus) + (TRIM_SCOPE,),
            model_params=MODEL_PARAMS + (GAMMA,), paper=PAPER, ignored=("int8_mask",),
        )
    )
