"""Compressed task vectors on disk: which plain tensors hold each encoded tensor, how to write them, how to read
them back as an ordinary checkpoint.

A compressed vector is a normal task-vector folder whose safetensors hold, for each encoded tensor NAME, the parts
``NAME:indices`` + ``NAME:values`` (sparse), ``NAME:u`` + ``NAME:v`` (lowrank), or ``NAME:bits`` + ``NAME:scale``
(sign), and whose manifest lists the encodings (``encodings``: name -> codec, shape, count or rank or scale, and
the measured relative error). Tensors without an entry are stored dense under their own name. ``EncodedCheckpoint``
decodes per tensor (or per block of rows) on read, so every consumer -- merge, apply, inspect, the Python API --
sees plain float32 deltas and never knows.
"""

from __future__ import annotations

import math
import threading

from ..errors import TaskvecError
from ..io.checkpoint import Checkpoint, TensorInfo
from ..lazy import torch
from . import codecs as C

PARTS = {"sparse": ("indices", "values"), "lowrank": ("u", "v"), "sign": ("bits", "scale")}


def plan_encoding(shape: tuple[int, ...], compression: C.Compression, store_dtype, rank: int | None = None) -> dict | None:
    """How one tensor is stored under ``compression``: an encoding entry, or None for dense (where encoding does not
    make it smaller)."""
    numel = math.prod(shape)
    dense_bytes = numel * store_dtype.itemsize
    kind, enc = compression.kind, None
    if numel == 0 or kind == "dense-bf16":
        return None
    if kind == "sparse":
        enc = {"codec": "sparse", "shape": list(shape), "count": C.sparse_count(numel, compression.value)}
    elif kind in ("lowrank", "lowrank-energy") and len(shape) == 2:
        r = min(int(compression.value) if kind == "lowrank" else (rank or 1), min(shape))
        enc = {"codec": "lowrank", "shape": list(shape), "rank": r}
    elif kind == "sign":
        enc = {"codec": "sign", "shape": list(shape), "scale": "tensor" if compression.value == 0 else "row"}
    if enc is None or sum(math.prod(p[2]) * p[1].itemsize for p in parts("", enc, store_dtype)) >= dense_bytes:
        return None
    return enc


