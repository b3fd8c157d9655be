"""What a merge reads: models, stored task vectors, and differences of two models, behind one small interface.

Every input answers, for one tensor name, its weights and its task vector relative to the base being merged into.
A stored task vector is "base + delta" wherever a model is expected, and a tensor it does not store has a zero
delta (it was skipped at extraction, e.g. an integer buffer).
"""

import json
from pathlib import Path

import torch

from .errors import TaskvecError
from .io.checkpoint import Checkpoint, TensorInfo, open_checkpoint

MANIFEST = "taskvec.json"
FORMAT = "taskvec/task-vector"
MANIFEST_VERSION = 2  # 2: per-tensor base hashes (taskvec-fp2) and compressed tensors ("encodings")


class Input:
    label: str
    checkpoint: Checkpoint
    absent_means_zero = False

    def info(self, name: str) -> TensorInfo | None:
        return self.checkpoint.tensors.get(name)

    def names(self) -> list[str]:
        return self.checkpoint.names()

    # `rows`: only rows [start, stop) of the tensor's first dimension; `base` is then the same rows of the base
    def weights(self, name: str, base: torch.Tensor | None, dtype: torch.dtype, device, rows=None) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, name: str, base: torch.Tensor, dtype: torch.dtype, device, rows=None) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        self.checkpoint.close()


class ModelInput(Input):
    """A full model: its weights as stored; its task vector is weights minus base."""

    def __init__(self, checkpoint: Checkpoint, label: str | None = None):
        self.checkpoint = checkpoint
        self.label = label or checkpoint.label

    def weights(self, name, base, dtype, device, rows=None):
        return self.checkpoint.read(name, rows).to(device=device, dtype=dtype)

    def delta(self, name, base, dtype, device, rows=None):
        return self.weights(name, base, dtype, device, rows).sub_(base)


class StoredVectorInput(Input):
    """A task vector saved by ``taskvec extract`` (or ``TaskVector.save``): deltas plus a manifest."""

    absent_means_zero = True

    def __init__(self, folder: Path, label: str | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        from .store.encoded import open_encoded  # compressed vectors decode on read; plain ones are as stored

        self.checkpoint = open_encoded(open_checkpoint(self.folder), self.manifest, self.folder / MANIFEST)
        self.label = label or str(folder)

    def delta(self, name, base, dtype, device, rows=None):
        if name not in self.checkpoint:
            return torch.zeros(base.shape, dtype=dtype, device=device)
        return self.checkpoint.read(name, rows).to(device=device, dtype=dtype)

    def weights(self, name, base, dtype, device, rows=None):
        if base is None:
            raise TaskvecError(f"{self.label}: a task vector has no weights of its own; give a base_model")
        return self.delta(name, base, dtype, device, rows).add_(base)


class DifferenceInput(Input):
    """finetuned - origin, computed on read: a task vector that was never written to disk."""

    absent_means_zero = False

    def __init__(self, finetuned: Checkpoint, origin: Checkpoint, fingerprint=None):
        self.checkpoint = finetuned
        self.origin = origin
        self.fingerprint = fingerprint  # a Fingerprinter that sees every origin tensor read
        self.label = f"({finetuned.label} - {origin.label})"

    def info(self, name):
        return self.checkpoint.tensors.get(name) if name in self.origin else None

    def names(self):
        return [n for n in self.checkpoint.names() if n in self.origin]

    def delta(self, name, base, dtype, device, rows=None):
        ft = self.checkpoint.read(name, rows).to(device=device, dtype=dtype)
        origin = self.origin.read(name, rows)
        if self.fingerprint is not None and rows is None:
            self.fingerprint.add(name, origin)
        return ft.sub_(origin.to(device=device, dtype=dtype))

    def weights(self, name, base, dtype, device, rows=None):
        return self.delta(name, base, dtype, device, rows).add_(base)

    def close(self):
        self.checkpoint.close()
        self.origin.close()


def is_task_vector(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TaskvecError(f"{path}: unreadable task-vector manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise TaskvecError(f"{path}: not a taskvec task-vector manifest (format {found!r})")
    version = manifest.get("version", 1)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise TaskvecError(f"{path}: task-vector manifest version {version!r} is newer than this taskvec reads "
                           f"({MANIFEST_VERSION}); upgrade taskvec")
    if not isinstance(manifest.get("base", {}), dict):
        raise TaskvecError(f"{path}: 'base' must be an object (the base's ref and fingerprint)")
    return manifest


def open_input(ref: str, search_dirs: tuple[Path, ...] = (), opener=None, base: Checkpoint | None = None) -> Input:
    """A model, stored task vector or PEFT LoRA adapter by path or cached model id, or ``MODEL+ADAPTER`` (mergekit's
    syntax: the model with the adapter merged in); `opener` (like open_checkpoint) opens models; `base` (the merge's
    base, if any) lets an adapter's tensor names be matched to the base's."""
    from .adapter import AdapterInput, is_adapter

    opener = opener or open_checkpoint
    for candidate in _candidates(ref, search_dirs):
        if is_task_vector(candidate):
            return StoredVectorInput(candidate, label=ref)
        if is_adapter(candidate):
            return AdapterInput(candidate, base.names() if base is not None else None, label=ref)
    model_ref, plus, adapter_ref = ref.rpartition("+")
    if plus and model_ref and not any(c.exists() for c in _candidates(ref, search_dirs)):
        adapter = next((c for c in _candidates(adapter_ref, search_dirs) if is_adapter(c)), None)
        if adapter is None:
            raise TaskvecError(f"{ref}: {adapter_ref!r} is not a PEFT adapter folder (no adapter_config.json); "
                               "MODEL+ADAPTER needs one after the '+'")
        if base is not None and any(_is_folder_of(c, base) for c in _candidates(model_ref, search_dirs)):
            return AdapterInput(adapter, base.names(), label=ref)  # BASE+ADAPTER: the adapter is the task vector
        return AdapterInput(adapter, model=opener(model_ref, search_dirs), label=ref)
    return ModelInput(opener(ref, search_dirs), label=ref)


def _candidates(ref: str, search_dirs: tuple[Path, ...]) -> list[Path]:
    return [Path(ref).expanduser()] + [d / ref for d in search_dirs]


def _is_folder_of(path: Path, checkpoint: Checkpoint) -> bool:
    """Whether ``path`` names the model ``checkpoint`` was opened from."""
    if not path.exists():
        return False
    mine = [checkpoint.folder] if checkpoint.folder is not None and checkpoint.is_folder else []
    mine += [Path(checkpoint.label)] if Path(checkpoint.label).exists() else []
    return any(path.resolve() == m.resolve() for m in mine)
