"""The web catalog: server-rendered pages over the same database as the API, for people rather than clients.

    GET  /                              search (free text, base fingerprint, tags, architecture) and results
    GET  /v/{org}/{name}                a package: its versions
    GET  /v/{org}/{name}/{version}      a version: description, card (README.md), base, size, files, metrics, and
                                        the `taskvec equip` command with a copy button
    GET  /o/{org}                       an organisation: the newest version of each of its packages
    GET  /login, POST /login, /logout   a private store's pages need a token: kept in an HttpOnly cookie
    GET  /static/catalog.{css,js}       a little CSS, and the copy button's few lines of script

Jinja2 templates (package data in ``templates/``) with autoescaping on: every value a publisher wrote is text,
never markup. Pages send a strict Content-Security-Policy (scripts and styles from this server only). No torch.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, StrictUndefined

from .. import __version__
from ..errors import TaskvecError
from . import auth, names
from .blobs import BlobStore
from .db import Database, _iso
from .settings import ServerSettings

PAGE = 25
CARD_BYTES = 256_000
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_STATIC = {"catalog.css": "text/css; charset=utf-8", "catalog.js": "text/javascript; charset=utf-8"}
_HEX = re.compile(r"^[0-9a-f]{64}$")
_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9._/@:+-]{0,199}$")  # nothing a shell reads specially, no option


def human_size(n: int) -> str:
    """Bytes for people: 1.5 MB (powers of 1000, as download tools print)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def equip_command(manifest: dict) -> str:
    """The one line that equips this version: the base by the publisher's hint when it looks like a Hub id or a
    path, else BASE -- a hint is free text, and a command people paste into a shell must not carry surprises."""
    name = manifest["name"].split("/", 1)[1]
    hint = manifest["base"].get("id_hint") or ""
    base = hint if _PLAIN.match(hint) else "BASE"
    return f"taskvec equip {base} {manifest['name']}@{manifest['version']} --out {name}-equipped"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("taskvec.store", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["size"] = human_size
    env.filters["iso_day"] = lambda t: str(t)[:16].replace("T", " ")
    return env


def _safe_next(target: str | None) -> str:
    """Only a path on this server (no //host or scheme): a login form cannot redirect anywhere else."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def read_card(blobs: BlobStore, manifest: dict) -> str | None:
    """The vector's README.md (its model card) as text, when it has one of a readable size; shown escaped."""
    entry = next((f for f in manifest["files"] if f["path"].lower() == "readme.md"), None)
    if entry is None or entry["size"] > CARD_BYTES:
        return None
    try:
        return b"".join(blobs.read(entry["sha256"])).decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def add_catalog(app: FastAPI, db: Database, blobs: BlobStore, settings: ServerSettings) -> None:
    templates = Jinja2Templates(env=_environment())
    static = {n: (files("taskvec.store") / "static" / n).read_bytes() for n in _STATIC}

    def render(request: Request, template: str, code: int = 200, **context) -> HTMLResponse:
        context.update(private=settings.private, version=__version__, signed_in=signed_in(request))
        return templates.TemplateResponse(request, template, context, status_code=code, headers=HEADERS)

    def token_of(request: Request) -> str | None:
        return auth.bearer(request.headers.get("authorization")) or request.cookies.get(auth.COOKIE)

    def signed_in(request: Request) -> bool:
        token = token_of(request)
        return token is not None and db.token_orgs(auth.digest(token)) is not None

    def gate(request: Request) -> HTMLResponse | None:
        """On a private store, the login page (401) for a request without a live token; else None."""
        if settings.private and not signed_in(request):
            return render(request, "login.html", 401, next=request.url.path + (
                f"?{request.url.query}" if request.url.query else ""), error=None)
        return None

    def problem(request: Request, status: int, message: str) -> HTMLResponse:
        return render(request, "error.html", status, status=status, message=message)

    def ref_of(org: str, name: str | None = None, version: str | None = None) -> names.PackageRef:
        return names.PackageRef(names.check_part(org, "org"), names.check_part(name, "name") if name else "",
                                names.check_version(version) if version is not None else None)

    @app.get("/static/{file}", include_in_schema=False)
    def asset(file: str):
        if file not in static:
            return Response("not found", 404, media_type="text/plain")
        return Response(static[file], media_type=_STATIC[file], headers={"Cache-Control": "public, max-age=3600",
                                                                         "X-Content-Type-Options": "nosniff"})

    @app.get("/", include_in_schema=False)
    def index(request: Request, q: str = "", base: str = "", tags: str = "", architecture: str = "",
              page: str = "1"):
        if (stop := gate(request)) is not None:
            return stop
        q, base, architecture = q.strip()[:200], base.strip()[:100], architecture.strip()[:100]
        tag_list = [t for t in re.split(r"[\s,]+", tags.strip()) if t][:20]
        if _HEX.match(base):
            base = "taskvec-fp2:" + base  # the digits alone, pasted from `taskvec fingerprint`
        number = max(int(page), 1) if page.isdigit() else 1
        total, rows = db.search(q or None, None, None, tag_list, base or None, architecture or None, PAGE,
                                (number - 1) * PAGE)
        results = [r.summary() for r in rows]
        filtered = bool(q or base or tag_list or architecture)
        params = {"q": q, "base": base, "tags": " ".join(tag_list), "architecture": architecture}
        more = "&".join(f"{k}={quote(v)}" for k, v in params.items() if v)
        return render(request, "index.html", q=q, base=base, tags=" ".join(tag_list), architecture=architecture,
                      total=total, results=results, filtered=filtered, page=number,
                      pages=max((total + PAGE - 1) // PAGE, 1), query=more)

    @app.get("/o/{org}", include_in_schema=False)
    def org_page(request: Request, org: str):
        if (stop := gate(request)) is not None:
            return stop
        try:
            ref_of(org, "x")
        except TaskvecError as e:
            return problem(request, 400, str(e))
        rows = db.latest(org)
        if not rows:
            return problem(request, 404, f"{org}: no organisation with published task vectors on this store")
        return render(request, "org.html", org=org, packages=[r.summary() for r in rows])

    @app.get("/v/{org}/{name}", include_in_schema=False)
    def package_page(request: Request, org: str, name: str):
        if (stop := gate(request)) is not None:
            return stop
        try:
            ref = ref_of(org, name)
        except TaskvecError as e:
            return problem(request, 400, str(e))
        rows = db.versions(ref.org, ref.name)
        if not rows:
            return problem(request, 404, f"{ref}: no such task vector on this store")
        return render(request, "package.html", org=org, name=name, versions=[r.summary() for r in rows],
                      latest=json.loads(rows[0].manifest))

    @app.get("/v/{org}/{name}/{version}", include_in_schema=False)
    def version_page(request: Request, org: str, name: str, version: str):
        if (stop := gate(request)) is not None:
            return stop
        try:
            ref = ref_of(org, name, version)
        except TaskvecError as e:
            return problem(request, 400, str(e))
        row = db.get(ref.org, ref.name, ref.version)
        if row is None:
            return problem(request, 404, f"{ref}: no such version on this store")
        manifest = json.loads(row.manifest)
        return render(request, "version.html", org=org, name=name, m=manifest, published=_iso(row.published),
                      equip=equip_command(manifest), card=read_card(blobs, manifest),
                      store=str(request.base_url).rstrip("/"),
                      others=[v.version for v in db.versions(ref.org, ref.name)])

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/"):
        return render(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        """A form post (no multipart library needed): a live token sets the cookie and goes on to ``next``."""
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        if not token or db.token_orgs(auth.digest(token)) is None:
            return render(request, "login.html", 401, next=target,
                          error="unknown or revoked token; `taskvec store token create` on the server makes one")
        response = RedirectResponse(target, 303, headers=HEADERS)
        response.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout():
        response = RedirectResponse("/", 303, headers=HEADERS)
        response.delete_cookie(auth.COOKIE, path="/")
        return response
