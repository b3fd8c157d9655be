"""Small text outputs (JSON results, recipes, traces) written whole or not at all."""

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> Path:
    """Write beside the target, then rename: a failure never leaves half a file under the name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
