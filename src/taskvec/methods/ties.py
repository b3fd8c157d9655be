"""TIES-Merging (Yadav et al., 2023): trim each task vector to its largest entries, elect one sign per entry,
and average only the entries that agree with it."""

from __future__ import annotations

from ..selection import TorchMagnitudes, top_k
from . import ANY, Param, register
from .generalized import MODEL_PARAMS, task_vector_method
from .sparsify import magnitude_prune

TRIM_SCOPE = Param("trim_scope", str, "tensor", "rank magnitudes per tensor (mergekit) or over the whole task vector "
                   "(global, as in the TIES paper; two extra streaming passes, exact)", choices=("tensor", "global"))


def own_top_k(magnitude, model):
    return top_k(TorchMagnitudes.of(magnitude), magnitude.numel(), [model["density"]])[0]


def trim(delta, model, params):
    """Keep the top `density` of the tensor by magnitude."""
    return magnitude_prune(delta, model, params, own_top_k)


register(task_vector_method(
    "ties", "trim task vectors to their largest entries, elect signs, average the agreeing entries", trim,
    consensus=True, normalize=True, rescale=False, model_params=MODEL_PARAMS, extra=(TRIM_SCOPE,),
    paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)", selection="top_k",
    kernel={"sparsifier": "magnitude", "handles": {"rescale": lambda v: v is False, "trim_scope": ANY}},
))
