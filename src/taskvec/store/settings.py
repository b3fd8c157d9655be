"""Where a store server keeps its state, and its limits: plain data, importable without the server's libraries.

``--root DIR`` means ``sqlite:///DIR/store.db`` and blobs in ``DIR/blobs``; ``--db URL --blobs URL`` name them
apart (a PostgreSQL URL and an object store, for several servers behind one address).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TaskvecError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True)
class ServerSettings:
    db_url: str
    blobs_url: str
    private: bool = False  # reads need a token too
    max_manifest_bytes: int = 8 * 2**20
    max_blob_bytes: int = 64 * 2**30
    max_vector_manifest_bytes: int = 64 * 2**20  # the taskvec.json blob the server reads to check the base
    stale_upload_seconds: float = 3600  # at start, remove incoming/ uploads not written to for this long (crashes)


def resolve(root: str | Path | None, db: str | None, blobs: str | None, **limits) -> ServerSettings:
    """Settings from the CLI's ``--root`` or ``--db`` and ``--blobs``; one error if neither or a mix is given."""
    if root is not None:
        if db or blobs:
            raise TaskvecError("give either --root DIR or --db URL with --blobs URL, not both")
        root = Path(root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return ServerSettings(f"sqlite:///{root / 'store.db'}", str(root / "blobs"), **limits)
    if not (db and blobs):
        raise TaskvecError("where is the store? give --root DIR (a SQLite file and a blob folder in it), or "
                           "--db URL and --blobs URL")
    return ServerSettings(db, blobs, **limits)


def resolve_db(root: str | Path | None, db: str | None) -> str:
    """The database URL of ``--root DIR`` or ``--db URL`` (token commands need only the database)."""
    if (root is None) == (db is None):
        raise TaskvecError("which store? give either --root DIR or --db URL (its database)")
    if db is not None:
        return db
    root = Path(root).expanduser().resolve()
    if not (root / "store.db").is_file():
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'store.db'}"


def parse_size(text: str, what: str) -> int:
    """``64GiB``, ``500MB``, ``1048576`` -> bytes."""
    m = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise TaskvecError(f"{what} {text!r}: use a size such as 64GiB, 500MB or 1048576 (bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    """``24h``, ``30m``, ``7d``, ``90s``, ``0`` -> seconds."""
    m = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$", str(text).lower())
    if not m:
        raise TaskvecError(f"{what} {text!r}: use a duration such as 24h, 30m, 7d, 90s or 0")
    return float(m.group(1)) * _SECONDS[m.group(2)]
