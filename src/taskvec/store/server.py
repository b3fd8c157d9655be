"""The store's HTTP API: FastAPI over a SQL database (``db``) and an fsspec blob store (``blobs``).

    PUT  /api/blobs/{sha256}                       upload a blob (token); checked against its digest; idempotent
    HEAD /api/blobs/{sha256}                       is it here, and its size
    GET  /api/blobs/{sha256}                       download (Range: bytes=... for resuming)
    PUT  /api/packages/{org}/{name}/{version}      publish a manifest (token of the org), once its blobs are here
    GET  /api/packages?q=&name=&tag=&base=&architecture=&org=     search
    GET  /api/packages/{org}/{name}                the versions of a package
    GET  /api/packages/{org}/{name}/{version}      one version: its manifest and when it was published
    GET  /api/packages/{org}/{name}/{version}/manifest.json       the manifest exactly as published
    GET  /api/whoami, /api/health                  the token's orgs; liveness

The server holds no state of its own (``create_app(settings)``), so several can share one database and blob store.
It never imports the merge engine or torch: it handles bytes, JSON and SQL. Every error is JSON
``{"error": "..."}`` with a fitting status code.
"""

from __future__ import annotations

import json
import re

from fastapi import Cookie, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import TaskvecError
from . import auth, names
from .blobs import DIGEST, BlobError, BlobStore
from .catalog import add_catalog
from .db import Database, _iso
from .package import BaseInfo, PackageManifest
from .settings import ServerSettings

VECTOR_MANIFEST = "taskvec.json"  # taskvec.inputs.MANIFEST, without importing the engine


class ErrorBody(BaseModel):
    error: str


class Summary(BaseModel):
    ref: str
    name: str
    version: str
    base: BaseInfo
    model_type: str | None
    architectures: list[str]
    description: str
    tags: list[str]
    license: str
    compression: str
    size: int
    published: str


class SearchResult(BaseModel):
    total: int
    results: list[Summary]


class VersionList(BaseModel):
    name: str
    versions: list[Summary]


class Shown(BaseModel):
    ref: str
    published: str
    manifest: PackageManifest


class Published(BaseModel):
    ref: str
    status: str  # created | exists
    published: str


class BlobStored(BaseModel):
    sha256: str
    size: int
    created: bool


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorBody} for c in codes}


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(status, message, headers)


