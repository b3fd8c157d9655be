"""The base fingerprint (taskvec-fp2) and the wrong-base check it drives."""

import hashlib
import json

import pytest
import torch
from conftest import toy_tensors, write_model
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from taskvec import MergeOptions, TaskvecError, TaskVector, merge_recipe, parse_recipe
from taskvec.store import fingerprint as F

Q = MergeOptions(progress=False)


def test_a_tensor_hash_by_hand():
    t = torch.tensor([1.0, -2.0])
    want = hashlib.sha256(b'["w","F32",[2]]\n' + t.numpy().tobytes()).hexdigest()
    assert F.tensor_record("w", t) == {"dtype": "F32", "shape": [2], "sha256": want}


def test_merkle_root_by_hand():
    h = {n: hashlib.sha256(n.encode()).hexdigest() for n in "abc"}
    leaf = {n: hashlib.sha256(b"\x00" + bytes.fromhex(h[n])).digest() for n in h}
    node = lambda x, y: hashlib.sha256(b"\x01" + x + y).digest()  # noqa: E731
    assert F.merkle_root(h) == F.PREFIX + node(node(leaf["a"], leaf["b"]), leaf["c"]).hex()  # RFC 6962's split
    assert F.merkle_root({"x": h["a"]}) == F.PREFIX + leaf["a"].hex()
    assert F.merkle_root(dict(reversed(list(h.items())))) == F.merkle_root(h)  # name order, not insertion order


def test_streamed_blocks_hash_as_the_whole_tensor(monkeypatch, tmp_path):
    t = {"big": torch.randn(37, 5), "s": torch.tensor(3.0)}
    write_model(tmp_path / "m", t)
    whole = F.fingerprint_model(str(tmp_path / "m"))
    monkeypatch.setattr(F, "BLOCK_BYTES", 3 * 5 * 4)  # 3 rows at a time: 13 blocks
    assert F.fingerprint_model(str(tmp_path / "m")) == whole
    assert whole.tensors["big"] == F.tensor_record("big", t["big"])


models = st.tuples(st.integers(1, 6), st.integers(0, 2**31 - 1), st.integers(1, 4), st.sampled_from(["F32", "BF16"]))


@settings(max_examples=15, deadline=None)
@given(models)
def test_fingerprint_ignores_sharding_and_file_format_and_sees_one_byte(spec):
    import tempfile
    from pathlib import Path

    n, seed, shards, dtype = spec
    g = torch.Generator().manual_seed(seed)
    torch_dtype = torch.float32 if dtype == "F32" else torch.bfloat16
    tensors = {f"layers.{i}.w": torch.randn(i + 1, 3, generator=g).to(torch_dtype) for i in range(n)}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        one = F.fingerprint_model(str(write_model(d / "one", tensors))).root
        assert F.fingerprint_model(str(write_model(d / "sharded", tensors, shards=min(shards, n)))).root == one
        torch.save(tensors, d / "model.bin")
        assert F.fingerprint_model(str(d / "model.bin")).root == one
        changed = {k: v.clone() for k, v in tensors.items()}
        raw = changed["layers.0.w"].view(torch.uint8).reshape(-1)
        raw[seed % raw.numel()] ^= 1 << (seed % 8)  # one bit of one byte
        assert F.fingerprint_model(str(write_model(d / "changed", changed))).root != one
        renamed = {("x" + k if k == "layers.0.w" else k): v for k, v in tensors.items()}
        assert F.fingerprint_model(str(write_model(d / "renamed", renamed))).root != one


def test_cli_prints_the_root_and_per_tensor_hashes(tmp_path, cli):
    write_model(tmp_path / "m", toy_tensors(0), shards=2)
    save_file(toy_tensors(0), tmp_path / "flat.safetensors")
    _, out = cli("fingerprint", tmp_path / "m")
    root = F.fingerprint_model(str(tmp_path / "flat.safetensors")).root
    assert out.strip() == root
    _, out = cli("fingerprint", tmp_path / "m", "--json")
    data = json.loads(out)
    assert data["fingerprint"] == root and data["tensors"]["layers.1.b"]["shape"] == [4]
    assert data["tensors"]["layers.1.b"] == F.tensor_record("layers.1.b", toy_tensors(0)["layers.1.b"])
    code, out = cli("fingerprint", tmp_path / "nope", ok=False)
    assert code == 2 and "no such file or folder" in out


