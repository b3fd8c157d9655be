"""Reading the YAML files users write (recipes, tasks files): safe loading, and one error line naming the file."""

from pathlib import Path
from typing import Any

import yaml

from .errors import TaskvecError


def read_yaml(path: Path, what: str) -> Any:
    """The parsed document (``yaml.safe_load``: never constructs Python objects); `what` names the file's role."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise TaskvecError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise TaskvecError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from e
