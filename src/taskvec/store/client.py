"""The store's client: login, push, search, show, pull, over httpx, with a download cache.

    $TASKVEC_CONFIG (default ~/.config/taskvec)/store.json     {"store": URL, "tokens": {URL: TOKEN}}, mode 0600
    $TASKVEC_CACHE (default ~/.cache/taskvec)/blobs/sha256/<digest>    downloaded blobs, verified
                                              /blobs/partial/<digest>   a download in progress (resumed by Range)
                                              /vectors/<manifest sha256>  pulled task-vector folders (for equip)

The store and token come from ``--store``/``--token``, else ``TASKVEC_STORE``/``TASKVEC_TOKEN``, else the config
that ``taskvec store login`` saved. Every refusal is a ``TaskvecError`` with one line: the server's own message when
it answered, or why it could not be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import TaskvecError
from . import names
from .package import PackageManifest, make_manifest, unpack

CONFIG_FILE = "store.json"
CHUNK = 1 << 20
PARALLEL = 4  # blobs downloaded at once


def config_dir() -> Path:
    return Path(os.environ.get("TASKVEC_CONFIG") or Path.home() / ".config" / "taskvec").expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("TASKVEC_CACHE") or Path.home() / ".cache" / "taskvec").expanduser()


def load_config() -> dict:
    path = config_dir() / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TaskvecError(f"{path}: cannot read the store config ({e}); fix or delete it and log in again") from e
    return data if isinstance(data, dict) else {}


def save_login(url: str, token: str | None) -> Path:
    """Remember ``url`` as the default store (and its token), in a file only the user can read (0600)."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = load_config()
    data["store"] = url
    tokens = data.setdefault("tokens", {})
    if token:
        tokens[url] = token
    path = folder / CONFIG_FILE
    tmp = folder / f".{CONFIG_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def resolve(store: str | None, token: str | None) -> tuple[str, str | None]:
    """(store URL, token) from the options, else the environment, else the saved login."""
    config = load_config()
    url = store or os.environ.get("TASKVEC_STORE") or config.get("store")
    if not url:
        raise TaskvecError("which store? pass --store URL, set TASKVEC_STORE, or run `taskvec store login URL`")
    url = check_url(url)
    token = token or os.environ.get("TASKVEC_TOKEN") or (config.get("tokens") or {}).get(url)
    return url, token


def check_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TaskvecError(f"store {url!r}: give its URL, e.g. http://127.0.0.1:8765")
    return url


@dataclass
class PushResult:
    ref: str
    status: str  # created | exists
    uploaded: int = 0
    present: int = 0
    uploaded_bytes: int = 0


@dataclass
class Progress:
    """Byte counts to a callback (the CLI's rich progress bar); a no-op by default."""
    start: Callable[[str, int], None] = lambda label, total: None
    advance: Callable[[int], None] = lambda n: None
    stop: Callable[[], None] = lambda: None


