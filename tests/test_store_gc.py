"""`taskvec store gc`: blobs no published version lists are removed once older than the grace period; published
blobs, young orphans and other stores' data are kept; a publish can never refer to a removed blob."""

import hashlib
import os
import time

import pytest
from storekit import Store, make_vector

from taskvec import TaskvecError
from taskvec.store.blobs import BlobStore
from taskvec.store.gc import collect_garbage
from taskvec.store.settings import parse_duration


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def orphan(store, data: bytes, age: float = 0.0) -> str:
    """Upload a blob that no version lists, and date it ``age`` seconds back."""
    digest = hashlib.sha256(data).hexdigest()
    assert store.put_blob(digest, data).status_code == 201
    path = store.settings.blobs_url + f"/sha256/{digest}"
    then = time.time() - age
    os.utime(path, (then, then))
    return digest


def blob_names(store) -> set[str]:
    return {d for d, _, _ in BlobStore(store.settings.blobs_url).listing()}


def test_gc_removes_old_orphans_only_and_published_vectors_still_pull(tmp_path, store):
    tv = make_vector(tmp_path / "models")
    assert store.publish(tv, "acme/topic@1.0.0").status_code == 201
    published = blob_names(store)
    old, young = orphan(store, b"abandoned push", age=2 * 86400), orphan(store, b"push in progress", age=60)
    db, blobs = store.app.state.db, BlobStore(store.settings.blobs_url)

    dry = collect_garbage(db, blobs, parse_duration("24h", "grace"), dry_run=True)
    assert dry.removed == [old] and dry.young == 1 and dry.referenced == len(published)
    assert blob_names(store) == published | {old, young}  # a dry run removes nothing

    report = collect_garbage(db, blobs, parse_duration("24h", "grace"))
    assert report.removed == [old] and report.removed_bytes == len(b"abandoned push")
    assert blob_names(store) == published | {young}
    assert collect_garbage(db, blobs, 0).removed == [young]  # grace 0: every orphan
    assert blob_names(store) == published
    _, out = store.client(tmp_path / "cache").pull("acme/topic@1.0.0", tmp_path / "pulled")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in tv.iterdir()}


def test_a_blob_published_after_the_listing_is_not_removed(tmp_path, store):
    """The collection checks again, under the store lock, that no version lists a blob before removing it."""
    tv = make_vector(tmp_path / "models")
    manifest, files = store.manifest(tv, "acme/topic@1.0.0")
    for digest, path in files.items():
        store.put_blob(digest, path.read_bytes())
    listed_as_orphans = sorted(blob_names(store))  # what a collection saw before the publish below
    assert store.put_manifest(manifest).status_code == 201
    removed = []
    store.app.state.db.collect(listed_as_orphans, removed.append)
    assert removed == [] and blob_names(store) == set(files)


def test_push_uploads_again_a_blob_collected_between_its_check_and_its_publish(tmp_path, store):
    tv = make_vector(tmp_path / "models")
    manifest, files = store.manifest(tv, "acme/topic@1.0.0")
    for digest, path in files.items():  # an abandoned push of the same vector, long ago
        orphan(store, path.read_bytes(), age=2 * 86400)
    db, blobs = store.app.state.db, BlobStore(store.settings.blobs_url)
    collected = []

    def gc_before_the_manifest(request):
        if request.method == "PUT" and "/api/packages/" in str(request.url) and not collected:
            collected.append(collect_garbage(db, blobs, 86400).removed)

    c = store.client(tmp_path / "cache", store.token, hooks=[gc_before_the_manifest])
    result = c.push(tv, "acme/topic@1.0.0")
    assert sorted(collected[0]) == sorted(files)  # every blob was found present, then collected ...
    assert result.status == "created" and result.uploaded == len(files)  # ... and uploaded again
    assert blob_names(store) == set(files)


def test_a_publish_naming_a_missing_blob_is_refused_whatever_the_order(tmp_path, store):
    tv = make_vector(tmp_path / "models")
    manifest, _ = store.manifest(tv, "acme/topic@1.0.0")
    r = store.put_manifest(manifest)
    assert r.status_code == 400 and "is not on this store; upload it first" in r.json()["error"]


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("30m", 1800), ("7d", 604800), ("90s", 90), ("0", 0)])
def test_grace_periods_parse(text, seconds):
    assert parse_duration(text, "--grace") == seconds


def test_a_bad_grace_period_is_one_clear_error():
    with pytest.raises(TaskvecError, match="--grace 'soon': use a duration such as 24h"):
        parse_duration("soon", "--grace")


def test_the_gc_command_says_what_it_removes_and_keeps(tmp_path, store, cli):
    tv = make_vector(tmp_path / "models")
    store.publish(tv, "acme/topic@1.0.0")
    orphan(store, b"x" * 2_000_000, age=3 * 86400)
    orphan(store, b"fresh", age=10)
    root = tmp_path / "store"
    _, out = cli("store", "gc", "--root", root, "--dry-run")
    assert "would remove 1 orphan blob(s), 2.00 MB; kept 3 published blob(s), 1 orphan(s) younger than 24h" in out
    _, out = cli("store", "gc", "--root", root, "--grace", "1h")
    assert "removed 1 orphan blob(s), 2.00 MB, and 0 stale upload(s); kept 3 published" in out
    code, out = cli("store", "gc", "--root", root, "--grace", "tomorrow", ok=False)
    assert code != 0 and "--grace 'tomorrow': use a duration" in out
