"""Reading evaluation data: CSV and JSONL rows, text lines, chat pairs. Standard library only."""

import csv
import json
from pathlib import Path

from ..errors import TaskvecError


def _jsonl(path: Path, where: str) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskvecError(f"{where}: {path.name} line {n} is not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise TaskvecError(f"{where}: {path.name} line {n} is not a JSON object")
        rows.append(row)
    return rows


def read_rows(path: Path, columns: list[str], where: str) -> list[dict]:
    """Rows of a .csv or .jsonl file, each holding every one of `columns` (else an error naming those found)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, found = list(reader), list(reader.fieldnames or [])
    elif path.suffix in (".jsonl", ".json"):
        rows = _jsonl(path, where)
        found = list(dict.fromkeys(k for r in rows for k in r))
    else:
        raise TaskvecError(f"{where}: data {path.name} is neither .csv nor .jsonl")
    missing = [c for c in columns if c not in found]
    if missing:
        raise TaskvecError(f"{where}: {path.name} has no column {missing[0]!r}; columns found: "
                           f"{', '.join(found) or 'none'}")
    for n, row in enumerate(rows, 1):
        absent = [c for c in columns if row.get(c) is None]
        if absent:
            raise TaskvecError(f"{where}: {path.name} row {n} has no value for {absent[0]!r}")
    return rows


def read_texts(path: Path, chat: bool, where: str) -> list:
    """Language-modeling examples: texts (.txt lines, or JSONL `text`), or with `chat` (prompt, response) pairs."""
    if chat:
        if path.suffix != ".jsonl":
            raise TaskvecError(f"{where}: chat data {path.name} must be .jsonl with 'prompt' and 'response'")
        examples = [(str(r["prompt"]), str(r["response"])) for r in read_rows(path, ["prompt", "response"], where)]
    elif path.suffix == ".txt":
        examples = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".jsonl":
        examples = [str(r["text"]) for r in read_rows(path, ["text"], where)]
    else:
        raise TaskvecError(f"{where}: data {path.name} is neither .txt nor .jsonl")
    if not examples:
        raise TaskvecError(f"{where}: {path.name} has no examples")
    return examples
