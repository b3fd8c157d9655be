"""Results stored by content: one JSON file per model, {key: result}, where a key names everything a result
depends on (data, settings, code). Only missing keys are computed; files are replaced atomically, so an interrupted
run leaves the old file or the new one, never half of one."""

import json
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def stored(path: Path, keys: list[str], compute: Callable[[list[str]], list]) -> list:
    """The results of `keys` (in order) from the file at `path`; compute(missing keys, each once) -> their results,
    added to the file."""
    memo = _read(path)
    missing = list(dict.fromkeys(k for k in keys if k not in memo))
    if missing:
        fresh = dict(zip(missing, compute(missing)))
        memo = {**_read(path), **fresh}  # read again: another run may have stored results meanwhile
        write_atomic(path, json.dumps(memo, indent=1, sort_keys=True, ensure_ascii=False))
    return [memo[k] for k in keys]
