"""Fifty clients at once against one real `taskvec store serve` process (uvicorn), on SQLite and on PostgreSQL:
each pushes its own vector (a blob of its own and blobs every client shares, so identical uploads race too), pulls
it back and pulls a vector published before the rush, within a time bound -- no errors, every byte identical."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serverkit import ServerProcess, make_token, postgresql  # noqa: F401 -- the session fixture
from storekit import make_vector

from taskvec.store.client import StoreClient

CLIENTS = 50
TIME_LIMIT = 45  # seconds for the whole rush, on two busy cores


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    if request.param == "sqlite":
        (tmp_path / "store").mkdir()
        where, db_url = {"root": tmp_path / "store"}, f"sqlite:///{tmp_path / 'store' / 'store.db'}"
    else:
        db_url = request.getfixturevalue("postgresql").database()
        where = {"db": db_url, "blobs": str(tmp_path / "blobs")}
    token = make_token(db_url)
    proc = ServerProcess(tmp_path / "server.log", **where)
    try:
        proc.start()
        proc.token = token
        yield proc
    finally:
        proc.stop()


def test_fifty_clients_push_and_pull_at_once_without_an_error_and_bit_identical(server, tmp_path):
    shared = make_vector(tmp_path / "models", "shared", seed=1)
    vectors = []
    for i in range(CLIENTS):  # the same tensors (a blob all share), and notes of their own (a blob each)
        v = tmp_path / "vectors" / f"v{i}"
        shutil.copytree(shared, v)
        (v / "NOTES.md").write_text(f"client {i}\n" + secrets.token_hex(64_000))
        vectors.append(v)
    with StoreClient(server.url, server.token, cache=tmp_path / "cache-setup") as client:
        client.push(shared, "acme/shared@1.0.0", license="mit")

    start = threading.Barrier(CLIENTS, timeout=60)

    def one_client(i: int) -> list[str]:
        problems = []
        with StoreClient(server.url, server.token, cache=tmp_path / f"cache{i}") as client:
            start.wait()
            pushed = client.push(vectors[i], f"acme/v{i}@1.0.0", license="mit", description=f"client {i}")
            if pushed.status != "created":
                problems.append(f"client {i}: push {pushed.status}")
            client.pull(f"acme/v{i}@1.0.0", tmp_path / "pulled" / f"v{i}")
            client.pull("acme/shared@1.0.0", tmp_path / "pulled" / f"shared{i}")
            found = client.search(name=f"acme/v{i}")  # v1 also matches v10..v19
            if f"acme/v{i}@1.0.0" not in [r["ref"] for r in found["results"]]:
                problems.append(f"client {i}: its vector is not found by search")
        if folder_bytes(tmp_path / "pulled" / f"v{i}") != folder_bytes(vectors[i]):
            problems.append(f"client {i}: its pulled vector differs from what it pushed")
        if folder_bytes(tmp_path / "pulled" / f"shared{i}") != folder_bytes(shared):
            problems.append(f"client {i}: the shared vector differs")
        return problems

    began = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one_client, i) for i in range(CLIENTS)]
        errors = []
        for i, f in enumerate(futures):
            try:
                errors += f.result(timeout=max(TIME_LIMIT - (time.monotonic() - began), 1))
            except Exception as e:  # noqa: BLE001 -- every failure is collected and reported together
                errors.append(f"client {i}: {type(e).__name__}: {e}")
    elapsed = time.monotonic() - began
    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    assert elapsed < TIME_LIMIT
    listing = httpx.get(f"{server.url}/api/packages", params={"limit": 200}).json()
    assert listing["total"] == CLIENTS + 1
    assert "Traceback" not in server.log_path.read_text()