def _vector(tmp_path, base_tensors=None):
    base = write_model(tmp_path / "base", base_tensors or toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    TaskVector.from_models(base, ft).save(tmp_path / "tv", options=Q)
    return base, tmp_path / "tv"


def _recipe(base, tv):
    return parse_recipe({"merge_method": "task_arithmetic", "base_model": str(base),
                         "models": [{"model": str(tv), "parameters": {"weight": 1.0}}]})


def test_a_base_differing_in_two_tensors_is_refused_naming_them(tmp_path):
    base, tv = _vector(tmp_path)
    other = toy_tensors(0)
    other["layers.1.b"] = other["layers.1.b"] + 1
    other["embed.weight"][3, 2] = 7.0
    write_model(tmp_path / "other", other, shards=2)
    with pytest.raises(TaskvecError) as e:
        merge_recipe(_recipe(tmp_path / "other", tv), tmp_path / "out", Q)
    msg = str(e.value)
    assert "is not the base" in msg and "2 of 5 tensors differ ('embed.weight', 'layers.1.b')" in msg
    assert "--force-base" in msg and "layers.0.w" not in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    merge_recipe(_recipe(write_model(tmp_path / "resharded", toy_tensors(0), shards=3), tv), tmp_path / "ok", Q)


def test_a_different_architecture_is_refused_from_headers(tmp_path):
    base, tv = _vector(tmp_path)
    other = toy_tensors(0)
    other["layers.1.w"] = torch.randn(4, 5)
    del other["layers.1.b"]
    write_model(tmp_path / "other", other)
    with pytest.raises(TaskvecError, match="different architecture") as e:
        merge_recipe(_recipe(tmp_path / "other", tv), tmp_path / "out", Q)
    assert "'layers.1.b'" in str(e.value) and "'layers.1.w' is [4, 5] here, [4, 4] in its base" in str(e.value)


def test_another_dtype_is_named_and_the_override_warns(tmp_path):
    base, tv = _vector(tmp_path)
    write_model(tmp_path / "half", {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                    for k, v in toy_tensors(0).items()})
    with pytest.raises(TaskvecError, match="stores 4 tensors in another dtype .*BF16 here, F32 there"):
        merge_recipe(_recipe(tmp_path / "half", tv), tmp_path / "out", Q)
    with pytest.warns(UserWarning, match="another dtype"):
        result = merge_recipe(_recipe(tmp_path / "half", tv), tmp_path / "out",
                              MergeOptions(progress=False, force_base=True))
    assert len(result.warnings) == 1


def test_a_completely_different_base_stops_after_a_few_tensors(tmp_path):
    tensors = {f"layers.{i}.w": torch.randn(3, 3) for i in range(12)}
    base = write_model(tmp_path / "base", tensors)
    write_model(tmp_path / "ft", {k: v + 1 for k, v in tensors.items()})
    TaskVector.from_models(base, tmp_path / "ft").save(tmp_path / "tv", options=Q)
    write_model(tmp_path / "other", {k: torch.randn(3, 3) for k in tensors})
    with pytest.raises(TaskvecError, match="stopped after 5 differing tensors"):
        merge_recipe(_recipe(tmp_path / "other", tmp_path / "tv"), tmp_path / "out", MergeOptions(progress=False,
                                                                                                   workers=1))


def test_old_fp1_vectors_are_still_checked(tmp_path):
    base, tv = _vector(tmp_path)
    manifest = json.loads((tv / "taskvec.json").read_text())
    from taskvec.fingerprint import Fingerprinter as Fp1
    from taskvec.io.checkpoint import open_checkpoint

    old = Fp1()
    ckpt = open_checkpoint(str(base))
    for n in ckpt.names():
        old.add(n, ckpt.read(n))
    manifest["version"] = 1
    manifest["base"] = {"ref": str(base), "fingerprint": old.hexdigest()}  # as taskvec 0.1 wrote it
    (tv / "taskvec.json").write_text(json.dumps(manifest))
    merge_recipe(_recipe(base, tv), tmp_path / "ok", Q)
    write_model(tmp_path / "other", toy_tensors(3))
    with pytest.raises(TaskvecError, match="old fingerprint that cannot name the tensors"):
        merge_recipe(_recipe(tmp_path / "other", tv), tmp_path / "out", Q)


def test_apply_cli_refuses_and_overrides(tmp_path, cli):
    base, tv = _vector(tmp_path)
    write_model(tmp_path / "other", toy_tensors(4))
    code, out = cli("apply", tmp_path / "other", tv, "--out", tmp_path / "o", "-q", ok=False)
    assert code == 2 and "is not the base" in out and "'layers.0.w'" in out
    cli("apply", tmp_path / "other", tv, "--out", tmp_path / "o", "-q", "--force-base")
    assert (tmp_path / "o" / "model.safetensors").is_file()
