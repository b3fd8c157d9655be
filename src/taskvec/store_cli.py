"""The store's commands: ``taskvec store serve|token|login`` and ``taskvec push|pull|search|show|equip``.

A thin layer over ``taskvec.store`` (server, client, equip); registered on ``taskvec.cli.app`` when this module is
imported (``taskvec.cli`` imports it last). Like the rest of the CLI, nothing heavy loads before a command runs:
``--help`` imports neither torch nor the server's libraries.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .cli import (Command, Commands, ComputeDtype, Device, Force, ForceBase, Quiet, Seed, ShardSize, Workers,
                  _options, _summary, app, err, friendly, parse_scaled)
from .errors import TaskvecError

StoreUrl = Annotated[Optional[str], typer.Option("--store", help="store URL (else $TASKVEC_STORE, else the login)")]
Token = Annotated[Optional[str], typer.Option("--token", help="access token (else $TASKVEC_TOKEN, else the login)")]
Root = Annotated[Optional[Path], typer.Option("--root", help="store folder: store.db (SQLite) and blobs/")]
DbUrl = Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy database URL, e.g. postgresql://...")]
BlobsUrl = Annotated[Optional[str], typer.Option("--blobs", help="blob store: a folder or an fsspec URL (s3://...)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

store_app = typer.Typer(name="store", cls=Commands, no_args_is_help=True, add_completion=False,
                        help="Run a task-vector store server, manage its tokens, log in to one.")
token_app = typer.Typer(name="token", cls=Commands, no_args_is_help=True, add_completion=False,
                        help="Write tokens of a store (run on the server, against its database).")
store_app.add_typer(token_app, name="token")
app.add_typer(store_app, name="store")


def _client(store, token, quiet=True):
    from .store.client import StoreClient, resolve

    url, token = resolve(store, token)
    return StoreClient(url, token, progress=_progress(quiet))


def _progress(quiet: bool):
    from .store.client import Progress

    if quiet:
        return Progress()
    from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TextColumn, TransferSpeedColumn

    state = {}

    def start(label, total):
        bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True)
        bar.start()
        state["bar"], state["task"] = bar, bar.add_task(label, total=total)

    def advance(n):
        if "bar" in state:
            state["bar"].advance(state["task"], n)

    def stop():
        bar = state.pop("bar", None)
        if bar is not None:
            bar.stop()

    return Progress(start, advance, stop)


def _settings(root, db, blobs, private=False, max_blob_size=None, max_manifest_size=None):
    from .store.settings import parse_size, resolve

    limits = {"private": private}
    if max_blob_size is not None:
        limits["max_blob_bytes"] = parse_size(max_blob_size, "--max-blob-size")
    if max_manifest_size is not None:
        limits["max_manifest_bytes"] = parse_size(max_manifest_size, "--max-manifest-size")
    return resolve(root, db, blobs, **limits)


@store_app.command("serve", cls=Command)
@friendly
def serve(
    root: Root = None, db: DbUrl = None, blobs: BlobsUrl = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8765,
    private: Annotated[bool, typer.Option("--private", help="reads need a token too")] = False,
    max_blob_size: Annotated[Optional[str], typer.Option("--max-blob-size", help="largest blob accepted "
                                                         "(default 64GiB)")] = None,
    max_manifest_size: Annotated[Optional[str], typer.Option("--max-manifest-size", help="largest manifest "
                                                             "accepted (default 8MiB)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's: warning, info, debug")] = "info",
):
    """Serve a store: the web catalog at /, its JSON API at /api (documented at /docs), metadata in SQL, blobs on a
    filesystem."""
    settings = _settings(root, db, blobs, private, max_blob_size, max_manifest_size)
    try:
        import uvicorn

        from .store.server import create_app
    except ImportError as e:
        raise TaskvecError(f"the store server needs its extra: pip install 'taskvec[store]' ({e.name} is missing)")
    application = create_app(settings)
    err.print(f"taskvec store: http://{host}:{port} (catalog at /, API docs at /docs); database "
              f"{_hide(settings.db_url)}, blobs "
              f"{settings.blobs_url}{', private' if private else ''}", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level=log_level)


def _hide(url: str) -> str:
    """A database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


