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
    """Parse and check a file's header: every byte range must lie inside the file (catches truncated downloads)."""
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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaskvecError(f"{path}: corrupt safetensors header ({e})") from e
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    entries: dict[str, Entry] = {}
    for name, spec in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise TaskvecError(f"{path}: tensor {name!r} has an invalid header entry {spec!r}") from e
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
        entries[name] = Entry(dtype, shape, data_start + begin, data_start + end)
    return entries, metadata


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
        if own:
            fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], start + done)
                if n == 0:
                    raise TaskvecError(f"{path}: unexpected end of file while reading a tensor; the file is truncated")
                done += n
        finally:
            if own:
                os.close(fd)
    return buf.view(entry.dtype).reshape(shape)


class StreamingFile:
    """One safetensors file whose tensor list is known up front: the header is written at once, then each tensor at
    its planned offset -- in any order, from any thread (positioned writes) -- so workers write their own results."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
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
        self.total_bytes = offset
        self._data_start = 8 + len(raw)
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(memoryview(struct.pack("<Q", len(raw)) + raw), 0)

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
        while len(view):
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n

    def close(self) -> None:
        """fsync and close; an error if a planned tensor was never written."""
        if len(self._written) != len(self._slots):
            self.abort()
            raise RuntimeError(f"{self.path}: closed after {len(self._written)} of {len(self._slots)} tensors")
        if self._fd is not None:
            os.fsync(self._fd)
            self.abort()

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
