"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop both the smallest task-vector entries and the largest
`gamma` fraction (outliers), keep `density`; `breadcrumbs_ties` adds TIES' sign election."""

from . import Param, register
from .generalized import MODEL_PARAMS, task_vector_method
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


PAPER = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795)"
register(task_vector_method(
    "breadcrumbs", "drop the smallest and the largest (outlier) entries, add", crumbs, consensus=False,
    normalize=False, rescale=False, model_params=MODEL_PARAMS + (GAMMA,), paper=PAPER, extra=(TRIM_SCOPE,),
))
register(task_vector_method(
    "breadcrumbs_ties", "drop small and outlier entries, elect signs (TIES)", crumbs, consensus=True,
    normalize=False, rescale=False, model_params=MODEL_PARAMS + (GAMMA,), paper=PAPER, extra=(TRIM_SCOPE,),
))
