"""A fingerprint of a model's tensors: names, dtypes, shapes and bytes, independent of how the files are sharded.

Stored task vectors record the fingerprint of the base they were extracted from, so applying one to another base
can be flagged. It is computed while the base streams through a merge, so it costs no extra read.
"""

import hashlib
import threading

import torch

PREFIX = "taskvec-fp1:"


def new_digest():
    return hashlib.blake2b(digest_size=16)


def update(digest, tensor: torch.Tensor) -> None:
    digest.update(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))


def tensor_digest(tensor: torch.Tensor) -> str:
    d = new_digest()
    update(d, tensor)
    return d.hexdigest()


class Fingerprinter:
    """Collects per-tensor digests from worker threads; the fingerprint combines them in name order."""

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.add_digest(name, tensor.dtype, tuple(tensor.shape), tensor_digest(tensor))

    def add_digest(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], digest: str) -> None:
        """For a tensor hashed block by block, in order (`new_digest` and `update`)."""
        line = f"{name}\t{dtype}\t{list(shape)}\t{digest}\n"
        with self._lock:
            self._lines[name] = line

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._lines

    def hexdigest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self._lines):
            h.update(self._lines[name].encode())
        return PREFIX + h.hexdigest()