@dataclass
class StoreClient:
    url: str
    token: str | None = None
    cache: Path = field(default_factory=cache_dir)
    progress: Progress = field(default_factory=Progress)
    timeout: float = 60.0

    def __post_init__(self):
        self.url = check_url(self.url)
        headers = {"User-Agent": "taskvec-store-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.http = httpx.Client(base_url=self.url, headers=headers,
                                 timeout=httpx.Timeout(self.timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # HTTP, with one-line errors
    def _send(self, method: str, path: str, ok=(200,), **kw) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if r.status_code not in ok:
            raise self._refused(r)
        return r

    @contextmanager
    def _stream(self, method: str, path: str, ok=(200,), **kw):
        try:
            with self.http.stream(method, path, **kw) as r:
                if r.status_code not in ok:
                    r.read()
                    raise self._refused(r)
                yield r
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> TaskvecError:
        return TaskvecError(f"store {self.url}: cannot reach it ({type(e).__name__}: {e or 'no answer'}); is the "
                            "URL right and the server running (taskvec store serve)?")

    def _refused(self, r: httpx.Response) -> TaskvecError:
        try:
            message = r.json()["error"]
        except Exception:  # noqa: BLE001 -- not our server, or no body (HEAD)
            message = (r.text or r.reason_phrase or "").strip()[:300] or "no message"
        error = TaskvecError(f"store {self.url} refused ({r.status_code}): {message}")
        error.status = r.status_code
        return error

    # identity
    def whoami(self) -> list[str]:
        return self._send("GET", "/api/whoami").json()["orgs"]

    def health(self) -> dict:
        return self._send("GET", "/api/health").json()

    # publishing
    def blob_size(self, digest: str) -> int | None:
        r = self._send("HEAD", f"/api/blobs/{digest}", ok=(200, 404))
        return int(r.headers["content-length"]) if r.status_code == 200 else None

    def upload_blob(self, path: Path, digest: str, size: int) -> None:
        def chunks():
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    self.progress.advance(len(chunk))
                    yield chunk

        self._send("PUT", f"/api/blobs/{digest}", ok=(200, 201), content=chunks(),
                   headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})

    def publish(self, manifest: PackageManifest) -> dict:
        ref = names.parse_ref(manifest.ref)
        r = self._send("PUT", f"/api/packages/{ref.org}/{ref.name}/{ref.version}", ok=(200, 201),
                       content=manifest.model_dump_json().encode(), headers={"Content-Type": "application/json"})
        return r.json()

    def push(self, vector: str | Path, ref: str, *, license: str = "unknown", publisher: str | None = None,
             description: str = "", tags: list[str] | tuple[str, ...] = (), metrics: dict | None = None,
             base_id: str | None = None) -> PushResult:
        """Package a stored task-vector folder as ``ref``, upload the blobs the store lacks, then the manifest."""
        pref = names.parse_ref(ref)
        manifest, files = make_manifest(vector, ref, license=license, publisher=publisher or pref.org,
                                        description=description, tags=tags, metrics=metrics, base_id=base_id)
        result = PushResult(ref, "created")
        self._upload_missing(manifest, files, result)
        try:
            result.status = self.publish(manifest)["status"]
        except TaskvecError as e:
            if getattr(e, "status", None) != 400 or "is not on this store" not in str(e):
                raise
            # a blob that was there when asked was collected (taskvec store gc) before the manifest came: once more
            self._upload_missing(manifest, files, result)
            result.status = self.publish(manifest)["status"]
        return result

    def _upload_missing(self, manifest: PackageManifest, files: dict[str, Path], result: PushResult) -> None:
        sizes = {f.sha256: f.size for f in manifest.files}
        missing = [d for d in sizes if self.blob_size(d) != sizes[d]]
        result.present = len(sizes) - len(missing)
        if not missing:
            return
        self.progress.start(f"push {manifest.ref}", sum(sizes[d] for d in missing))
        try:
            for d in missing:
                self.upload_blob(files[d], d, sizes[d])
                result.uploaded += 1
                result.uploaded_bytes += sizes[d]
        finally:
            self.progress.stop()

    # reading
    def search(self, q: str | None = None, *, name: str | None = None, tags: list[str] | tuple[str, ...] = (),
               base: str | None = None, architecture: str | None = None, org: str | None = None,
               limit: int = 50) -> dict:
        params = {k: v for k, v in {"q": q, "name": name, "base": base, "architecture": architecture, "org": org,
                                    "limit": limit}.items() if v}
        params["tag"] = list(tags)
        return self._send("GET", "/api/packages", params=params).json()

    def show(self, ref: str) -> dict:
        p = names.parse_ref(ref)
        return self._send("GET", f"/api/packages/{p.org}/{p.name}/{p.version}").json()

    def manifest(self, ref: str) -> tuple[PackageManifest, bytes]:
        """The manifest as published, checked to be the one asked for; and its bytes."""
        p = names.parse_ref(ref)
        body = self._send("GET", f"/api/packages/{p.org}/{p.name}/{p.version}/manifest.json").content
        try:
            manifest = PackageManifest.model_validate_json(body)
        except ValueError as e:
            raise TaskvecError(f"store {self.url}: the manifest of {ref} is not valid ({str(e).splitlines()[0]}); "
                               "is this a taskvec store of a compatible version?") from None
        if manifest.ref != str(p):
            raise TaskvecError(f"store {self.url}: asked for {p}, got the manifest of {manifest.ref}")
        return manifest, body

    def blob_dir(self) -> Path:
        return self.cache / "blobs" / "sha256"

    def fetch_blobs(self, *manifests: PackageManifest) -> None:
        """Download the blobs of ``manifests`` the cache lacks, resuming any partial download; each is verified.
        Several blobs download at once (up to ``PARALLEL``): hashing and writing one overlaps receiving another."""
        need = {f.sha256: f.size for m in manifests for f in m.files if not self._cached(f.sha256, f.size)}
        if not need:
            return
        partial = self.cache / "blobs" / "partial"
        done = sum(_size(partial / d) for d in need)
        self.progress.start(f"pull {', '.join(m.ref for m in manifests)}", sum(need.values()))
        self.progress.advance(done)
        try:
            if len(need) == 1:
                self._fetch(*next(iter(need.items())))
                return
            with ThreadPoolExecutor(min(PARALLEL, len(need)), thread_name_prefix="taskvec-pull") as pool:
                for job in [pool.submit(self._fetch, d, size) for d, size in need.items()]:
                    job.result()  # the first failure, once the others have finished
        finally:
            self.progress.stop()

    def _cached(self, digest: str, size: int) -> bool:
        path = self.blob_dir() / digest
        return path.is_file() and path.stat().st_size == size

    def _fetch(self, digest: str, size: int) -> Path:
        final = self.blob_dir() / digest
        partial_dir = self.cache / "blobs" / "partial"
        partial_dir.mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = partial_dir / digest
        with open(part, "ab") as f:
            _lock(f)  # another process downloading the same blob waits, then finds it done
            if self._cached(digest, size):
                return final
            have = f.seek(0, os.SEEK_END)
            if have > size:
                f.truncate(0)
                f.seek(0)
                have = 0
            h = hashlib.sha256()
            if have:
                with open(part, "rb") as r:
                    while chunk := r.read(CHUNK):
                        h.update(chunk)
            if have < size:
                headers = {"Range": f"bytes={have}-"} if have else {}
                with self._stream("GET", f"/api/blobs/{digest}", ok=(200, 206), headers=headers) as r:
                    if r.status_code == 200 and have:  # the server sent it all: start over
                        f.truncate(0)
                        f.seek(0)
                        h = hashlib.sha256()
                        self.progress.advance(-have)
                    for chunk in r.iter_bytes(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        self.progress.advance(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            got, length = h.hexdigest(), f.tell()
            if got != digest or length != size:
                f.truncate(0)
                raise TaskvecError(f"store {self.url}: blob {digest} arrived with {length} bytes and sha256 {got}, "
                                   f"not the {size} bytes the manifest lists; nothing was kept -- pull again")
            os.replace(part, final)
        return final

    def pull(self, ref: str, out: str | Path, force: bool = False) -> tuple[PackageManifest, Path]:
        """Download ``ref`` (cached by digest) and write the task-vector folder ``out``; digests verified."""
        manifest, _ = self.manifest(ref)
        self.fetch_blobs(manifest)
        return manifest, unpack(manifest, self.blob_dir(), out, force, label=ref)

    def vector_folder(self, body: bytes) -> Path:
        """Where ``cached_vector`` keeps the vector whose manifest is ``body`` (keyed by its sha256)."""
        return self.cache / "vectors" / hashlib.sha256(body).hexdigest()

    def uncached(self, manifests: list[tuple[PackageManifest, bytes]]) -> list[PackageManifest]:
        """Those of ``manifests`` (with their bytes) whose vector folder is not in the cache yet."""
        return [m for m, body in manifests if not (self.vector_folder(body) / "taskvec.json").is_file()]

    def cached_vector(self, ref: str, manifest: PackageManifest | None = None,
                      body: bytes | None = None) -> Path:
        """``ref`` as a task-vector folder in the cache, pulled if need be. Its files are hard links to the cache's
        blobs (checked as they were downloaded), so equipping does not copy every vector a second time."""
        if manifest is None or body is None:
            manifest, body = self.manifest(ref)
        folder = self.vector_folder(body)
        if (folder / "taskvec.json").is_file():
            return folder
        self.fetch_blobs(manifest)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            return unpack(manifest, self.blob_dir(), folder, label=ref, link=True)
        except TaskvecError:
            if (folder / "taskvec.json").is_file():  # another process unpacked it meanwhile
                return folder
            raise


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lock(f) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover -- Windows: no cross-process lock
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