@token_app.command("create", cls=Command)
@friendly
def token_create(
    org: Annotated[list[str], typer.Option("--org", help="an org the token may publish under (repeat for more)")],
    root: Root = None, db: DbUrl = None,
    note: Annotated[str, typer.Option("--note", help="who or what the token is for")] = "",
):
    """Create a write token; it is printed once, as the last line (only its sha256 is stored)."""
    from .store.auth import create_token
    from .store.db import Database
    from .store.settings import resolve_db

    database = Database(resolve_db(root, db))
    try:
        token_id, secret = create_token(database, org, note)
    finally:
        database.close()
    print(f"token {token_id} may publish under: {', '.join(sorted(set(org)))}. It is shown only now; keep it secret:")
    print(secret)


@token_app.command("list", cls=Command)
@friendly
def token_list(root: Root = None, db: DbUrl = None):
    """List the tokens (id, first characters, orgs, created, revoked); never the secrets."""
    from .store.db import Database
    from .store.settings import resolve_db

    database = Database(resolve_db(root, db))
    try:
        for t in database.list_tokens():
            state = "revoked" if t["revoked"] else "live"
            print("\t".join([str(t["id"]), t["hint"] + "...", ",".join(t["orgs"]), t["created"], state, t["note"]]))
    finally:
        database.close()


@token_app.command("revoke", cls=Command)
@friendly
def token_revoke(token_id: Annotated[int, typer.Argument(help="the token's id (taskvec store token list)")],
                 root: Root = None, db: DbUrl = None):
    """Revoke a token: it can no longer publish (or read a private store)."""
    from .store.db import Database
    from .store.settings import resolve_db

    database = Database(resolve_db(root, db))
    try:
        if not database.revoke_token(token_id):
            raise TaskvecError(f"no token {token_id}; `taskvec store token list` shows them")
    finally:
        database.close()
    print(f"revoked token {token_id}")


@store_app.command("gc", cls=Command)
@friendly
def gc(
    root: Root = None, db: DbUrl = None, blobs: BlobsUrl = None,
    grace: Annotated[str, typer.Option("--grace", help="keep orphan blobs younger than this (a push in progress "
                                       "uploads its blobs before its manifest): 24h, 30m, 7d, 0")] = "24h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would be removed")] = False,
):
    """Remove the blobs no published version lists (left by abandoned pushes), and stale uploads; run it on the
    server side, any time: publishes wait for it, never lose a blob to it."""
    from .store.blobs import BlobStore
    from .store.db import Database
    from .store.gc import collect_garbage
    from .store.settings import parse_duration

    seconds = parse_duration(grace, "--grace")
    settings = _settings(root, db, blobs)
    database = Database(settings.db_url)
    try:
        report = collect_garbage(database, BlobStore(settings.blobs_url), seconds, dry_run)
    finally:
        database.close()
    verb = "would remove" if dry_run else "removed"
    print(f"{verb} {len(report.removed)} orphan blob(s), {report.removed_bytes / 1e6:,.2f} MB"
          + ("" if dry_run else f", and {report.incoming_removed} stale upload(s)")
          + f"; kept {report.referenced} published blob(s), {report.young} orphan(s) younger than {grace} "
          f"({report.young_bytes / 1e6:,.2f} MB)" + (f", {report.undated} undated" if report.undated else ""))


@store_app.command("login", cls=Command)
@friendly
def login(url: Annotated[str, typer.Argument(help="the store's URL, e.g. http://127.0.0.1:8765")], token: Token = None):
    """Check the store (and token) and save them as the default (config file mode 0600)."""
    import os

    from .store.client import StoreClient, check_url, save_login

    url = check_url(url)
    token = token or os.environ.get("TASKVEC_TOKEN")
    with StoreClient(url, token) as client:
        if token:
            orgs = client.whoami()
            what = f"with a token that publishes under {', '.join(orgs)}"
        else:
            client.health()
            what = "without a token (reads only)"
    path = save_login(url, token)
    print(f"logged in to {url} {what}; saved in {path}")


