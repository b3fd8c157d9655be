"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop both the smallest task-vector entries and the largest
`gamma` fraction (outliers), keep `density`; `breadcrumbs_ties` adds TIES' sign election."""

from . import Param, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import band_selection, l1_rescale, outlier_mask
from .ties import TRIM_SCOPE

GAMMA = Param("gamma", float, 0.01, "fraction of the largest entries dropped as outliers")


def band(magnitudes, model_params, params):
    """The tensor's kept band of magnitudes (unless a global one was given) and the L1 rescale factor."""
    b = model_params.get("_threshold")
    if b is None:
        b = band_selection(magnitudes, model_params["density"], model_params["gamma"])
    out = {"_threshold": b}
    if params["rescale"]:
        kept = (magnitudes * outlier_mask(magnitudes, 1.0, 0.0, b)).sum()
        out["_l1_scale"] = float(magnitudes.sum() / kept) if kept > 0 else 1.0
    return out


def crumbs(delta, model_params, params):
    mask = outlier_mask(delta, model_params["density"], model_params["gamma"], model_params.get("_threshold"),
                        model_params.get("_offset", 0))
    kept = delta * mask
    if not params["rescale"]:
        return kept
    scale = model_params.get("_l1_scale")
    return kept.mul_(scale) if scale is not None else l1_rescale(delta, kept)


PAPER = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795)"
for name, consensus, what in (
    ("breadcrumbs", False, "drop the smallest and the largest (outlier) entries, add"),
    ("breadcrumbs_ties", True, "drop small and outlier entries, elect signs (TIES)"),
):
    register(task_vector_method(
        name, what, crumbs, consensus=consensus, normalize=False, rescale=False,
        model_params=MODEL_PARAMS + (GAMMA,), paper=PAPER, extra=(TRIM_SCOPE,), statistic=band,
    ))
