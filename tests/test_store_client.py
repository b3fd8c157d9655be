"""The store's client against an in-process server: push uploads only missing blobs, pull is bit-identical and
resumable, the login config is private, equip equals apply and refuses a wrong base before writing anything."""

import os
import stat

import pytest
import torch
from conftest import read_model
from storekit import Q, Store, make_vector, other_architecture, other_base

from taskvec import MergeOptions, TaskvecError, TaskVector
from taskvec.store import client as client_module
from taskvec.store.equip import equip


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVEC_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TASKVEC_STORE", raising=False)
    monkeypatch.delenv("TASKVEC_TOKEN", raising=False)
    return tmp_path


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_push_uploads_only_missing_blobs_and_pull_is_bit_identical(env, store):
    tv = make_vector(env / "models", compress="lowrank:2")
    c = store.client(env / "cache", store.token)
    first = c.push(tv, "acme/topic@1.0.0", license="mit", tags=["a"])
    assert first.status == "created" and first.uploaded == len(list(tv.iterdir())) and first.present == 0
    second = c.push(tv, "acme/topic@1.1.0", license="mit")  # the same files: every blob is already there
    assert second.uploaded == 0 and second.present == first.uploaded
    again = c.push(tv, "acme/topic@1.0.0", license="mit", tags=["a"])
    assert again.status == "exists"
    with pytest.raises(TaskvecError, match=r"refused \(409\).*never change"):
        c.push(tv, "acme/topic@1.0.0", license="apache-2.0")
    manifest, out = store.client(env / "cache2").pull("acme/topic@1.0.0", env / "pulled")
    assert manifest.compression == "lowrank:2" and files_of(out) == files_of(tv)
    with pytest.raises(TaskvecError, match="already exists"):
        store.client(env / "cache2").pull("acme/topic@1.0.0", env / "pulled")


def test_push_without_a_token_or_to_another_org_is_refused_with_the_servers_message(env, store):
    tv = make_vector(env / "models")
    with pytest.raises(TaskvecError, match=r"refused \(401\): publishing needs a token"):
        store.client(env / "cache").push(tv, "acme/topic@1.0.0")
    with pytest.raises(TaskvecError, match=r"refused \(403\).*only under acme, not globex"):
        store.client(env / "cache", store.token).push(tv, "globex/topic@1.0.0")


def test_a_download_resumes_with_a_range_and_a_corrupt_one_is_refused(env, store):
    tv = make_vector(env / "models")
    store.client(env / "cache", store.token).push(tv, "acme/topic@1.0.0")
    seen = []
    c = store.client(env / "dl", hooks=[lambda request: seen.append(dict(request.headers))])
    manifest, _ = c.manifest("acme/topic@1.0.0")
    big = max(manifest.files, key=lambda f: f.size)
    data = (tv / big.path).read_bytes()
    partial = env / "dl" / "blobs" / "partial"
    partial.mkdir(parents=True)
    (partial / big.sha256).write_bytes(data[:100])  # an interrupted download
    c.pull("acme/topic@1.0.0", env / "out")
    assert (env / "out" / big.path).read_bytes() == data
    assert any(h.get("range") == "bytes=100-" for h in seen)
    assert not (partial / big.sha256).exists()
    # a partial download that is not a prefix of the blob: refused, nothing kept, and the next pull succeeds
    c2 = store.client(env / "dl2")
    (env / "dl2" / "blobs" / "partial").mkdir(parents=True)
    (env / "dl2" / "blobs" / "partial" / big.sha256).write_bytes(b"\1" * 100)
    with pytest.raises(TaskvecError, match="nothing was kept -- pull again"):
        c2.pull("acme/topic@1.0.0", env / "out2")
    assert not (env / "out2").exists()
    c2.pull("acme/topic@1.0.0", env / "out2")
    assert files_of(env / "out2") == files_of(tv)


def test_login_saves_a_private_config_and_options_beat_the_environment_beat_the_login(env, monkeypatch):
    path = client_module.save_login("http://store.example:8765", "tvs_secret")
    assert path == env / "config" / "store.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert client_module.resolve(None, None) == ("http://store.example:8765", "tvs_secret")
    monkeypatch.setenv("TASKVEC_STORE", "http://env:1")
    monkeypatch.setenv("TASKVEC_TOKEN", "tvs_env")
    assert client_module.resolve(None, None) == ("http://env:1", "tvs_env")
    assert client_module.resolve("http://opt:2/", "tvs_opt") == ("http://opt:2", "tvs_opt")
    monkeypatch.delenv("TASKVEC_STORE")
    monkeypatch.delenv("TASKVEC_TOKEN")
    (env / "config" / "store.json").unlink()
    with pytest.raises(TaskvecError, match="which store"):
        client_module.resolve(None, None)
    with pytest.raises(TaskvecError, match="give its URL"):
        client_module.resolve("store.example", None)


