"""Open a checkpoint -- a Hugging Face folder, one file, or a model id in the local cache -- and read it lazily.

Opening reads only headers (names, dtypes, shapes, byte ranges); ``read(name)`` reads one tensor. Nothing is ever
unpickled except through ``torch.load(weights_only=True)``.
"""

import json
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TaskvecError
from .failures import cannot_read
from .safetensors_file import Entry, read_header, read_tensor

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    offset: int  # position in its file, used to read in on-disk order

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


class Checkpoint:
    """A set of named tensors on disk, plus the folder they came from (config, tokenizer), if any.

    `is_folder` says whether the user named a model folder (or a cached model id), whose every small file belongs to
    the model, or one weights file, whose folder may hold anything: then only the standard files beside it do."""

    def __init__(self, label: str, folder: Path | None, files: list[Path], is_folder: bool = True):
        self.label = label
        self.folder = folder
        self.files = files
        self.is_folder = is_folder
        self.tensors: dict[str, TensorInfo] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        """A tensor, or only rows [start, stop) of its first dimension; `into` (uint8) may hold the bytes read."""
        raise NotImplementedError

    def config(self) -> dict | None:
        """The folder's config.json, if there is one."""
        if self.folder is None or not (self.folder / "config.json").is_file():
            return None
        path = self.folder / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TaskvecError(f"{path}: unreadable config ({e})") from e

    def num_parameters(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors.values())

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r}, {len(self.tensors)} tensors)"


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors files; tensors are read with positioned reads on descriptors shared by threads."""

    def __init__(self, label: str, folder: Path | None, files: list[Path], weight_map: dict[str, str] | None = None,
                 is_folder: bool = True):
        super().__init__(label, folder, files, is_folder)
        self._entries: dict[str, tuple[Path, Entry]] = {}
        for file in files:
            entries, _ = read_header(file)
            for name, entry in entries.items():
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue  # a stale copy the index does not point to
                if name in self._entries:
                    raise TaskvecError(
                        f"{label}: tensor {name!r} is stored in both {self._entries[name][0].name} and {file.name}"
                    )
                self._entries[name] = (file, entry)
                self.tensors[name] = TensorInfo(name, entry.dtype, entry.shape, file, entry.start)
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._entries))
            if missing:
                raise TaskvecError(
                    f"{label}: the index lists {len(missing)} tensor(s) missing from their shard files, e.g. "
                    f"{missing[0]!r} in {weight_map[missing[0]]}; the download is incomplete"
                )
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _fd(self, file: Path) -> int:
        with self._lock:
            if file not in self._fds:
                try:
                    self._fds[file] = os.open(file, os.O_RDONLY)
                except OSError as e:
                    raise cannot_read(file, e) from e
            return self._fds[file]

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        file, entry = self._entries[name]
        return read_tensor(file, entry, self._fd(file), rows, into)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class TorchBinCheckpoint(Checkpoint):
    """``pytorch_model.bin`` files, loaded only with ``weights_only=True`` and memory-mapped where the format allows."""

    def __init__(self, label: str, folder: Path | None, files: list[Path], weight_map: dict[str, str] | None = None,
                 is_folder: bool = True):
        super().__init__(label, folder, files, is_folder)
        self._shards: dict[Path, dict[str, torch.Tensor]] = {}
        self._where: dict[str, Path] = {}
        for file in files:
            state = self._load(file)
            for position, (name, tensor) in enumerate(state.items()):
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue
                self._where[name] = file
                self.tensors[name] = TensorInfo(name, tensor.dtype, tuple(tensor.shape), file, position)

    def _load(self, file: Path) -> dict[str, torch.Tensor]:
        if file in self._shards:
            return self._shards[file]
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                warnings.warn(f"{file}: legacy (non-zip) format cannot be memory-mapped; loading the whole file")
                state = torch.load(file, map_location="cpu", weights_only=True)
        except TaskvecError:
            raise
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe or broken files
            raise TaskvecError(
                f"{file}: cannot be loaded safely with torch.load(weights_only=True) ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). taskvec never unpickles arbitrary code: convert the "
                "checkpoint to safetensors with a tool you trust"
            ) from e
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TaskvecError(f"{file}: expected a state dict of tensors, found {type(state).__name__}")
        self._shards[file] = state
        return state

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        tensor = self._load(self._where[name])[name]
        return (tensor if rows is None else tensor[rows[0]:rows[1]]).clone()



def _index_files(index: Path) -> tuple[list[Path], dict[str, str]]:
    """The shard files an index names, each checked to be a plain file beside the index: an index must not make
    taskvec read (or a model card name) a file elsewhere on the disk."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
        raise TaskvecError(f"{index}: not a valid shard index (needs a 'weight_map' object): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise TaskvecError(f"{index}: not a valid shard index ('weight_map' must map tensor names to shard file names)")
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        if not _is_plain_name(shard):
            name = next(n for n, s in weight_map.items() if s == shard)
            raise TaskvecError(
                f"{index}: tensor {name!r} points to {shard!r}; a shard must be a file name beside the index "
                "(no folders, '..' or absolute paths)"
            )
        path = index.parent / shard
        if not path.is_file():
            raise TaskvecError(f"{index}: shard {shard} is missing; the download or copy is incomplete")
        files.append(path)
    return files, weight_map


def _is_plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and not re.match(r"^[A-Za-z]:", name)


def _open_folder(folder: Path, label: str) -> Checkpoint:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    preferred = [p for p in indexes if p.name == "model.safetensors.index.json"]
    if preferred or len(indexes) == 1:
        files, weight_map = _index_files((preferred or indexes)[0])
        return SafetensorsCheckpoint(label, folder, files, weight_map)
    singles = sorted(folder.glob("*.safetensors"))
    for name in ("model.safetensors", "task_vector.safetensors"):
        if (folder / name).is_file():
            return SafetensorsCheckpoint(label, folder, [folder / name])
    if len(singles) == 1:
        return SafetensorsCheckpoint(label, folder, singles)
    if len(singles) > 1:
        raise TaskvecError(
            f"{folder}: {len(singles)} .safetensors files and no index; add a model.safetensors.index.json or "
            "point at one file"
        )
    bin_index = folder / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        files, weight_map = _index_files(bin_index)
        return TorchBinCheckpoint(label, folder, files, weight_map)
    if (folder / "pytorch_model.bin").is_file():
        return TorchBinCheckpoint(label, folder, [folder / "pytorch_model.bin"])
    raise TaskvecError(
        f"{folder}: no model weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin and its index)"
    )


def resolve_hub_id(model_id: str) -> Path:
    """A model id's snapshot folder in the local Hugging Face cache; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, not at import, so tests and wrappers can point it
        return Path(snapshot_download(model_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as e:
        raise TaskvecError(
            f"{model_id}: not a local path, and not in the local Hugging Face cache; download it first "
            "(huggingface-cli download ...) or give the folder's path"
        ) from e


def open_checkpoint(ref: str | os.PathLike, search_dirs: tuple[Path, ...] = ()) -> Checkpoint:
    """Open a folder, a .safetensors or .bin file, or an ``org/name`` id from the local cache, by headers only."""
    label = str(ref)
    candidates = [Path(ref).expanduser()] + [d / ref for d in search_dirs]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        if _HUB_ID.match(label) and not label.startswith("."):
            path = resolve_hub_id(label)
        else:
            raise TaskvecError(f"{label}: no such file or folder")
    if path.is_dir():
        return _open_folder(path, label)
    if path.name.endswith(".safetensors"):
        return SafetensorsCheckpoint(label, path.parent, [path], is_folder=False)
    if path.name.endswith(".safetensors.index.json"):
        files, weight_map = _index_files(path)
        return SafetensorsCheckpoint(label, path.parent, files, weight_map, is_folder=False)
    if path.suffix in (".bin", ".pt", ".pth"):
        return TorchBinCheckpoint(label, path.parent, [path], is_folder=False)
    raise TaskvecError(f"{label}: not a model folder, .safetensors, .bin or shard index file")