@app.command(cls=Command)
@friendly
def push(
    vector: Annotated[Path, typer.Argument(help="stored task-vector folder (taskvec extract; compressed or not)")],
    ref: Annotated[str, typer.Argument(help="org/name@version to publish it as")],
    description: Annotated[str, typer.Option("--description", help="what it does")] = "",
    tags: Annotated[Optional[list[str]], typer.Option("--tags", "--tag",
                                                      help="tags (repeat, or comma-separated)")] = None,
    license: Annotated[str, typer.Option("--license", help="its license, e.g. apache-2.0")] = "unknown",
    base_id: Annotated[Optional[str], typer.Option("--base-id", help="where its base can be had, "
                                                   "e.g. a Hub id")] = None,
    publisher: Annotated[Optional[str], typer.Option("--publisher", help="who publishes it (default: the org)")] = None,
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="JSON file of its scores: `taskvec eval "
                                                    "--json` output, or an object of name -> number")] = None,
    store: StoreUrl = None, token: Token = None, quiet: Quiet = False,
):
    """Publish a stored task vector: uploads only the blobs the store lacks, then the manifest."""
    from .store import names
    from .store.package import metrics_from_file

    names.parse_ref(ref)
    tag_list = [t.strip() for item in tags or [] for t in item.split(",") if t.strip()]
    metric_values = metrics_from_file(metrics) if metrics is not None else None
    with _client(store, token, quiet) as client:
        r = client.push(vector, ref, license=license, publisher=publisher, description=description, tags=tag_list,
                        base_id=base_id, metrics=metric_values)
    if r.status == "exists":
        print(f"{r.ref}: already published with this content; nothing changed")
    else:
        print(f"published {r.ref}: {r.uploaded} blob(s) uploaded ({r.uploaded_bytes / 1e6:,.2f} MB), "
              f"{r.present} already on the store")


@app.command(cls=Command)
@friendly
def pull(
    ref: Annotated[str, typer.Argument(help="org/name@version")],
    out: Annotated[Path, typer.Option("--out", "-o", help="task-vector folder to write")],
    force: Force = False, store: StoreUrl = None, token: Token = None, quiet: Quiet = False,
):
    """Download a task vector (cached by digest, resumable) as a folder `taskvec apply`/`merge` accept."""
    from .io.writer import prepare_target
    from .store import names

    names.parse_ref(ref)
    prepare_target(out, force)
    with _client(store, token, quiet) as client:
        manifest, path = client.pull(ref, out, force)
    print(f"wrote {path}: {manifest.ref}, {len(manifest.files)} files, {manifest.size / 1e6:,.2f} MB, digests verified")


@app.command(cls=Command)
@friendly
def search(
    query: Annotated[Optional[str], typer.Argument(help="words in the name, description or tags")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="only vectors of this base: a model (fingerprinted "
                                                "here, streaming) or a taskvec-fp2:... fingerprint")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="only vectors with this tag (repeat: all)")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="part of org/name")] = None,
    architecture: Annotated[Optional[str], typer.Option("--architecture", help="model_type or architecture")] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many")] = 50,
    as_json: AsJson = False, store: StoreUrl = None, token: Token = None,
):
    """Find task vectors on a store; with --base MODEL only those whose base fingerprint is MODEL's."""
    import re

    fingerprint = None
    if base is not None:
        if re.match(r"^taskvec-fp[12]:[0-9a-f]+$", base):
            fingerprint = base
        else:
            from .store.fingerprint import fingerprint_model

            fingerprint = fingerprint_model(base).root
            err.print(f"base {base}: {fingerprint}", highlight=False)
    with _client(store, token) as client:
        found = client.search(query, name=name, tags=tag or [], base=fingerprint, architecture=architecture,
                              limit=limit)
    if as_json:
        import json

        print(json.dumps(found, indent=2))
        return
    if not found["results"]:
        err.print("no task vectors match", highlight=False)
        return
    from rich.table import Table

    table = Table(title=f"{found['total']} task vector(s)" + (f", first {limit}" if found["total"] > limit else ""),
                  title_justify="left")
    for col in ("package", "base", "compression", "size", "tags", "description"):
        table.add_column(col, overflow="fold", no_wrap=col in ("size",))
    for r in found["results"]:
        table.add_row(r["ref"], r["base"].get("id_hint") or r["base"]["fingerprint"][:24] + "...", r["compression"],
                      f"{r['size'] / 1e6:,.2f} MB", ", ".join(r["tags"]), r["description"][:80])
    Console(width=160).print(table)


