"""The store under failure, through real `taskvec store serve` processes on 127.0.0.1, on SQLite and (where it is
installed) on a throwaway PostgreSQL cluster: a client gone mid-upload, a server SIGKILLed in the middle of a blob
upload and between the blobs and the manifest, corrupted blobs. (Racing publishers: test_store_race.py; fifty
clients at once: test_store_concurrency.py.)"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import write_model
from serverkit import ServerProcess, postgresql, stack  # noqa: F401 -- fixtures
from storekit import CONFIG, Q, make_vector

from taskvec import TaskVector
from taskvec.errors import TaskvecError
from taskvec.store.package import make_manifest


def big_vector(folder: Path) -> Path:
    """A task vector with a 4 MB tensor, so that its upload takes many chunks."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(1024, 1024, generator=g), "b": torch.randn(1024, generator=g)}
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    write_model(folder / "base", base, config=CONFIG)
    write_model(folder / "ft", ft, config=CONFIG)
    return TaskVector.from_models(folder / "base", folder / "ft").save(folder / "tv", options=Q)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def nothing_published(server: ServerProcess, ref=("acme", "big", "1.0.0")) -> bool:
    org, name, version = ref
    return (httpx.get(f"{server.url}/api/packages/{org}/{name}/{version}").status_code == 404
            and httpx.get(f"{server.url}/api/packages").json()["total"] == 0
            and httpx.get(f"{server.url}/v/{org}/{name}/{version}").status_code == 404)


def test_a_server_killed_mid_upload_or_before_the_manifest_publishes_nothing_and_a_retry_succeeds(stack, tmp_path):
    vector = big_vector(tmp_path / "models")
    manifest, files = make_manifest(vector, "acme/big@1.0.0", license="mit", publisher="acme")
    big = max(files, key=lambda d: files[d].stat().st_size)
    data = files[big].read_bytes()
    assert len(data) > 4_000_000
    server = stack.serve()
    for d, p in files.items():
        if d != big:
            assert httpx.put(f"{server.url}/api/blobs/{d}", content=p.read_bytes(),
                             headers=stack.headers()).status_code == 201

    # 0. the client goes away mid-upload (the server lives): the temporary object goes, no error is logged
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"PUT /api/blobs/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {stack.token}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:3 << 20])
        wait_for(lambda: any(p.stat().st_size >= 1 << 20 for p in stack.incoming()), "the upload to arrive")
    wait_for(lambda: stack.incoming() == [], "the cut-off upload's temporary object to go")
    assert "Traceback" not in server.log_path.read_text()

    # 1. SIGKILL while the big blob streams in: the client has sent 2 MB of 4, the server has written some of it
    killed, outcome = threading.Event(), {}

    def body():
        for i in range(0, len(data), 1 << 18):
            if i >= 2 << 20:
                killed.wait(30)
            yield data[i:i + (1 << 18)]

    def upload():
        try:
            outcome["response"] = httpx.put(f"{server.url}/api/blobs/{big}", content=body(), timeout=30,
                                            headers={**stack.headers(), "Content-Length": str(len(data))})
        except httpx.TransportError as e:
            outcome["error"] = e

    sender = threading.Thread(target=upload)
    sender.start()
    try:
        wait_for(lambda: any(p.stat().st_size >= 1 << 20 for p in stack.incoming()), "the upload to arrive")
        assert server.kill() == -9
    finally:
        killed.set()
        sender.join(30)
    (partial,) = stack.incoming()  # the half-written upload, left behind as a crash leaves it
    assert (1 << 20) <= partial.stat().st_size < len(data)
    assert "error" in outcome and "response" not in outcome  # the client saw the connection die, not an answer

    old = time.time() - 2 * 3600  # an hour without a byte written: stale (an upload of a live server is not)
    os.utime(partial, (old, old))
    live = stack.blobs / "incoming" / "another-servers-live-upload"
    live.write_bytes(b"in progress")
    server = stack.serve()
    assert stack.incoming() == [live]  # the crash's leftover is cleaned at start, a live upload is spared
    live.unlink()
    assert httpx.head(f"{server.url}/api/blobs/{big}").status_code == 404  # no half blob under its name
    assert nothing_published(server)

    # 2. SIGKILL after every blob is uploaded but before the manifest: still nothing published
    with stack.client(server) as client:
        for d, p in files.items():
            client.upload_blob(p, d, p.stat().st_size)
    assert server.kill() == -9
    server = stack.serve()
    assert nothing_published(server)

    # the retry: the blobs are there (content addressed), the manifest publishes, the pull is bit-identical
    with stack.client(server) as client:
        result = client.push(vector, "acme/big@1.0.0", license="mit")
        assert (result.status, result.uploaded, result.present) == ("created", 0, len(files))
        client.pull("acme/big@1.0.0", tmp_path / "pulled")
    assert folder_bytes(tmp_path / "pulled") == folder_bytes(vector)
    assert stack.incoming() == []


def test_corrupted_blobs_are_refused_on_upload_and_on_download(stack, tmp_path):
    server = stack.serve()
    data, other = b"the real bytes" * 1000, b"other bytes" * 1000
    digest = hashlib.sha256(data).hexdigest()
    r = httpx.put(f"{server.url}/api/blobs/{digest}", content=other, headers=stack.headers())
    assert r.status_code == 400 and hashlib.sha256(other).hexdigest() in r.json()["error"]
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 404 and stack.incoming() == []

    vector = make_vector(tmp_path / "models")
    with stack.client(server) as client:
        client.push(vector, "acme/topic@1.0.0", license="mit")
    manifest = httpx.get(f"{server.url}/api/packages/acme/topic/1.0.0").json()["manifest"]
    entry = next(f for f in manifest["files"] if f["path"].endswith(".safetensors"))
    stored = stack.blobs / "sha256" / entry["sha256"]
    rotten = bytearray(stored.read_bytes())
    rotten[-1] ^= 0xFF  # bit rot on the server's disk, same size
    stored.write_bytes(bytes(rotten))
    with stack.client(server, "other-cache") as client, pytest.raises(TaskvecError, match=entry["sha256"][:12]):
        client.pull("acme/topic@1.0.0", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