def create_app(settings: ServerSettings) -> FastAPI:
    db = Database(settings.db_url)
    blobs = BlobStore(settings.blobs_url)
    blobs.clean_incoming(settings.stale_upload_seconds)  # what a killed server left half-uploaded
    app = FastAPI(
        title="taskvec store", version=__version__,
        description="Publish, search and download task vectors. Reads are public unless the server runs "
                    "`--private`; writes need `Authorization: Bearer <token>` (`taskvec store token create`).",
    )
    app.state.settings, app.state.db, app.state.blobs = settings, db, blobs

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = " ".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, 422)

    @app.exception_handler(BlobError)
    async def _blob_error(request: Request, exc: BlobError):
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        """The client went away mid-request (an upload cut off): its temporary object is already removed; nothing
        to answer and no server error to log."""
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # pragma: no cover -- a bug; still JSON, no traceback
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    # who may do what
    def identify(token: str | None) -> tuple[int, list[str]] | None:
        if token is None:
            return None
        digest = auth.digest(token)
        orgs = db.token_orgs(digest)
        if orgs is None:
            raise ApiError(401, "unknown or revoked token; create one with `taskvec store token create` on the "
                                "server", {"WWW-Authenticate": "Bearer"})
        return db.token_id(digest), orgs

    def caller(authorization: str | None = Header(None, description="Bearer <token>")) -> tuple[int, list[str]] | None:
        return identify(auth.bearer(authorization))

    def reader(authorization: str | None = Header(None, description="Bearer <token>"),
               cookie: str | None = Cookie(None, alias=auth.COOKIE, include_in_schema=False)):
        """Reads take the header, or the catalog's login cookie (so its download links work on a private store);
        writes take only the header, so a cookie can never be used to publish (no cross-site writes)."""
        who = identify(auth.bearer(authorization) or (cookie if settings.private else None))
        if settings.private and who is None:
            raise ApiError(401, "this store is private: pass a token (--token or TASKVEC_TOKEN)",
                           {"WWW-Authenticate": "Bearer"})
        return who

    def writer(who=Depends(caller)):
        if who is None:
            raise ApiError(401, "publishing needs a token: pass --token or set TASKVEC_TOKEN (`taskvec store "
                                "token create --org ORG` on the server makes one)", {"WWW-Authenticate": "Bearer"})
        return who

    def digest_param(sha256: str = Path(..., description="sha256 of the blob, 64 lowercase hex digits")) -> str:
        if not DIGEST.match(sha256):
            raise ApiError(400, f"blob {sha256[:80]!r}: not a sha256 digest (64 lowercase hex digits)")
        return sha256

    def ref_param(org: str, name: str, version: str | None = None) -> names.PackageRef:
        try:
            return names.PackageRef(names.check_part(org, "org"), names.check_part(name, "name"),
                                    names.check_version(version) if version is not None else None)
        except TaskvecError as e:
            raise ApiError(400, str(e)) from None

    def found(ref: names.PackageRef):
        row = db.get(ref.org, ref.name, ref.version)
        if row is None:
            raise ApiError(404, f"{ref}: no such package version on this store")
        return row

    @app.get("/api/health", tags=["store"])
    def health() -> dict:
        """Liveness: the server answers and reaches its database."""
        db.search(limit=1)
        return {"status": "ok", "version": __version__, "private": settings.private}

    @app.get("/api/whoami", tags=["store"], responses=_errors(401))
    def whoami(who=Depends(writer)) -> dict:
        """The orgs the token may publish under."""
        return {"orgs": who[1]}

    # blobs
    @app.head("/api/blobs/{sha256}", tags=["blobs"], responses=_errors(400, 401, 404))
    def blob_head(sha256: str = Depends(digest_param), who=Depends(reader)):
        """Is this blob here? 200 with its Content-Length, or 404."""
        size = blobs.size(sha256)
        if size is None:
            raise ApiError(404, f"blob {sha256}: not on this store")
        return Response(headers={"Content-Length": str(size), "Accept-Ranges": "bytes", "ETag": f'"{sha256}"'})

    @app.get("/api/blobs/{sha256}", tags=["blobs"], responses={206: {"description": "a byte range"},
                                                               **_errors(400, 401, 404, 416)})
    def blob_get(sha256: str = Depends(digest_param), who=Depends(reader), range: str | None = Header(None)):
        """A blob's bytes; `Range: bytes=START-[END]` (or `bytes=-N`) for part of it, to resume a download."""
        size = blobs.size(sha256)
        if size is None:
            raise ApiError(404, f"blob {sha256}: not on this store")
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, "
                   "immutable"}
        span = _byte_range(range, size)
        if span is None:
            headers["Content-Length"] = str(size)
            return StreamingResponse(blobs.read(sha256), 200, headers, "application/octet-stream")
        start, stop = span
        headers["Content-Length"] = str(stop - start)
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return StreamingResponse(blobs.read(sha256, start, stop), 206, headers, "application/octet-stream")

    @app.put("/api/blobs/{sha256}", tags=["blobs"], status_code=201, response_model=BlobStored,
             responses={200: {"model": BlobStored, "description": "already here"}, **_errors(400, 401, 411, 413)},
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {}}}})
    async def blob_put(request: Request, sha256: str = Depends(digest_param), who=Depends(writer)):
        """Upload a blob under its sha256; the bytes are hashed as they arrive into a temporary object and moved
        into place only if they match. Uploading a blob that is already here is harmless (200)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_blob_bytes:
            raise ApiError(413, f"blob {sha256}: {length} bytes is over this server's limit of "
                                f"{settings.max_blob_bytes} bytes")
        w = await run_in_threadpool(blobs.writer, sha256, settings.max_blob_bytes)
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= 1 << 20:
                    await run_in_threadpool(w.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await run_in_threadpool(w.write, bytes(buffer))
            created = await run_in_threadpool(w.commit)
        except BaseException:
            await run_in_threadpool(w.abort)
            raise
        return JSONResponse(BlobStored(sha256=sha256, size=w.size, created=created).model_dump(),
                            201 if created else 200)

    # packages
    @app.put("/api/packages/{org}/{name}/{version}", tags=["packages"], status_code=201, response_model=Published,
             responses={200: {"model": Published, "description": "the same content was already published"},
                        **_errors(400, 401, 403, 409, 413, 422)},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/PackageManifest"}}}}})
    async def publish(request: Request, org: str, name: str, version: str, who=Depends(writer)):
        """Publish a version: its manifest, once every blob it lists is here with the right size. A published
        version never changes: the same content again is 200 (idempotent), different content 409."""
        ref = ref_param(org, name, version)
        if org not in who[1]:
            raise ApiError(403, f"{ref}: this token may publish only under {', '.join(who[1])}, not {org}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_manifest_bytes:
                raise ApiError(413, f"{ref}: the manifest is over this server's limit of "
                                    f"{settings.max_manifest_bytes} bytes")
        return await run_in_threadpool(_publish, ref, bytes(body), who[0])

    def _publish(ref: names.PackageRef, body: bytes, token_id: int | None):
        try:
            manifest = PackageManifest.model_validate_json(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise ApiError(422, f"{ref}: invalid manifest: field {where}: {first['msg']} "
                                f"({e.error_count()} problem(s))") from None
        if manifest.name != ref.repo or manifest.version != ref.version:
            raise ApiError(400, f"{ref}: the manifest is for {manifest.ref}; publish it at its own name")
        paths = [f.path for f in manifest.files]
        if len(set(paths)) != len(paths) or VECTOR_MANIFEST not in paths:
            raise ApiError(422, f"{ref}: the manifest's files must be distinct and include {VECTOR_MANIFEST}")
        if manifest.size != sum(f.size for f in manifest.files):
            raise ApiError(422, f"{ref}: the manifest's size {manifest.size} is not the sum of its files' sizes")
        _check_blobs(ref, manifest)  # early, for a clear error without taking the store lock
        _check_vector_manifest(ref, manifest)
        stored = manifest.model_dump_json()  # normalised: defaults filled in, so equal content compares equal
        result = db.publish(json.loads(stored), stored, token_id, check=lambda: _check_blobs(ref, manifest))
        if result.status == "conflict":
            raise ApiError(409, f"{ref}: this version is already published with other content, and published "
                                "versions never change; publish a new version")
        out = Published(ref=str(ref), status=result.status, published=_iso(result.version.published))
        return JSONResponse(out.model_dump(), 201 if result.status == "created" else 200)

    def _check_blobs(ref, manifest: PackageManifest) -> None:
        for f in manifest.files:
            have = blobs.size(f.sha256)
            if have is None:
                raise ApiError(400, f"{ref}: blob {f.sha256} ({f.path}) is not on this store; upload it first "
                                    f"(PUT /api/blobs/{f.sha256}); nothing was published")
            if have != f.size:
                raise ApiError(400, f"{ref}: blob {f.sha256} ({f.path}) has {have} bytes, the manifest says "
                                    f"{f.size}; nothing was published")

    def _check_vector_manifest(ref, manifest: PackageManifest) -> None:
        """The vector's own taskvec.json must name the base the package manifest names (search by base trusts it)."""
        entry = next(f for f in manifest.files if f.path == VECTOR_MANIFEST)
        if entry.size > settings.max_vector_manifest_bytes:
            raise ApiError(413, f"{ref}: its {VECTOR_MANIFEST} is over {settings.max_vector_manifest_bytes} bytes")
        try:
            vm = json.loads(b"".join(blobs.read(entry.sha256)))
            got = (vm.get("base") or {}).get("fingerprint")
        except (ValueError, AttributeError):
            raise ApiError(422, f"{ref}: its {VECTOR_MANIFEST} is not a task-vector manifest") from None
        if got != manifest.base.fingerprint:
            raise ApiError(422, f"{ref}: its {VECTOR_MANIFEST} records base {got}, the package manifest "
                                f"{manifest.base.fingerprint}; build the package again (taskvec push)")

    @app.get("/api/packages", tags=["packages"], response_model=SearchResult, responses=_errors(401, 422))
    def search(q: str | None = Query(None, max_length=200, description="words in the name, description or tags"),
               name: str | None = Query(None, max_length=130, description="part of org/name"),
               org: str | None = Query(None, max_length=64),
               tag: list[str] = Query([], max_length=20, description="every tag given"),
               base: str | None = Query(None, max_length=100, description="base fingerprint, taskvec-fp2:..."),
               architecture: str | None = Query(None, max_length=100, description="model_type or architecture"),
               limit: int = Query(50, ge=1, le=200), offset: int = Query(0, ge=0), who=Depends(reader)):
        """Published versions matching every filter given, newest first."""
        total, rows = db.search(q, name, org, tag, base, architecture, limit, offset)
        return {"total": total, "results": [r.summary() for r in rows]}

    @app.get("/api/packages/{org}/{name}", tags=["packages"], response_model=VersionList,
             responses=_errors(400, 401, 404))
    def versions(org: str, name: str, who=Depends(reader)):
        """The published versions of org/name, newest first."""
        ref = ref_param(org, name)
        rows = db.versions(ref.org, ref.name)
        if not rows:
            raise ApiError(404, f"{ref}: no such package on this store")
        return {"name": ref.repo, "versions": [r.summary() for r in rows]}

    @app.get("/api/packages/{org}/{name}/{version}", tags=["packages"], response_model=Shown,
             responses=_errors(400, 401, 404))
    def show(org: str, name: str, version: str, who=Depends(reader)):
        """One version: its manifest (files by sha256: download them from /api/blobs) and when it was published."""
        row = found(ref_param(org, name, version))
        return {"ref": row.ref, "published": _iso(row.published), "manifest": json.loads(row.manifest)}

    @app.get("/api/packages/{org}/{name}/{version}/manifest.json", tags=["packages"], responses=_errors(400, 401, 404))
    def manifest_json(org: str, name: str, version: str, who=Depends(reader)):
        """The manifest as published, byte for byte."""
        row = found(ref_param(org, name, version))
        return Response(row.manifest, media_type="application/json")

    add_catalog(app, db, blobs, settings)
    return app


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) of a single-range ``Range`` header; None for the whole blob (no header, several ranges)."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ApiError(416, f"Range {header[:80]!r}: use bytes=START-END, bytes=START- or bytes=-N",
                       {"Content-Range": f"bytes */{size}"})
    if m.group(1):
        start = int(m.group(1))
        stop = min(int(m.group(2)) + 1, size) if m.group(2) else size
    else:
        start, stop = max(size - int(m.group(2)), 0), size
    if start >= size or stop <= start:
        raise ApiError(416, f"Range {header[:80]!r}: the blob has {size} bytes", {"Content-Range": f"bytes */{size}"})
    return start, stop
