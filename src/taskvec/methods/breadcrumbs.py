"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop both the smallest task-vector entries and the largest
`gamma` fraction (outliers), keep `density`; `breadcrumbs_ties` adds TIES' sign election."""

from __future__ import annotations

from ..selection import TorchMagnitudes, band
from . import Param, Range, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import magnitude_prune
from .ties import TRIM_SCOPE

GAMMA = Param("gamma", float, 0.01, "fraction of the largest entries dropped as outliers",
              range=Range(0.0, 1.0, high_open=True))


def own_band(magnitude, model):
    return band(TorchMagnitudes.of(magnitude), magnitude.numel(), [model["density"]], [model["gamma"]])[0]


def crumbs(delta, model, params):
    """Keep the band of magnitudes below the outliers and above the smallest entries."""
    return magnitude_prune(delta, model, params, own_band)


def check(values, params):
    if values["density"] < 1 and values["density"] + values["gamma"] > 1:
        return f"density + gamma must be at most 1 (density {values['density']:g}, gamma {values['gamma']:g})"
    return None


PAPER = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795)"
for name, consensus, what in (
    ("breadcrumbs", False, "drop the smallest and the largest (outlier) entries, add"),
    ("breadcrumbs_ties", True, "drop small and outlier entries, elect signs (TIES)"),
):
    register(task_vector_method(
        name, what, crumbs, consensus=consensus, normalize=False, rescale=False,
        model_params=MODEL_PARAMS + (GAMMA,), paper=PAPER, extra=(TRIM_SCOPE,), selection="band", check=check,
    ))
