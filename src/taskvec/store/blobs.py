"""Content-addressed blobs on any fsspec filesystem: a local folder by default, ``memory://``, ``s3://``...

    ROOT/sha256/<64 hex>        a blob, named by the sha256 of its bytes; written once, never changed
    ROOT/incoming/<random>      an upload in progress: hashed while written, moved into place only if the digest
                                matches the one it was sent under

An upload cut off by a crash (the server killed mid-stream) leaves only its ``incoming/`` object, which nothing ever
reads; ``clean_incoming`` removes those no one has written to for a while (a server runs it when it starts; live
uploads of other servers sharing the store are written to every moment, so they are spared).

A blob appears under its name whole or not at all (a rename on local disks), so servers sharing the store never see
half a blob, and two uploads of the same blob are harmless: content addressing makes them the same file.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import fsspec

DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class BlobError(Exception):
    """An upload that is refused: ``status`` is the HTTP status the server answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BlobStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.fs.makedirs(f"{self.root}/sha256", exist_ok=True)
        self.fs.makedirs(f"{self.root}/incoming", exist_ok=True)

    def path(self, digest: str) -> str:
        if not DIGEST.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return f"{self.root}/sha256/{digest}"

    def size(self, digest: str) -> int | None:
        """The blob's size, or None if it is not here."""
        try:
            return int(self.fs.size(self.path(digest)))
        except FileNotFoundError:
            return None

    def open(self, digest: str):
        return self.fs.open(self.path(digest), "rb")

    def read(self, digest: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The bytes [start, stop) of a blob, in chunks."""
        with self.open(digest) as f:
            f.seek(start)
            left = None if stop is None else stop - start
            while left is None or left > 0:
                chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def _age(self, path: str) -> float | None:
        """Seconds since ``path`` was last written; None where the filesystem does not say (or it is gone)."""
        try:
            modified = self.fs.modified(path)
        except (NotImplementedError, FileNotFoundError):
            return None
        return time.time() - (modified.timestamp() if isinstance(modified, datetime) else float(modified))

    def listing(self) -> Iterator[tuple[str, int, float | None]]:
        """(digest, size, age in seconds or None) of every stored blob."""
        for info in self.fs.ls(f"{self.root}/sha256", detail=True):
            digest = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if DIGEST.match(digest):
                yield digest, int(info.get("size") or 0), self._age(info["name"])

    def remove(self, digest: str) -> None:
        try:
            self.fs.rm(self.path(digest))
        except FileNotFoundError:
            pass

    def clean_incoming(self, older_than: float) -> int:
        """Remove uploads in ``incoming/`` not written to for ``older_than`` seconds: what a crash left. Returns how
        many; filesystems that do not report modification times are left alone."""
        removed = 0
        for path in self.fs.ls(f"{self.root}/incoming", detail=False):
            age = self._age(path)
            if age is not None and age >= older_than:
                try:
                    self.fs.rm(path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def writer(self, digest: str, max_size: int) -> "BlobWriter":
        return BlobWriter(self, digest, max_size)


class BlobWriter:
    """An upload: ``write`` chunks, then ``commit`` (checks size and digest, moves into place) or ``abort``."""

    def __init__(self, store: BlobStore, digest: str, max_size: int):
        self.store, self.digest, self.max_size = store, digest, max_size
        self.final = store.path(digest)
        self.tmp = f"{store.root}/incoming/{uuid.uuid4().hex}"
        self.file = store.fs.open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise BlobError(413, f"blob {self.digest}: larger than this server's limit of {self.max_size} bytes")
        self.hash.update(chunk)
        self.file.write(chunk)

    def commit(self) -> bool:
        """Move the upload into place; True if it is new, False if the blob was already there."""
        self.file.close()
        got = self.hash.hexdigest()
        if got != self.digest:
            self.abort()
            raise BlobError(400, f"blob {self.digest}: the uploaded bytes have sha256 {got}; upload the file "
                                 "under its own digest (was it changed or cut short?)")
        fs = self.store.fs
        if fs.exists(self.final):
            fs.rm(self.tmp)
            return False
        fs.mv(self.tmp, self.final)
        return True

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            try:
                self.store.fs.rm(self.tmp)
            except FileNotFoundError:
                pass
