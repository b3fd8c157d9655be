"""The store server's API, in-process (FastAPI's TestClient): uploads checked by digest, publishing that is all or
nothing and immutable, tokens scoped to orgs, private mode, names and limits, search, Range downloads."""

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from storekit import Store, make_vector

from taskvec.store.settings import ServerSettings

SRC = Path(__file__).resolve().parent.parent / "src"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store", max_blob_bytes=10_000, max_manifest_bytes=20_000)


@pytest.fixture
def vector(tmp_path):
    return make_vector(tmp_path / "models")


def error(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


def test_blob_upload_is_idempotent_and_downloads_whole_or_by_range(store):
    data = bytes(range(256)) * 4
    d = sha(data)
    assert store.http.head(f"/api/blobs/{d}").status_code == 404
    r = store.put_blob(d, data)
    assert r.status_code == 201 and r.json() == {"sha256": d, "size": len(data), "created": True}
    assert store.put_blob(d, data).status_code == 200  # the same blob again: harmless
    h = store.http.head(f"/api/blobs/{d}")
    assert h.status_code == 200 and h.headers["content-length"] == str(len(data))
    g = store.http.get(f"/api/blobs/{d}")
    assert g.content == data and g.headers["content-length"] == str(len(data)) and g.headers["accept-ranges"] == "bytes"
    part = store.http.get(f"/api/blobs/{d}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}" and part.headers["content-length"] == "10"
    assert store.http.get(f"/api/blobs/{d}", headers={"Range": "bytes=1000-"}).content == data[1000:]
    assert store.http.get(f"/api/blobs/{d}", headers={"Range": "bytes=-5"}).content == data[-5:]
    bad = store.http.get(f"/api/blobs/{d}", headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}" and error(bad)


def test_a_blob_that_does_not_match_its_digest_is_refused_and_not_kept(store):
    data, other = b"the real bytes", b"other bytes"
    r = store.put_blob(sha(data), other)
    assert r.status_code == 400 and sha(other) in error(r)
    assert store.http.head(f"/api/blobs/{sha(data)}").status_code == 404
    assert list((Path(store.settings.blobs_url) / "incoming").iterdir()) == []  # the temporary object is gone


def test_writes_need_a_valid_token(store):
    data = b"x"
    assert store.http.put(f"/api/blobs/{sha(data)}", content=data).status_code == 401
    r = store.http.put(f"/api/blobs/{sha(data)}", content=data, headers={"Authorization": "Bearer tvs_nope"})
    assert r.status_code == 401 and "unknown or revoked token" in error(r)
    assert store.http.head(f"/api/blobs/{sha(data)}").status_code == 404


def test_publish_show_and_a_manifest_with_a_missing_blob_is_refused_invisibly(store, vector):
    manifest, files = store.manifest(vector, "acme/topic@1.0.0")
    missing = next(d for d, p in files.items() if p.name.endswith(".safetensors"))
    for d, p in files.items():
        if d != missing:
            store.put_blob(d, p.read_bytes())
    r = store.put_manifest(manifest)
    assert r.status_code == 400 and missing in error(r) and "nothing was published" in error(r)
    assert store.http.get("/api/packages/acme/topic/1.0.0").status_code == 404
    assert store.http.get("/api/packages").json()["total"] == 0
    store.put_blob(missing, files[missing].read_bytes())
    r = store.put_manifest(manifest)
    assert r.status_code == 201 and r.json()["status"] == "created" and r.json()["ref"] == "acme/topic@1.0.0"
    shown = store.http.get("/api/packages/acme/topic/1.0.0").json()
    assert shown["manifest"]["files"] == json.loads(manifest.model_dump_json())["files"]
    raw = store.http.get("/api/packages/acme/topic/1.0.0/manifest.json")
    assert json.loads(raw.content) == json.loads(manifest.model_dump_json())
    assert [v["ref"] for v in store.http.get("/api/packages/acme/topic").json()["versions"]] == ["acme/topic@1.0.0"]


def test_a_blob_with_another_size_than_the_manifest_says_is_refused(store, vector):
    manifest, files = store.manifest(vector, "acme/topic@1.0.0")
    for d, p in files.items():
        store.put_blob(d, p.read_bytes())
    manifest.files[0].size += 1
    manifest.size += 1
    r = store.put_manifest(manifest)
    assert r.status_code == 400 and "bytes, the manifest says" in error(r)


def test_a_published_version_is_immutable(store, vector, tmp_path):
    assert store.publish(vector, "acme/topic@1.0.0", description="v1").status_code == 201
    again = store.publish(vector, "acme/topic@1.0.0", description="v1")  # built again: a new `created` time
    assert again.status_code == 200 and again.json()["status"] == "exists"
    changed = store.publish(vector, "acme/topic@1.0.0", description="something else")
    assert changed.status_code == 409 and "never change" in error(changed)
    other = make_vector(tmp_path / "models", "tv2", seed=2)
    assert store.publish(other, "acme/topic@1.0.0", description="v1").status_code == 409
    shown = store.http.get("/api/packages/acme/topic/1.0.0").json()["manifest"]
    assert shown["description"] == "v1"
    assert store.publish(other, "acme/topic@1.0.1").status_code == 201


def test_a_token_publishes_only_under_its_orgs(store, vector):
    theirs = store.new_token("globex")
    r = store.publish(vector, "acme/topic@1.0.0", token=theirs)  # blobs are fine (any token), the manifest is not
    assert r.status_code == 403 and "globex" in error(r) and "acme" in error(r)
    assert store.http.get("/api/packages/acme/topic/1.0.0").status_code == 404
    assert store.publish(vector, "globex/topic@1.0.0", token=theirs).status_code == 201
    assert store.http.get("/api/whoami", headers=store.auth(theirs)).json() == {"orgs": ["globex"]}


def test_a_private_store_needs_a_token_to_read(tmp_path, vector):
    store = Store(tmp_path / "store", private=True)
    assert store.publish(vector, "acme/topic@1.0.0").status_code == 201
    for path in ("/api/packages", "/api/packages/acme/topic/1.0.0", "/api/packages/acme/topic"):
        r = store.http.get(path)
        assert r.status_code == 401 and "private" in error(r)
        assert store.http.get(path, headers=store.auth()).status_code == 200
    digest = store.http.get("/api/packages/acme/topic/1.0.0", headers=store.auth()).json()["manifest"]["files"][0]
    assert store.http.get(f"/api/blobs/{digest['sha256']}").status_code == 401
    assert store.http.get("/openapi.json").status_code == 200  # the API's documentation stays public


@pytest.mark.parametrize("path", ["/api/packages/acme/..x/1.0.0", "/api/packages/acme/topic/1.0.0..",
                                  "/api/packages/-acme/topic/1", "/api/packages/acme/.hidden/1",
                                  "/api/packages/acme/topic/v1", "/api/packages/" + "a" * 65 + "/topic/1"])
def test_bad_names_and_versions_are_refused(store, path):
    r = store.http.get(path)
    assert r.status_code == 400 and "package" in error(r)
    assert store.http.put(path, content=b"{}", headers=store.auth()).status_code == 400


@pytest.mark.parametrize("path", ["/api/packages/acme/topic/..%2F..%2Fetc", "/api/blobs/..%2F..%2Fstore.db",
                                  "/api/blobs/../store.db"])
def test_path_traversal_finds_nothing(store, path):
    r = store.http.get(path)
    assert r.status_code in (400, 404) and error(r)
    assert store.http.put(path, content=b"x", headers=store.auth()).status_code in (400, 404, 405)


def test_a_bad_digest_is_refused(store):
    r = store.http.put("/api/blobs/ABC", content=b"x", headers=store.auth())
    assert r.status_code == 400 and "sha256" in error(r)


def test_a_manifest_published_at_another_name_is_refused(store, vector):
    manifest, files = store.manifest(vector, "acme/topic@1.0.0")
    for d, p in files.items():
        store.put_blob(d, p.read_bytes())
    r = store.http.put("/api/packages/acme/other/1.0.0", content=manifest.model_dump_json(), headers=store.auth())
    assert r.status_code == 400 and "acme/topic@1.0.0" in error(r)
    r = store.put_manifest(manifest, body=b'{"name": "acme/topic"}')
    assert r.status_code == 422 and "invalid manifest" in error(r)


def test_size_limits(store, vector):
    big = b"\0" * 10_001
    r = store.put_blob(sha(big), big)
    assert r.status_code == 413 and "10000" in error(r)
    assert store.http.head(f"/api/blobs/{sha(big)}").status_code == 404
    manifest, _ = store.manifest(vector, "acme/topic@1.0.0", description="x" * 10_000)
    body = manifest.model_dump_json().encode() + b" " * 20_000
    r = store.put_manifest(manifest, body=body)
    assert r.status_code == 413 and "manifest" in error(r)


def test_search_filters(store, tmp_path):
    models = tmp_path / "models"
    a = make_vector(models, "a", seed=1)
    b = make_vector(models, "b", seed=2, compress="sparse:0.5")
    store.publish(a, "acme/sentiment@1.0.0", description="Movie review sentiment", tags=["text-classification"])
    store.publish(b, "acme/topics@2.0.0", description="BBC news topics", tags=["text-classification", "news"])
    fp = json.loads((a / "taskvec.json").read_text())["base"]["fingerprint"]

    def refs(**params):
        r = store.http.get("/api/packages", params=params)
        assert r.status_code == 200, r.text
        return sorted(x["ref"] for x in r.json()["results"])

    both = ["acme/sentiment@1.0.0", "acme/topics@2.0.0"]
    assert refs() == both
    assert refs(tag="text-classification") == both and refs(tag=["text-classification", "news"]) == [both[1]]
    assert refs(q="movie") == [both[0]] and refs(q="bbc TOPICS") == [both[1]] and refs(q="news") == [both[1]]
    assert refs(name="senti") == [both[0]] and refs(name="acme/topics") == [both[1]]
    assert refs(base=fp) == both and refs(base="taskvec-fp2:" + "0" * 64) == []
    assert refs(architecture="toy") == both and refs(architecture="ToyModel") == both
    assert refs(architecture="llama") == [] and refs(org="globex") == []
    assert refs(q="100%_") == []  # LIKE wildcards are matched literally
    hit = store.http.get("/api/packages", params={"name": "topics"}).json()["results"][0]
    assert hit["compression"] == "sparse:0.5" and hit["base"]["fingerprint"] == fp and hit["size"] > 0
    r = store.http.get("/api/packages", params={"limit": 0})
    assert r.status_code == 422 and "limit" in error(r)


def test_memory_blob_store_and_two_servers_sharing_one_database(tmp_path, vector):
    settings = ServerSettings(f"sqlite:///{tmp_path / 'shared.db'}", f"memory://taskvec-{uuid.uuid4().hex}")
    one, two = Store(tmp_path, settings), Store(tmp_path, settings, orgs=("acme",))
    assert one.publish(vector, "acme/topic@1.0.0").status_code == 201
    shown = two.http.get("/api/packages/acme/topic/1.0.0")  # the other server sees it: no state in processes
    assert shown.status_code == 200
    f = shown.json()["manifest"]["files"][0]
    assert sha(two.http.get(f"/api/blobs/{f['sha256']}").content) == f["sha256"]
    r = two.publish(vector, "acme/topic@1.0.0", description="different")
    assert r.status_code == 409  # uniqueness is the database's


def test_a_vector_manifest_naming_another_base_is_refused(store, vector, tmp_path):
    import shutil

    lying = tmp_path / "lying"
    shutil.copytree(vector, lying)
    manifest, files = store.manifest(lying, "acme/topic@1.0.0")
    vm = json.loads((lying / "taskvec.json").read_text())
    vm["base"]["fingerprint"] = "taskvec-fp2:" + "1" * 64
    data = json.dumps(vm).encode()
    for d, p in files.items():
        store.put_blob(d, p.read_bytes())
    store.put_blob(sha(data), data)
    entry = next(f for f in manifest.files if f.path == "taskvec.json")
    manifest.size += len(data) - entry.size
    entry.sha256, entry.size = sha(data), len(data)
    r = store.put_manifest(manifest)
    assert r.status_code == 422 and "records base" in error(r)


def test_openapi_documents_the_api(store):
    paths = store.http.get("/openapi.json").json()["paths"]
    assert {"/api/blobs/{sha256}", "/api/packages", "/api/packages/{org}/{name}/{version}"} <= set(paths)
    assert {"put", "get", "head"} <= set(paths["/api/blobs/{sha256}"])
    assert store.http.get("/docs").status_code == 200
    assert error(store.http.get("/api/nothing-here")) == "Not Found"


def test_the_server_does_not_import_torch_or_the_merge_engine():
    code = ("import sys\nfrom taskvec.store.server import create_app\n"
            "print(sorted(m for m in ('torch', 'taskvec.merge', 'taskvec.engine', 'numpy') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
