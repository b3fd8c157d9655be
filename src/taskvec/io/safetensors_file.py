"""The safetensors format, read and written without memory maps.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range) and
the raw bytes. Reading a tensor is one positioned read into a fresh buffer, so a merge's resident memory is the
tensors in flight, not the mapped files; writing streams each tensor's bytes in order, so a 5 GB shard never has to
be held in memory (``safetensors.torch.save_file`` needs the whole shard at once).
"""

import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dtypes import SAFETENSORS_DTYPES, SAFETENSORS_NAMES
from ..errors import TaskvecError
from .failures import cannot_read, cannot_write

_MAX_HEADER = 100 * 1024 * 1024
_ALIGN = 8


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """Parse and check a file's header: every byte range must lie inside the file (catches truncated downloads) and
    no two may overlap, so a corrupt or hostile header is refused before any tensor is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise TaskvecError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise TaskvecError(
                    f"{path}: not a safetensors file or truncated (header length {header_len}, file size {size})"
                )
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise TaskvecError(f"{path}: cannot read ({e.strerror or e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TaskvecError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise TaskvecError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    metadata = _metadata(path, header.pop("__metadata__", {}))
    data_start = 8 + header_len
    entries = {name: _entry(path, name, spec, data_start, size) for name, spec in header.items()}
    _refuse_overlaps(path, entries)
    return entries, metadata


def _metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TaskvecError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    return metadata


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry(path: Path, name: str, spec: object, data_start: int, size: int) -> Entry:
    """One tensor's header entry, checked: known dtype, shape of non-negative ints, byte range that fits it."""
    bad = f"{path}: tensor {name!r} has an invalid header entry {spec!r}"
    if not isinstance(spec, dict):
        raise TaskvecError(f"{bad} (not an object)")
    dtype = SAFETENSORS_DTYPES.get(spec.get("dtype")) if isinstance(spec.get("dtype"), str) else None
    if dtype is None:
        raise TaskvecError(f"{bad} (unknown dtype)")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise TaskvecError(f"{bad} (shape must be a list of non-negative integers)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x) for x in offsets):
        raise TaskvecError(f"{bad} (data_offsets must be two non-negative integers)")
    begin, end = offsets
    if begin > end:
        raise TaskvecError(f"{bad} (data_offsets begin after they end)")
    expected = dtype.itemsize * math.prod(shape)
    if end - begin != expected:
        raise TaskvecError(
            f"{path}: tensor {name!r} claims {end - begin} bytes but dtype {spec['dtype']} and shape "
            f"{list(shape)} need {expected}"
        )
    if data_start + end > size:
        raise TaskvecError(
            f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size} bytes; "
            "download or copy the file again"
        )
    return Entry(dtype, tuple(shape), data_start + begin, data_start + end)


def _refuse_overlaps(path: Path, entries: dict[str, Entry]) -> None:
    """Two tensors sharing bytes would read as each other's data: the file is corrupt or crafted."""
    ranges = sorted((e.start, e.end, name) for name, e in entries.items() if e.nbytes)
    for (_, end, first), (start, _, second) in zip(ranges, ranges[1:]):
        if start < end:
            raise TaskvecError(
                f"{path}: corrupt safetensors header: tensors {first!r} and {second!r} overlap; "
                "download or copy the file again"
            )


def read_tensor(path: Path, entry: Entry, fd: int | None = None, rows: tuple[int, int] | None = None,
                into: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor -- or the rows [start, stop) of its first dimension -- read with positioned reads (thread-safe on
    a shared descriptor). `into`, a uint8 buffer, is filled instead of fresh memory when it is large enough: reusing
    one buffer saves the kernel zeroing and mapping new pages for every read."""
    shape, start, nbytes = entry.shape, entry.start, entry.nbytes
    if rows is not None:
        row_bytes = entry.dtype.itemsize * math.prod(shape[1:])
        shape = (rows[1] - rows[0],) + shape[1:]
        start, nbytes = entry.start + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    buf = into[:nbytes] if into is not None and into.numel() >= nbytes else torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        view = memoryview(buf.numpy())
        own = fd is None
        try:
            if own:
                fd = os.open(path, os.O_RDONLY)
            done = 0
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], start + done)
                if n == 0:
                    raise TaskvecError(f"{path}: unexpected end of file while reading a tensor; the file is truncated")
                done += n
        except OSError as e:
            raise cannot_read(path, e) from e
        finally:
            if own and fd is not None:
                os.close(fd)
    return buf.view(entry.dtype).reshape(shape)


class StreamingFile:
    """One safetensors file whose tensor list is known up front: the header is written at once, then each tensor at
    its planned offset -- in any order, from any thread (positioned writes) -- so workers write their own results."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str],
                 shown: Path | None = None):
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        self._slots: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        for name, dtype, shape in specs:
            nbytes = dtype.itemsize * math.prod(shape)
            header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._slots[name] = (dtype, tuple(shape), offset)
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % _ALIGN)
        self.path = path
        self.shown = shown or path  # the name errors give: the final path, not the hidden temporary one
        self.total_bytes = offset
        self._data_start = 8 + len(raw)
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self._fd = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise cannot_write(self.shown, e) from e
        try:
            self._pwrite(memoryview(struct.pack("<Q", len(raw)) + raw), 0)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._slots:
            raise RuntimeError(f"writer: tensor {name} is not planned in {self.path.name}")
        dtype, shape, offset = self._slots[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"writer expected {name} {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        with self._lock:
            if name in self._written:
                raise RuntimeError(f"writer: tensor {name} written twice")
            self._written.add(name)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._pwrite(memoryview(data), self._data_start + offset)

    def _pwrite(self, view: memoryview, at: int) -> None:
        try:
            while len(view):
                n = os.pwrite(self._fd, view, at)
                view, at = view[n:], at + n
        except OSError as e:
            raise cannot_write(self.shown, e) from e

    def close(self) -> None:
        """fsync and close; an error if a planned tensor was never written."""
        if len(self._written) != len(self._slots):
            self.abort()
            raise RuntimeError(f"{self.path}: closed after {len(self._written)} of {len(self._slots)} tensors")
        if self._fd is not None:
            try:
                os.fsync(self._fd)  # a full disk may only show here, when delayed allocation meets the device
            except OSError as e:
                raise cannot_write(self.shown, e) from e
            finally:
                self.abort()

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass  # the file is discarded with its folder; its write error, if any, is already reported