def test_an_unreachable_store_is_one_clear_error(env):
    c = client_module.StoreClient("http://127.0.0.1:9", None, cache=env / "cache")
    with pytest.raises(TaskvecError, match=r"cannot reach it .*taskvec store serve"):
        c.search("x")


def test_equip_equals_apply_bit_for_bit_and_reuses_the_cache(env, store):
    tv = make_vector(env / "models")
    base = env / "models" / "base"
    store.client(env / "cache", store.token).push(tv, "acme/topic@1.0.0")
    c = store.client(env / "cache")
    equip(str(base), [("acme/topic@1.0.0", 1.0)], env / "equipped", c, options=Q)
    TaskVector.load(tv).apply(base, env / "applied", options=Q)
    a, b = read_model(env / "equipped"), read_model(env / "applied")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cached = list((env / "cache" / "vectors").iterdir())
    assert len(cached) == 1 and files_of(cached[0]) == files_of(tv)
    blobs = {p.stat().st_ino for p in (env / "cache" / "blobs" / "sha256").iterdir()}
    assert all(p.stat().st_ino in blobs for p in cached[0].iterdir())  # linked to the checked blobs, not copied
    # ties with a weight and density: the same as the recipe over the local folder
    two = make_vector(env / "models", "tv2", seed=2)
    store.client(env / "cache", store.token).push(two, "acme/other@1.0.0")
    equip(str(base), [("acme/topic@1.0.0", 1.0), ("acme/other@1.0.0", 0.5)], env / "ties", c, method="ties",
          model_parameters={"density": 0.5}, options=Q)
    from conftest import run

    from taskvec import parse_recipe

    run(parse_recipe({"merge_method": "ties", "base_model": str(base), "models": [
        {"model": str(tv), "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": str(two), "parameters": {"weight": 0.5, "density": 0.5}}]}), env / "ties_local")
    a, b = read_model(env / "ties"), read_model(env / "ties_local")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_equip_refuses_a_wrong_base_naming_tensors_and_writes_nothing(env, store):
    tv = make_vector(env / "models")
    store.client(env / "cache", store.token).push(tv, "acme/topic@1.0.0")
    wrong = other_base(env)
    c = store.client(env / "cache")
    with pytest.raises(TaskvecError, match=r"is not the base acme/topic@1\.0\.0.*'layers\.0\.w'.*'layers\.1\.b'"):
        equip(str(wrong), [("acme/topic@1.0.0", 1.0)], env / "out", c, options=Q)
    assert not (env / "out").exists() and not [p for p in env.iterdir() if "taskvec-tmp" in p.name]
    with pytest.warns(UserWarning, match="not the base"):
        equip(str(wrong), [("acme/topic@1.0.0", 1.0)], env / "out", c,
              options=MergeOptions(progress=False, force_base=True))
    assert (env / "out" / "model.safetensors").is_file()


def test_equip_refuses_another_architecture_before_downloading(env, store):
    tv = make_vector(env / "models")
    store.client(env / "cache", store.token).push(tv, "acme/topic@1.0.0")
    wide = other_architecture(env)
    with pytest.raises(TaskvecError, match=r"different architecture.*'layers\.0\.w' is \[4, 6\] here, \[4, 4\]"):
        equip(str(wide), [("acme/topic@1.0.0", 1.0)], env / "out", store.client(env / "fresh"), options=Q)
    assert not (env / "out").exists() and not (env / "fresh" / "blobs").exists()


def test_equip_copies_and_checks_the_blobs_where_links_cannot_be_made(env, store, monkeypatch):
    tv = make_vector(env / "models")
    base = env / "models" / "base"
    store.client(env / "cache", store.token).push(tv, "acme/topic@1.0.0")

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    equip(str(base), [("acme/topic@1.0.0", 1.0)], env / "equipped", store.client(env / "cache"), options=Q)
    cached = next((env / "cache" / "vectors").iterdir())
    assert files_of(cached) == files_of(tv) and all(p.stat().st_nlink == 1 for p in cached.iterdir())
    # a copy checks digests: a cached blob changed on disk since its download is caught, and nothing is written
    blob = next(p for p in (env / "cache" / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    with pytest.raises(TaskvecError, match="sha256"):
        store.client(env / "cache").pull("acme/topic@1.0.0", env / "pulled")
    assert not (env / "pulled").exists()

