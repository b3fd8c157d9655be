"""taskvec: model merging with task vectors, streamed tensor by tensor.

The public names load on first use (PEP 562): most of them import torch, and ``import taskvec`` -- which every
``taskvec --help`` pays for -- should not.
"""

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING

from .errors import TaskvecError

__version__ = "0.1.0"

_LAZY = {  # public name -> the submodule that defines it
    "TaskVector": ".vector",
    "MergeOptions": ".merge", "MergeResult": ".merge", "merge_recipe": ".merge",
    "Recipe": ".recipe", "load_recipe": ".recipe", "parse_recipe": ".recipe",
    "InspectReport": ".inspect", "inspect_vectors": ".inspect",
}

__all__ = [
    "__version__", "TaskvecError", "TaskVector", "MergeOptions", "MergeResult", "merge_recipe", "Recipe",
    "load_recipe", "parse_recipe", "InspectReport", "inspect_vectors",
]


def __getattr__(name: str):
    """Import a public name's module the first time the name is asked for, then keep the name here. A submodule
    (``taskvec.merge``) is imported too, as the eager imports used to make ``import taskvec; taskvec.merge`` work."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(import_module(module, __name__), name)
    elif not name.startswith("__") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports this module used to do
    from .inspect import InspectReport, inspect_vectors
    from .merge import MergeOptions, MergeResult, merge_recipe
    from .recipe import Recipe, load_recipe, parse_recipe
    from .vector import TaskVector
