"""taskvec: model merging with task vectors, streamed tensor by tensor."""

__version__ = "0.1.0"

from .errors import TaskvecError  # noqa: E402
from .inspect import InspectReport, inspect_vectors  # noqa: E402
from .merge import MergeOptions, MergeResult, merge_recipe  # noqa: E402
from .recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from .vector import TaskVector  # noqa: E402

__all__ = [
    "__version__", "TaskvecError", "TaskVector", "MergeOptions", "MergeResult", "merge_recipe", "Recipe",
    "load_recipe", "parse_recipe", "InspectReport", "inspect_vectors",
]
