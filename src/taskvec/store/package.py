"""A task-vector package: a manifest plus content-addressed blobs, written from and read back into a stored task
vector folder.

    PACKAGE/manifest.json              PackageManifest (below): identity, base, architecture, tensors, files
    PACKAGE/blobs/sha256/<64 hex>      each file of the task-vector folder, named by the sha256 of its bytes

The blob layout is a content-addressed store's (identical files are one blob), so a registry can take blobs as
they are. Only safetensors, JSON and Markdown files travel -- never a pickle -- and reading a package checks every
name, size and digest before the folder appears (atomically) at its destination.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import TaskvecError
from ..text_files import write_atomic
from . import names

FORMAT = "taskvec/package"
MANIFEST = "manifest.json"
BLOBS = Path("blobs") / "sha256"
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SUFFIXES = (".safetensors", ".json", ".md")
_CHUNK = 4 * 2**20


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # a plain file name in the task-vector folder
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _plain(cls, v: str) -> str:
        return _as_value_error(check_file_name, v)


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    dtype: str  # as stored (float32, bfloat16); decoded tensors are float32
    encoding: str = "dense"  # dense, sparse, lowrank, sign


class BaseInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fingerprint: str = Field(pattern=r"^taskvec-fp[12]:[0-9a-f]+$")
    id_hint: str | None = None  # where to get it, e.g. sentence-transformers/all-MiniLM-L6-v2


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_type: str | None = None
    architectures: list[str] = []
    tensors: dict[str, list[int]] = {}  # the base's tensor names and shapes


class PackageManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["taskvec/package"] = FORMAT
    format_version: Literal[1] = 1
    name: str  # org/name
    version: str
    base: BaseInfo
    architecture: Architecture
    tensors: list[TensorEntry]
    dtype: str
    compression: str = "none"
    size: int = Field(ge=0)  # bytes of all blobs
    license: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=10_000)
    tags: list[str] = Field([], max_length=50)
    metrics: dict[str, float] | None = None
    publisher: str = Field(min_length=1, max_length=200)
    created: datetime
    files: list[FileEntry]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        org, slash, name = v.partition("/")
        if not slash:
            raise ValueError("must be org/name")
        _as_value_error(names.check_part, org, "org"), _as_value_error(names.check_part, name, "name")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return _as_value_error(names.check_version, v)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,49}$", tag):
                raise ValueError(f"tag {tag!r}: 1-50 letters, digits, '.', '_', ':', '-'")
        return v

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _as_value_error(check, *args):
    """pydantic reports a validator's ValueError with the field's location; a TaskvecError would escape it."""
    try:
        return check(*args)
    except TaskvecError as e:
        raise ValueError(str(e)) from None


def check_file_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE.match(name) or ".." in name or not name.endswith(_SUFFIXES):
        raise TaskvecError(f"file {name!r}: a package holds only plain file names (letters, digits, '.', '_', '-') "
                           f"ending in {', '.join(_SUFFIXES)}: safetensors, JSON and Markdown, never pickles")
    return name


def blob_path(package: Path, digest: str) -> Path:
    return Path(package) / BLOBS / digest


def write_package(vector: str | Path, out: str | Path, ref: str, *, license: str, publisher: str,
                  description: str = "", tags: list[str] | tuple[str, ...] = (), metrics: dict | None = None,
                  base_id: str | None = None, force: bool = False) -> PackageManifest:
    """Package a stored task-vector folder (``taskvec extract``) as ``ref`` = ``org/name@version``."""
    from ..io.writer import atomic_folder

    files = vector_files(vector)
    with atomic_folder(Path(out), force) as tmp:
        entries = [FileEntry(path=p.name, **_copy_hashed(p, tmp / BLOBS, None)) for p in files]
        manifest = describe_vector(vector, ref, entries, license=license, publisher=publisher,
                                   description=description, tags=tags, metrics=metrics, base_id=base_id)
        write_atomic(tmp / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def make_manifest(vector: str | Path, ref: str, *, license: str, publisher: str, description: str = "",
                  tags: list[str] | tuple[str, ...] = (), metrics: dict | None = None,
                  base_id: str | None = None) -> tuple[PackageManifest, dict[str, Path]]:
    """The manifest ``write_package`` would write, with the files hashed where they are (nothing copied), and
    digest -> file: what ``taskvec push`` uploads."""
    files = vector_files(vector)
    entries = [FileEntry(path=p.name, **hash_file(p)) for p in files]
    manifest = describe_vector(vector, ref, entries, license=license, publisher=publisher, description=description,
                               tags=tags, metrics=metrics, base_id=base_id)
    return manifest, {e.sha256: Path(vector) / e.path for e in entries}


def vector_files(vector: str | Path) -> list[Path]:
    """The plain files of a stored task-vector folder, each with a name a package may hold."""
    from ..inputs import MANIFEST as VECTOR_MANIFEST

    vector = Path(vector)
    if not (vector / VECTOR_MANIFEST).is_file():
        raise TaskvecError(f"{vector}: not a task vector folder (no {VECTOR_MANIFEST}); extract one with "
                           "`taskvec extract`")
    files = sorted(p for p in vector.iterdir() if not p.name.startswith("."))
    for p in files:
        if p.is_symlink() or not p.is_file():
            raise TaskvecError(f"{p}: a package holds only the plain files of a task-vector folder; remove it")
        check_file_name(p.name)
    return files


def describe_vector(vector: str | Path, ref: str, entries: list[FileEntry], *, license: str, publisher: str,
                    description: str = "", tags: list[str] | tuple[str, ...] = (), metrics: dict | None = None,
                    base_id: str | None = None) -> PackageManifest:
    """The manifest of a task-vector folder whose files are ``entries``; checks the folder as a merge would."""
    from ..inputs import MANIFEST as VECTOR_MANIFEST
    from ..inputs import StoredVectorInput

    pref = names.parse_ref(ref)
    vector = Path(vector)
    inp = StoredVectorInput(vector)  # checks the manifest, the headers and any encodings
    try:
        vm = inp.manifest
        base = vm.get("base") or {}
        if not base.get("fingerprint"):
            raise TaskvecError(f"{vector / VECTOR_MANIFEST}: records no base fingerprint (its terms came from "
                               "different bases?); a package must name one base -- extract it from one base")
        encodings = vm.get("encodings") or {}
        tensors = [TensorEntry(name=n, shape=list(inp.info(n).shape), dtype=vm.get("dtype", "float32"),
                               encoding=encodings.get(n, {}).get("codec", "dense")) for n in inp.names()]
    finally:
        inp.close()
    try:
        return PackageManifest(
            name=pref.repo, version=pref.version,
            base=BaseInfo(fingerprint=base["fingerprint"], id_hint=base_id),
            architecture=Architecture(model_type=base.get("model_type"), architectures=base.get("architectures", []),
                                      tensors={n: r["shape"] for n, r in (base.get("tensors") or {}).items()}),
            tensors=tensors, dtype=vm.get("dtype", "float32"), compression=vm.get("compression", "none"),
            size=sum(e.size for e in entries), license=license, description=description, tags=list(tags),
            metrics=metrics, publisher=publisher, created=datetime.now(timezone.utc), files=entries,
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise TaskvecError(f"package {ref}: field {where}: {first['msg']}") from e


def metrics_from_file(path: str | Path) -> dict[str, float]:
    """A package's metrics from a JSON file: what ``taskvec eval --json`` wrote (each task's score as
    ``task/metric``, its normalized score as ``task/normalized``), or a plain object of name -> number."""
    import json
    import math

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TaskvecError(f"{path}: cannot read metrics ({e}); give a `taskvec eval --json` file or a JSON object "
                           "of name -> number") from e
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        out = {}
        for r in data["results"]:
            if not isinstance(r, dict) or not {"name", "metric", "score"} <= r.keys():
                raise TaskvecError(f"{path}: results[] entries need name, metric and score, as `taskvec eval "
                                   "--json` writes them")
            out[f"{r['name']}/{r['metric']}"] = r["score"]
            if r.get("normalized") is not None:
                out[f"{r['name']}/normalized"] = r["normalized"]
    elif isinstance(data, dict):
        out = data
    else:
        raise TaskvecError(f"{path}: metrics must be a JSON object (name -> number) or `taskvec eval --json` output")
    bad = [k for k, v in out.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise TaskvecError(f"{path}: metric {bad[0]!r} is not a finite number")
    return {str(k): float(v) for k, v in out.items()}


def load_manifest(package: str | Path) -> PackageManifest:
    path = Path(package) / MANIFEST
    try:
        return PackageManifest.model_validate_json(path.read_bytes())
    except OSError as e:
        raise TaskvecError(f"{path}: cannot read the package manifest ({e.strerror or e}); is this a package?") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise TaskvecError(f"{path}: invalid package manifest: field {where}: {first['msg']} "
                           f"({e.error_count()} problem(s)); the package is corrupt or from a newer taskvec") from e


def read_package(package: str | Path, out: str | Path, force: bool = False) -> Path:
    """Unpack a package into a task-vector folder that ``taskvec merge``/``apply`` accept; every blob's size and
    sha256 is checked while it is copied, and the folder appears only if all of them match."""
    package = Path(package)
    return unpack(load_manifest(package), package / BLOBS, out, force, label=str(package))


def unpack(manifest: PackageManifest, blobs: str | Path, out: str | Path, force: bool = False,
           label: str | None = None, link: bool = False) -> Path:
    """``read_package`` for a manifest whose blobs lie in ``blobs/<sha256>`` (a package's, or a download cache).

    ``link``: hard-link each blob (of the right size) instead of copying and hashing it again -- for blobs whose
    digest was checked as they were downloaded into a cache this process owns; falls back to a checked copy where
    the filesystem cannot link."""
    from ..inputs import MANIFEST as VECTOR_MANIFEST
    from ..inputs import StoredVectorInput
    from ..io.writer import atomic_folder

    blobs = Path(blobs)
    package = label or manifest.ref
    paths = [f.path for f in manifest.files]
    if len(set(paths)) != len(paths) or VECTOR_MANIFEST not in paths:
        raise TaskvecError(f"{package}: its manifest's files must be distinct and include {VECTOR_MANIFEST}")
    with atomic_folder(Path(out), force) as tmp:
        for f in manifest.files:
            if not (link and _link(blobs / f.sha256, tmp, f)):
                _copy_hashed(blobs / f.sha256, tmp, f)
        inp = StoredVectorInput(tmp, label=str(out))  # the manifest, headers and encodings, before it appears
        try:
            got = inp.manifest.get("base", {}).get("fingerprint")
            if got != manifest.base.fingerprint:
                raise TaskvecError(f"{package}: its task vector records base {got}, its manifest "
                                   f"{manifest.base.fingerprint}; the package is inconsistent -- publish it again")
            if sorted(inp.names()) != sorted(t.name for t in manifest.tensors):
                raise TaskvecError(f"{package}: its manifest's tensors differ from the task vector's; the package "
                                   "is inconsistent -- publish it again")
        finally:
            inp.close()
    return Path(out)


def _link(blob: Path, folder: Path, entry: FileEntry) -> bool:
    """Hard-link ``blob`` as ``folder/entry.path`` if it has the listed size; False where that cannot be done."""
    check_file_name(entry.path)
    try:
        if blob.stat().st_size != entry.size:
            return False
        os.link(blob, folder / entry.path)
    except OSError:
        return False
    return True


def hash_file(path: Path) -> dict:
    """{"sha256", "size"} of a file, read in blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as r:
        while chunk := r.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def _copy_hashed(src: Path, dest_dir: Path, expect: FileEntry | None) -> dict:
    """Copy ``src`` while hashing it: into ``dest_dir/<sha256>`` when packing (``expect`` None), into
    ``dest_dir/<expect.path>`` when unpacking, refusing a wrong size or digest."""
    if expect is not None:
        if src.is_symlink() or not src.is_file():
            raise TaskvecError(f"{src}: the blob of {expect.path} is missing (or not a plain file); the package is "
                               "incomplete -- download it again")
        if src.stat().st_size != expect.size:
            raise TaskvecError(f"{src}: the blob of {expect.path} has {src.stat().st_size} bytes, the manifest says "
                               f"{expect.size}; the package is corrupt -- download it again")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".incoming-{os.getpid()}-{src.name[:16]}"
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as r, open(tmp, "wb") as w:
        while chunk := r.read(_CHUNK):
            h.update(chunk)
            w.write(chunk)
            size += len(chunk)
        w.flush()
        os.fsync(w.fileno())
    digest = h.hexdigest()
    if expect is not None and digest != expect.sha256:
        tmp.unlink()
        raise TaskvecError(f"{src}: the blob of {expect.path} has sha256 {digest}, the manifest says "
                           f"{expect.sha256}; the package is corrupt or was tampered with -- download it again")
    final = dest_dir / (digest if expect is None else expect.path)
    if final.exists():
        tmp.unlink()  # the same content again: one blob
    else:
        shutil.move(tmp, final)
    return {"sha256": digest, "size": size}