@app.command(cls=Command)
@friendly
def show(ref: Annotated[str, typer.Argument(help="org/name@version")], as_json: AsJson = False,
         store: StoreUrl = None, token: Token = None):
    """Describe a published task vector: base, architecture, compression, files, metadata."""
    with _client(store, token) as client:
        shown = client.show(ref)
    m = shown["manifest"]
    if as_json:
        import json

        print(json.dumps(shown, indent=2))
        return
    arch = m["architecture"]
    lines = [
        f"{shown['ref']}  (published {shown['published']})",
        f"description: {m['description'] or '-'}",
        f"base: {m['base']['fingerprint']}" + (f" ({m['base']['id_hint']})" if m['base'].get('id_hint') else ""),
        f"architecture: {arch.get('model_type') or '-'} {', '.join(arch.get('architectures') or [])}".rstrip(),
        f"tensors: {len(m['tensors'])}, dtype {m['dtype']}, compression {m['compression']}",
        f"size: {m['size'] / 1e6:,.2f} MB in {len(m['files'])} files",
        f"license: {m['license']}; publisher: {m['publisher']}; tags: {', '.join(m['tags']) or '-'}",
    ]
    if m.get("metrics"):
        lines.append("metrics: " + ", ".join(f"{k}={v:g}" for k, v in m["metrics"].items()))
    lines += [f"  {f['path']}  {f['size']:,} bytes  sha256:{f['sha256']}" for f in m["files"]]
    print("\n".join(lines))


@app.command(cls=Command)
@friendly
def equip(
    base: Annotated[str, typer.Argument(help="your base model: folder, file or cached model id")],
    vectors: Annotated[list[str], typer.Argument(help="published task vectors, each org/name@version[:WEIGHT]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output model folder")],
    method: Annotated[str, typer.Option("--method", help="task_arithmetic, ties or dare_ties")] = "task_arithmetic",
    density: Annotated[Optional[float], typer.Option("--density", help="fraction of each vector kept "
                                                     "(ties, dare_ties)")] = None,
    lam: Annotated[Optional[float], typer.Option("--lambda", help="scale of the merged task vector (1.0)")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="divide by the weights' "
                                                      "sum (method's default)")] = None,
    out_dtype: Annotated[Optional[str], typer.Option("--out-dtype", help="dtype of the saved floats")] = None,
    shard_size: ShardSize = "5GB", workers: Workers = None, device: Device = "cpu",
    compute_dtype: ComputeDtype = "float32", force: Force = False, quiet: Quiet = False, seed: Seed = 0,
    force_base: ForceBase = False, store: StoreUrl = None, token: Token = None,
):
    """Pull task vectors (cached), check they belong to BASE, and merge them into it in one streaming pass."""
    from .store.equip import equip as run_equip

    pairs = [parse_scaled(v) for v in vectors]
    options = _options(shard_size, workers, device, compute_dtype, force, False, quiet, seed, force_base)
    params = {k: v for k, v in {"lambda": lam, "normalize": normalize}.items() if v is not None}
    model_params = {"density": density} if density is not None else {}
    with _client(store, token, quiet) as client:
        result = run_equip(base, pairs, out, client, method=method, parameters=params, model_parameters=model_params,
                           out_dtype=out_dtype, options=options)
    _summary(result, quiet)
