"""Task-vector packages: manifest + content-addressed blobs, names, digests checked on read."""

import hashlib
import json

import pytest
import torch
from conftest import read_model, toy_tensors, write_model

from taskvec import MergeOptions, TaskvecError, TaskVector
from taskvec.store import names
from taskvec.store.package import MANIFEST, blob_path, load_manifest, metrics_from_file, read_package, write_package

Q = MergeOptions(progress=False)


@pytest.fixture
def vector(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0), config={"model_type": "toy", "architectures": ["Toy"]})
    write_model(tmp_path / "ft", toy_tensors(1))
    TaskVector.from_models(base, tmp_path / "ft").save(tmp_path / "tv", compress="sparse:0.25", options=Q)
    return base, tmp_path / "tv"


def _pack(vector_folder, out, ref="acme/topic@1.0.0"):
    return write_package(vector_folder, out, ref, license="apache-2.0", publisher="acme", description="BBC topics",
                         tags=["text-classification"], metrics={"accuracy": 0.95}, base_id="org/base")


def test_round_trip_gives_a_vector_that_applies_like_the_original(vector, tmp_path):
    base, tv = vector
    m = _pack(tv, tmp_path / "pkg")
    assert m.ref == "acme/topic@1.0.0" and m.compression == "sparse:0.25" and m.base.id_hint == "org/base"
    assert m.base.fingerprint == json.loads((tv / "taskvec.json").read_text())["base"]["fingerprint"]
    assert m.architecture.model_type == "toy" and m.architecture.tensors["layers.0.w"] == [4, 4]
    assert {t.name: t.encoding for t in m.tensors}["layers.0.w"] == "sparse"
    for f in m.files:  # content-addressed: the blob's name is the sha256 of its bytes
        blob = blob_path(tmp_path / "pkg", f.sha256)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == f.sha256 == hashlib.sha256(
            (tv / f.path).read_bytes()).hexdigest()
    assert load_manifest(tmp_path / "pkg") == m
    read_package(tmp_path / "pkg", tmp_path / "back")
    for folder in (tv, tmp_path / "back"):
        TaskVector.load(folder).apply(base, tmp_path / f"out_{folder.name}", options=Q)
    a, b = read_model(tmp_path / "out_tv"), read_model(tmp_path / "out_back")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_flipped_byte_in_a_blob_is_refused_and_nothing_is_written(vector, tmp_path):
    _, tv = vector
    m = _pack(tv, tmp_path / "pkg")
    f = next(f for f in m.files if f.path.endswith(".safetensors"))
    blob = blob_path(tmp_path / "pkg", f.sha256)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(TaskvecError, match=f"blob of {f.path} has sha256 .*corrupt or was tampered with"):
        read_package(tmp_path / "pkg", tmp_path / "back")
    assert not (tmp_path / "back").exists() and not list(tmp_path.glob(".back*"))
    blob.write_bytes(bytes(data[:-1]))
    with pytest.raises(TaskvecError, match="has .* bytes, the manifest says"):
        read_package(tmp_path / "pkg", tmp_path / "back")
    blob.unlink()
    with pytest.raises(TaskvecError, match="is missing"):
        read_package(tmp_path / "pkg", tmp_path / "back")


@pytest.mark.parametrize("path", ["../evil.json", "/etc/passwd.json", "a/b.json", "model.bin", ".hidden.json",
                                  "x.pkl"])
def test_a_manifest_naming_paths_outside_or_pickles_is_refused(vector, tmp_path, path):
    _, tv = vector
    _pack(tv, tmp_path / "pkg")
    data = json.loads((tmp_path / "pkg" / MANIFEST).read_text())
    data["files"][0]["path"] = path
    (tmp_path / "pkg" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(TaskvecError, match="field files.0.path: .*never pickles"):
        read_package(tmp_path / "pkg", tmp_path / "back")


def test_a_pickle_in_the_vector_folder_is_never_packaged(vector, tmp_path):
    _, tv = vector
    (tv / "extra.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(TaskvecError, match="'extra.bin'.*never pickles"):
        _pack(tv, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("ref, part", [
    ("acme/topic", "no version"), ("acme@1.0", "org/name@version"), ("../x@1.0", "org"), ("acme/..@1", "name"),
    ("acme/a..b@1", "name"), ("acme/-x@1", "name"), ("acme/x@v1", "version"), ("acme/x@1.0/../..", "version"),
    ("a/b/c@1", "org/name@version"), ("acme/" + "x" * 65 + "@1", "name"), ("acme/x@1." + "1" * 70, "version"),
    ("acme/x y@1", "name"),
])
def test_bad_names_get_one_clear_error(ref, part):
    with pytest.raises(TaskvecError, match=part):
        names.parse_ref(ref)


def test_good_names_parse():
    assert str(names.parse_ref("sentence-transformers/all-MiniLM-L6-v2@1.0.0-rc.1")) == \
        "sentence-transformers/all-MiniLM-L6-v2@1.0.0-rc.1"
    assert names.parse_ref("a/b@2").version == "2"


def test_a_vector_without_a_base_fingerprint_is_refused(vector, tmp_path):
    _, tv = vector
    data = json.loads((tv / "taskvec.json").read_text())
    data["base"]["fingerprint"] = None
    (tv / "taskvec.json").write_text(json.dumps(data))
    with pytest.raises(TaskvecError, match="records no base fingerprint"):
        _pack(tv, tmp_path / "pkg")


def test_a_malformed_manifest_names_the_field(vector, tmp_path):
    _, tv = vector
    _pack(tv, tmp_path / "pkg")
    data = json.loads((tmp_path / "pkg" / MANIFEST).read_text())
    data["files"][0]["sha256"] = "abc"
    (tmp_path / "pkg" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(TaskvecError, match="field files.0.sha256"):
        load_manifest(tmp_path / "pkg")


def test_metrics_come_from_taskvec_eval_json_or_a_plain_object(tmp_path):
    evaluated = tmp_path / "eval.json"
    evaluated.write_text(json.dumps({"model": "m", "results": [
        {"name": "topic", "metric": "accuracy", "score": 0.9, "normalized": 0.95},
        {"name": "chat", "metric": "neg_nll", "score": -2.5, "normalized": None}]}))
    assert metrics_from_file(evaluated) == {"topic/accuracy": 0.9, "topic/normalized": 0.95, "chat/neg_nll": -2.5}
    plain = tmp_path / "plain.json"
    plain.write_text('{"accuracy": 1, "f1": 0.5}')
    assert metrics_from_file(plain) == {"accuracy": 1.0, "f1": 0.5}


@pytest.mark.parametrize("text, message", [("[1, 2]", "must be a JSON object"), ('{"a": "high"}', "'a' is not a finite"),
                                           ('{"a": NaN}', "'a' is not a finite"), ("{oops", "cannot read metrics"),
                                           ('{"results": [{"name": "t"}]}', "need name, metric and score")])
def test_bad_metrics_files_get_one_clear_error(tmp_path, text, message):
    bad = tmp_path / "m.json"
    bad.write_text(text)
    with pytest.raises(TaskvecError, match=message):
        metrics_from_file(bad)
