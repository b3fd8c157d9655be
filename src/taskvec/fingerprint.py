"""The first fingerprint scheme (``taskvec-fp1:``, blake2b, no per-tensor hashes), kept to check task vectors
stored before ``taskvec-fp2`` (``taskvec.store.fingerprint``); nothing writes it any more.
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

    def begin(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> "_Hash":
        return _Hash(name, dtype, tuple(shape))

    def finish(self, h: "_Hash") -> None:
        self.add_digest(h.name, h.dtype, h.shape, h.digest.hexdigest())

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._lines

    def hexdigest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self._lines):
            h.update(self._lines[name].encode())
        return PREFIX + h.hexdigest()


class _Hash:
    """One tensor's blake2b, fed in blocks (the interface of ``taskvec.store.fingerprint.TensorHash``)."""

    def __init__(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]):
        self.name, self.dtype, self.shape, self.digest = name, dtype, shape, new_digest()

    def update(self, tensor: torch.Tensor) -> None:
        update(self.digest, tensor)
