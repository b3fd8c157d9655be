"""Write a model folder the way Hugging Face does -- sharded safetensors plus index -- atomically.

Everything goes into a hidden temporary folder beside the target, which is renamed into place only when complete:
a crash or Ctrl-C leaves no half-written folder that looks finished. The shard layout is fixed up front from the
planned tensors' shapes, so each shard streams to disk tensor by tensor with large sequential writes.
"""

import ctypes
import errno
import json
import math
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import TaskvecError
from .failures import cannot_read, cannot_write
from .safetensors_file import StreamingFile

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str | int) -> int:
    """``5GB`` -> 5_000_000_000 (decimal, as transformers reads it); ``2GiB`` is binary; a bare number is bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").upper() if m else None
    if not m or unit not in _UNITS:
        raise TaskvecError(f"shard size {text!r}: use a size such as 5GB, 500MB or 2GiB")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise TaskvecError(f"shard size {text!r} must be positive")
    return size


def prepare_target(target: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless asked; never replace a file with a folder."""
    if target.exists():
        if not target.is_dir():
            raise TaskvecError(f"{target}: exists and is not a folder; choose another output path")
        if not force:
            raise TaskvecError(f"{target}: output folder already exists; pass --force to replace it")


def temp_folder(target: Path) -> Path:
    """A fresh hidden folder beside `target`, where an output is built before it is renamed into place."""
    tmp = target.parent / f".{target.name}.taskvec-tmp-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise cannot_write(target, e) from e
    return tmp


def move_into_place(tmp: Path, target: Path, force: bool) -> None:
    """Rename a complete `tmp` folder to `target`. An existing target (allowed only with `force`) is swapped with
    `tmp` in one atomic step (Linux renameat2 RENAME_EXCHANGE), so a crash at any moment leaves either the old or
    the new folder at `target`; the old one, now at `tmp`, is removed afterwards.

    Where the exchange is unavailable (not Linux, an old kernel or a file system without it) the old folder is
    first renamed aside, then `tmp` renamed to `target`: a crash between those two renames leaves nothing at
    `target` and the old folder hidden beside it as ``.NAME.taskvec-old-XXXX``."""
    old = None
    try:
        _fsync_tree(tmp)
        if target.exists():
            prepare_target(target, force)
            old = tmp if _exchange(tmp, target) else _rename_aside_and_replace(tmp, target)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        raise cannot_write(target, e) from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rename_aside_and_replace(tmp: Path, target: Path) -> Path:
    """The fallback: two renames, with a window where `target` is missing. Returns where the old folder went."""
    old = target.parent / f".{target.name}.taskvec-old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # put the old folder back
        raise
    return old


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    """libc's renameat2, or None (not glibc 2.28+ / not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when this system cannot (the caller falls back to plain renames)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextmanager
def atomic_folder(target: Path, force: bool = False):
    """Write files into the yielded temporary folder; it becomes `target` only if the block finishes."""
    target = Path(target)
    prepare_target(target, force)
    tmp = temp_folder(target)
    try:
        yield tmp
        move_into_place(tmp, target, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plan_shards(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], shard_size: int):
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
    used = 0
    for spec in specs:
        nbytes = spec[1].itemsize * math.prod(spec[2])
        if shards[-1] and used + nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += nbytes
    return shards



class ShardedWriter:
    """Writes planned tensors into ``<prefix>.safetensors`` or numbered shards plus index, in a temporary folder
    renamed into place on ``commit``. Every file is created with its header at once; ``write`` puts a tensor at its
    planned place, from any thread and in any order, so the bytes never depend on who finished first."""

    def __init__(
        self,
        target: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        shard_size: int = 5 * 10**9,
        prefix: str = "model",
        force: bool = False,
        metadata: dict[str, str] | None = None,
    ):
        self.target = Path(target)
        prepare_target(self.target, force)
        self.force = force
        self.metadata = {"format": "pt", **(metadata or {})}
        self.tmp = temp_folder(self.target)
        shards = _plan_shards(specs, shard_size)
        n = len(shards)
        names = [f"{prefix}.safetensors"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shards = list(zip(names, shards))
        self._index_name = None if n == 1 else f"{prefix}.safetensors.index.json"
        self.weight_map = {spec[0]: name for name, shard in self._shards for spec in shard}
        self.total_size = sum(spec[1].itemsize * math.prod(spec[2]) for _, shard in self._shards for spec in shard)
        self._files: dict[str, StreamingFile] = {}
        self._done = False
        try:
            for name, shard in self._shards:
                self._files[name] = StreamingFile(self.tmp / name, shard, self.metadata, shown=self.target / name)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.weight_map:
            raise RuntimeError(f"writer: tensor {name} was not planned")
        self._files[self.weight_map[name]].write(name, tensor)

    def write_text(self, relpath: str, text: str) -> None:
        """A small file (config, card, index), fsynced: it must be on disk before the folder is renamed into place."""
        dest = self.tmp / relpath
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise cannot_write(self.target / relpath, e) from e

    def copy_file(self, source: Path, relpath: str | None = None) -> None:
        """Copy `source` into the folder, fsynced like ``write_text``."""
        relpath = relpath or source.name
        dest = self.tmp / relpath
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            _fsync_file(dest)
        except OSError as e:
            if e.filename == str(source) or isinstance(e, FileNotFoundError) and not source.exists():
                raise cannot_read(source, e) from e
            raise cannot_write(self.target / relpath, e) from e

    def commit(self) -> Path:
        """Check every planned tensor was written, fsync the shards, write the index, rename the folder into place."""
        for file in self._files.values():
            file.close()
        if self._index_name:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            self.write_text(self._index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
        move_into_place(self.tmp, self.target, self.force)
        self._done = True
        return self.target

    def abort(self) -> None:
        files, self._files = self._files, {}
        for file in files.values():
            file.abort()
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_file = _fsync_dir  # a read-only descriptor is enough to flush a file's data on Linux


def _fsync_tree(folder: Path) -> None:
    """fsync every folder under `folder`, deepest first, so their entries survive a crash after the rename."""
    for path, _, _ in os.walk(folder, topdown=False):
        _fsync_dir(Path(path))
