"""The model references of a tuned recipe: absolute while tuning (the recipe's folder is where its relative paths
start), relative to the written best recipe afterwards, so ``taskvec merge best.yaml`` finds the same models from
wherever best.yaml was written."""

from __future__ import annotations

import copy
import os
from pathlib import Path


def _where(ref: str, folder: Path) -> Path | None:
    """A reference as ``taskvec merge`` looks it up: from the current folder, then the recipe's."""
    return next((p.resolve() for p in (Path(ref).expanduser(), folder / ref) if p.exists()), None)


def _map_refs(raw: dict, fn) -> dict:
    out = copy.deepcopy(raw)
    if isinstance(out.get("base_model"), str):
        out["base_model"] = fn(out["base_model"])
    for spec in out.get("models") or []:
        if isinstance(spec, dict) and isinstance(spec.get("model"), str):
            spec["model"] = fn(spec["model"])
    if isinstance(out.get("tokenizer_source"), str) and out["tokenizer_source"] != "base":
        out["tokenizer_source"] = fn(out["tokenizer_source"])
    return out


def absolute_paths(raw: dict, folder: Path) -> dict:
    """Every reference that names an existing file or folder, made absolute (model ids stay as they are)."""
    return _map_refs(raw, lambda ref: str(_where(ref, folder) or ref))


def portable_paths(raw: dict, out_folder: Path) -> dict:
    """Absolute references rewritten relative to the folder the recipe is written to, when the two share a folder
    below the root (else they stay absolute: ../../work/x says nothing a reader can use)."""
    out_folder = out_folder.resolve()

    def rel(ref: str) -> str:
        if not Path(ref).is_absolute() or os.path.commonpath([ref, out_folder]) == out_folder.anchor:
            return ref
        return os.path.relpath(ref, out_folder)

    return _map_refs(raw, rel)


def evaluation_folder(raw: dict) -> str | None:
    """The folder whose config and tokenizer score candidates: the base model's (a path or a cached model id),
    else the first model's."""
    from ..io.checkpoint import open_checkpoint

    refs = [raw.get("base_model")] + [m.get("model") for m in raw.get("models") or [] if isinstance(m, dict)]
    for ref in refs:
        if isinstance(ref, str):
            if Path(ref).is_dir():
                return ref
            ckpt = open_checkpoint(ref)
            ckpt.close()
            if ckpt.folder is not None:
                return str(ckpt.folder)
    return None