def parts(name: str, enc: dict, values_dtype) -> list[tuple]:
    """The plain tensors (name, dtype, shape) that hold an encoded tensor."""
    shape = tuple(enc["shape"])
    codec = enc["codec"]
    if codec == "sparse":
        k = int(enc["count"])
        return [(f"{name}:indices", C.index_dtype(math.prod(shape)), (k,)), (f"{name}:values", values_dtype, (k,))]
    if codec == "lowrank":
        r = int(enc["rank"])
        return [(f"{name}:u", values_dtype, (shape[0], r)), (f"{name}:v", values_dtype, (r, shape[1]))]
    if codec == "sign":
        rows, cols = C.as_rows(shape)
        return [(f"{name}:bits", torch.uint8, (rows, -(-cols // 8))),
                (f"{name}:scale", torch.float32, (rows if enc["scale"] == "row" else 1,))]
    raise TaskvecError(f"tensor {name!r}: unknown encoding {codec!r}; a newer taskvec may read it")


def encode(t, enc: dict, values_dtype) -> list:
    """The parts' tensors, in ``parts`` order."""
    codec = enc["codec"]
    if codec == "sparse":
        return list(C.sparse_encode_count(t, int(enc["count"]), values_dtype))
    if codec == "lowrank":
        return list(C.lowrank_encode(t, int(enc["rank"]), values_dtype))
    return list(C.sign_encode(t, per_row=enc["scale"] == "row"))


def decode(tensors: list, enc: dict, rows: tuple[int, int] | None = None):
    """Float32 rows [start, stop) (all rows by default) from the parts (for lowrank and sign, already only those
    rows of ``u``, ``bits`` and a per-row ``scale``; for sparse, the whole index and the values' window)."""
    shape = tuple(enc["shape"])
    codec = enc["codec"]
    out_shape = shape if rows is None else (rows[1] - rows[0],) + shape[1:]
    if codec == "sparse":
        indices, values, start, stop = tensors
        return C.sparse_decode(indices, values, shape, start, stop).reshape(out_shape)
    if codec == "lowrank":
        return C.lowrank_decode(*tensors).reshape(out_shape)
    return C.sign_decode(tensors[0], tensors[1], C.as_rows(shape)[1]).reshape(out_shape)


class EncodedCheckpoint(Checkpoint):
    """A compressed task vector read as plain float32 tensors, decoded per tensor or per block of rows."""

    def __init__(self, inner: Checkpoint, encodings: dict):
        super().__init__(inner.label, inner.folder, inner.files, inner.is_folder)
        self.inner, self.encodings = inner, encodings
        owned = set()
        for name, enc in encodings.items():
            owned.update(_checked_parts(inner, name, enc))
            first = inner.info(f"{name}:{PARTS[enc['codec']][0]}")
            self.tensors[name] = TensorInfo(name, torch.float32, tuple(enc["shape"]), first.file, first.offset)
        for name in inner.names():
            if name not in owned:
                if name in self.tensors:
                    raise TaskvecError(f"{inner.label}: tensor {name!r} is stored both dense and encoded; the task "
                                       "vector is corrupt -- extract it again")
                self.tensors[name] = inner.info(name)

    def read(self, name, rows=None, into=None):
        enc = self.encodings.get(name)
        if enc is None:
            return self.inner.read(name, rows, into)
        codec, shape = enc["codec"], tuple(enc["shape"])
        if codec == "sparse":
            indices = self.inner.read(f"{name}:indices")
            _check_indices(self.inner, name, indices, math.prod(shape))
            per_row = math.prod(shape[1:]) if len(shape) >= 1 else 1
            start, stop = (0, math.prod(shape)) if rows is None else (rows[0] * per_row, rows[1] * per_row)
            lo, hi = C.sparse_window(indices, start, stop)
            return decode([indices[lo:hi], self.inner.read(f"{name}:values", (lo, hi)), start, stop], enc, rows)
        if codec == "lowrank":
            return decode([self.inner.read(f"{name}:u", rows), self.inner.read(f"{name}:v")], enc, rows)
        sign_rows = rows if len(shape) >= 2 else None
        scale = self.inner.read(f"{name}:scale", sign_rows if enc["scale"] == "row" else None)
        out = decode([self.inner.read(f"{name}:bits", sign_rows), scale], enc, sign_rows)
        return out if rows is None or len(shape) >= 2 else out[rows[0]:rows[1]]

    def close(self) -> None:
        self.inner.close()


def _checked_parts(inner: Checkpoint, name: str, enc) -> list[str]:
    """An encoding entry and the stored parts it names, checked against each other from headers alone."""
    where = f"{inner.label}: tensor {name!r}"
    if not isinstance(enc, dict) or enc.get("codec") not in PARTS or not isinstance(enc.get("shape"), list):
        raise TaskvecError(f"{where}: malformed encoding {enc!r} in the manifest; extract the task vector again")
    expected = parts(name, enc, torch.float32)
    for part, dtype, shape in expected:
        info = inner.tensors.get(part)
        if info is None:
            raise TaskvecError(f"{where} is stored {enc['codec']} but its part {part!r} is missing from "
                               f"{', '.join(str(f.name) for f in inner.files)}; the task vector is incomplete -- "
                               "copy or extract it again")
        if part.endswith((":values", ":u", ":v")):
            ok_dtype = info.dtype.is_floating_point
        elif part.endswith(":indices"):
            ok_dtype = info.dtype in (torch.int32, torch.int64)
        else:
            ok_dtype = info.dtype == dtype
        if tuple(info.shape) != tuple(shape) or not ok_dtype:
            raise TaskvecError(f"{where}: part {part!r} in {info.file.name} is {info.dtype} {list(info.shape)}, but "
                               f"its encoding {enc} needs {list(shape)}; the task vector is corrupt -- extract it "
                               "again")
    return [p[0] for p in expected]


def _check_indices(inner: Checkpoint, name: str, indices, numel: int) -> None:
    if indices.numel() and (int(indices[0]) < 0 or int(indices[-1]) >= numel
                            or bool((indices[1:] <= indices[:-1]).any())):
        raise TaskvecError(f"{inner.label}: tensor {name!r}: its sparse indices are not ascending positions below "
                           f"{numel}; the task vector is corrupt -- extract it again")


def open_encoded(inner: Checkpoint, manifest: dict, where) -> Checkpoint:
    """The checkpoint a stored task vector's consumers read: decoded if its manifest lists encodings."""
    encodings = manifest.get("encodings") or {}
    if not isinstance(encodings, dict):
        raise TaskvecError(f"{where}: 'encodings' must map tensor names to encodings; extract the vector again")
    return EncodedCheckpoint(inner, encodings) if encodings else inner


class EncodingWriter:
    """What the extract engine writes each float32 task-vector tensor to: encodes it into its parts, writes them,
    and measures the reconstruction error (thread-safe; the engine's workers call ``write``)."""

    def __init__(self, writer, encodings: dict, values_dtype, dense_dtype):
        self.writer, self.encodings = writer, encodings
        self.values_dtype, self.dense_dtype = values_dtype, dense_dtype
        self.errors: dict[str, tuple[float, float]] = {}
        self.stored_bytes = 0
        self.dense_bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def specs(shapes: dict[str, tuple], encodings: dict, values_dtype, dense_dtype) -> list[tuple]:
        out = []
        for name, shape in shapes.items():
            enc = encodings.get(name)
            out += parts(name, enc, values_dtype) if enc else [(name, dense_dtype, tuple(shape))]
        return out

    def write(self, name: str, tensor) -> None:
        enc = self.encodings.get(name)
        if enc is None:
            stored = tensor.to(self.dense_dtype)
            self.writer.write(name, stored)
            tensors, approx = [stored], stored
        else:
            tensors = encode(tensor, enc, self.values_dtype)
            for (part, _, _), t in zip(parts(name, enc, self.values_dtype), tensors):
                self.writer.write(part, t)
            inputs = tensors + [0, tensor.numel()] if enc["codec"] == "sparse" else tensors
            approx = decode(inputs, enc)
        err = C.relative_error(tensor, approx)
        with self._lock:
            self.errors[name] = err
            self.stored_bytes += sum(t.numel() * t.element_size() for t in tensors)
            self.dense_bytes += tensor.numel() * 4

    def report(self, compression: C.Compression) -> dict:
        """The manifest's ``compression_report``; every encoding entry also gets its own ``relative_error``."""
        for name, enc in self.encodings.items():
            if name in self.errors:
                enc["relative_error"] = _ratio(*self.errors[name])
        num = sum(e[0] for e in self.errors.values())
        den = sum(e[1] for e in self.errors.values())
        worst = max(self.errors, key=lambda n: _ratio(*self.errors[n]), default=None)
        return {
            "compression": str(compression), "stored_bytes": self.stored_bytes,
            "dense_float32_bytes": self.dense_bytes,
            "size_ratio": round(self.stored_bytes / self.dense_bytes, 6) if self.dense_bytes else None,
            "relative_error": _ratio(num, den),
            "worst_tensor": None if worst is None else {"tensor": worst, "relative_error": _ratio(*self.errors[worst])},
            "encoded_tensors": len(self.encodings), "dense_tensors": len(self.errors) - len(self.encodings),
        }


def _ratio(num: float, den: float) -> float:
    return float(math.sqrt(num / den)) if den > 0 else (0.0 if num == 0 else float("inf"))
