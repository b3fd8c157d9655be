"""A base model's fingerprint (``taskvec-fp2``): one sha256 per tensor, combined into a Merkle root.

Each tensor's hash covers its name, dtype, shape and bytes (``sha256(json([name, dtype, shape]) + "\\n" + bytes)``),
so it does not depend on which file or shard holds the tensor, and the bytes can be fed block by block as a merge
streams them. The root is an RFC 6962 Merkle tree over the tensors sorted by name (leaf ``sha256(0x00 || hash)``,
node ``sha256(0x01 || left || right)``). Stored task vectors keep the root and every tensor's hash, so a wrong base
is named tensor by tensor, and the root alone identifies a base in the store (which is content-addressed with sha256
too). Older task vectors carry ``taskvec-fp1`` (blake2b, no per-tensor hashes; ``taskvec.fingerprint``): still read
and checked, never written.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass

from ..lazy import torch

PREFIX = "taskvec-fp2:"
LEGACY_PREFIX = "taskvec-fp1:"
BLOCK_BYTES = 64 * 2**20  # `fingerprint_checkpoint` reads at most this much of a tensor at a time


def dtype_code(dtype) -> str:
    """The safetensors spelling (F32, BF16, I64...): the same name whatever file format held the tensor."""
    from ..dtypes import SAFETENSORS_NAMES

    return SAFETENSORS_NAMES.get(dtype, str(dtype).removeprefix("torch."))


class TensorHash:
    """sha256 of one tensor, fed its bytes in order, whole or in blocks of rows."""

    def __init__(self, name: str, dtype, shape):
        self.name, self.dtype, self.shape = name, dtype_code(dtype), [int(s) for s in shape]
        header = json.dumps([name, self.dtype, self.shape], separators=(",", ":"))
        self._h = hashlib.sha256(header.encode() + b"\n")

    def update(self, tensor) -> None:
        self._h.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def record(self) -> dict:
        return {"dtype": self.dtype, "shape": self.shape, "sha256": self.hexdigest()}


def tensor_record(name: str, tensor) -> dict:
    h = TensorHash(name, tensor.dtype, tensor.shape)
    h.update(tensor)
    return h.record()


def merkle_root(hashes: dict[str, str]) -> str:
    """``taskvec-fp2:`` + the Merkle root of the per-tensor hashes (hex) in name order."""
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(hashes[n])).digest() for n in sorted(hashes)]
    return PREFIX + _tree(leaves).hex()


def _tree(nodes: list[bytes]) -> bytes:
    if not nodes:
        return hashlib.sha256(b"").digest()
    if len(nodes) == 1:
        return nodes[0]
    k = 1 << ((len(nodes) - 1).bit_length() - 1)  # the largest power of two below len(nodes)
    return hashlib.sha256(b"\x01" + _tree(nodes[:k]) + _tree(nodes[k:])).digest()


@dataclass(frozen=True)
class Fingerprint:
    root: str
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "sha256"}

    def to_dict(self) -> dict:
        return {"fingerprint": self.root, "tensors": self.tensors}


class Fingerprinter:
    """Collects per-tensor hashes from worker threads (as the base streams through a merge or an extract)."""

    def __init__(self) -> None:
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.on_tensor = None  # called with (name, record) as each tensor completes (the base check)

    def begin(self, name: str, dtype, shape) -> TensorHash:
        return TensorHash(name, dtype, shape)

    def finish(self, h: TensorHash) -> None:
        record = h.record()
        with self._lock:
            self._records[h.name] = record
        if self.on_tensor is not None:
            self.on_tensor(h.name, record)

    def add(self, name: str, tensor) -> None:
        h = self.begin(name, tensor.dtype, tuple(tensor.shape))
        h.update(tensor)
        self.finish(h)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._records

    def result(self) -> Fingerprint:
        with self._lock:
            records = {n: self._records[n] for n in sorted(self._records)}
        return Fingerprint(merkle_root({n: r["sha256"] for n, r in records.items()}), records)

    def hexdigest(self) -> str:
        return self.result().root


class Fingerprinters:
    """Several fingerprint schemes fed the same bytes (a merge of old fp1 vectors and new ones)."""

    def __init__(self, *parts) -> None:
        self.parts = parts

    def begin(self, name, dtype, shape):
        return [p.begin(name, dtype, shape) for p in self.parts]

    def finish(self, hs) -> None:
        for p, h in zip(self.parts, hs):
            p.finish(h)

    def add(self, name, tensor) -> None:
        for p in self.parts:
            p.add(name, tensor)

    def has(self, name) -> bool:
        return all(p.has(name) for p in self.parts)


def update(handle, tensor) -> None:
    """Feed a block to what ``begin`` returned (one hash, or a list of them)."""
    for h in handle if isinstance(handle, list) else [handle]:
        h.update(tensor)


def fingerprint_checkpoint(checkpoint, progress=None) -> Fingerprint:
    """Hash every tensor of an open checkpoint, reading at most ``BLOCK_BYTES`` of rows at a time."""
    fp = Fingerprinter()
    for name in sorted(checkpoint.names(), key=lambda n: (str(checkpoint.info(n).file), checkpoint.info(n).offset)):
        info = checkpoint.info(name)
        h = fp.begin(name, info.dtype, info.shape)
        for rows in _row_ranges(info.shape, info.dtype.itemsize):
            h.update(checkpoint.read(name, rows))
        fp.finish(h)
        if progress is not None:
            progress(info.nbytes)
    return fp.result()


def _row_ranges(shape: tuple[int, ...], itemsize: int):
    if not shape:
        return [None]
    row_bytes = max(1, itemsize * math.prod(shape[1:]))
    step = max(1, BLOCK_BYTES // row_bytes)
    if step >= shape[0]:
        return [None]
    return [(s, min(s + step, shape[0])) for s in range(0, shape[0], step)]


def fingerprint_model(ref: str) -> Fingerprint:
    """``taskvec fingerprint MODEL``: a folder, a file or a cached model id, streamed tensor by tensor."""
    from ..io.checkpoint import open_checkpoint

    ckpt = open_checkpoint(ref)
    try:
        return fingerprint_checkpoint(ckpt)
    finally:
        ckpt.close()
