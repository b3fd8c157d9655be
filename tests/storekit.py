"""Helpers for the store's tests: a server in-process (FastAPI's TestClient), tiny task vectors, raw publishing."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import toy_tensors, write_model
from fastapi.testclient import TestClient

from taskvec import MergeOptions, TaskVector
from taskvec.store.auth import create_token
from taskvec.store.client import StoreClient
from taskvec.store.package import make_manifest
from taskvec.store.server import create_app
from taskvec.store.settings import ServerSettings, resolve

Q = MergeOptions(progress=False)
CONFIG = {"model_type": "toy", "architectures": ["ToyModel"]}


def family(folder: Path) -> Path:
    """A base model (seed 0) in ``folder/base``."""
    return write_model(folder / "base", toy_tensors(0), config=CONFIG)


def make_vector(folder: Path, name: str = "tv", seed: int = 1, compress: str | None = None) -> Path:
    """A stored task vector of ``folder/base`` (made by ``family``) and a fine-tune with ``seed``."""
    base = folder / "base"
    if not base.exists():
        family(folder)
    ft = write_model(folder / f"ft{seed}", toy_tensors(seed), config=CONFIG)
    return TaskVector.from_models(base, ft).save(folder / name, compress=compress, options=Q)


def other_base(folder: Path, name: str = "other") -> Path:
    """Same architecture as ``family``'s base, other weights."""
    t = toy_tensors(0)
    t["layers.0.w"] = t["layers.0.w"] + 1
    t["layers.1.b"] = t["layers.1.b"] * 2
    return write_model(folder / name, t, config=CONFIG)


def other_architecture(folder: Path, name: str = "wide") -> Path:
    t = toy_tensors(0)
    t["layers.0.w"] = torch.zeros(4, 6)
    return write_model(folder / name, t, config=CONFIG)


class Store:
    """A server in-process on ``folder`` with a token for the org ``acme``."""

    def __init__(self, folder: Path, settings: ServerSettings | None = None, orgs=("acme",), **limits):
        self.settings = settings or resolve(folder, None, None, **limits)
        self.app = create_app(self.settings)
        self.http = TestClient(self.app)
        self.token = self.new_token(*orgs)

    def new_token(self, *orgs: str) -> str:
        return create_token(self.app.state.db, list(orgs))[1]

    def auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.token}"}

    def put_blob(self, digest: str, data: bytes, token: str | None = None):
        return self.http.put(f"/api/blobs/{digest}", content=data, headers=self.auth(token))

    def put_manifest(self, manifest, token: str | None = None, body: bytes | None = None):
        org, rest = manifest.name.split("/")
        return self.http.put(f"/api/packages/{org}/{rest}/{manifest.version}",
                             content=body if body is not None else manifest.model_dump_json().encode(),
                             headers={**self.auth(token), "Content-Type": "application/json"})

    def publish(self, vector: Path, ref: str, token: str | None = None, upload: bool = True, **meta):
        """Upload every blob of ``vector`` (unless ``upload`` is False), then its manifest; the manifest's response."""
        manifest, files = self.manifest(vector, ref, **meta)
        if upload:
            for digest, path in files.items():
                r = self.put_blob(digest, path.read_bytes(), token)
                assert r.status_code in (200, 201), r.text
        return self.put_manifest(manifest, token)

    @staticmethod
    def manifest(vector: Path, ref: str, **meta):
        meta = {"license": "apache-2.0", "publisher": ref.split("/")[0], **meta}
        return make_manifest(vector, ref, **meta)

    def client(self, cache: Path, token: str | None = None, hooks: list | None = None) -> StoreClient:
        """The real client, talking to this in-process server."""
        c = StoreClient("http://testserver", token, cache=cache)
        c.http.close()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c.http = TestClient(self.app, base_url="http://testserver", headers=headers)
        c.http.event_hooks = {"request": hooks or [], "response": []}
        return c
