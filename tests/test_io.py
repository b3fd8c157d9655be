"""Readers and writer: every input format, sharded output, atomic folders, and clear errors for bad files."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import read_model, run, sentence_transformers_base, ta_recipe, toy_tensors, write_model
from safetensors import safe_open

from taskvec import TaskvecError
from taskvec.io import ShardedWriter, open_checkpoint, parse_size


def test_sharded_output_has_an_index_that_covers_every_tensor(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    run(ta_recipe(base, ft), tmp_path / "out", shard_size=100)
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 1 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(toy_tensors(0))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in toy_tensors(0).values())
    for name, shard in index["weight_map"].items():
        with safe_open(tmp_path / "out" / shard, "pt") as f:
            assert name in f.keys() and f.metadata()["format"] == "pt"


def test_pytorch_bin_inputs_single_and_sharded(tmp_path):
    base, ft = toy_tensors(0), toy_tensors(1)
    (tmp_path / "b").mkdir()
    torch.save(base, tmp_path / "b" / "pytorch_model.bin")
    (tmp_path / "f").mkdir()
    names = list(ft)
    torch.save({n: ft[n] for n in names[:2]}, tmp_path / "f" / "pytorch_model-00001-of-00002.bin")
    torch.save({n: ft[n] for n in names[2:]}, tmp_path / "f" / "pytorch_model-00002-of-00002.bin")
    weight_map = {n: f"pytorch_model-0000{1 if i < 2 else 2}-of-00002.bin" for i, n in enumerate(names)}
    (tmp_path / "f" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    run(ta_recipe(tmp_path / "b", tmp_path / "f"), tmp_path / "out")
    out = read_model(tmp_path / "out")
    for n in names:
        torch.testing.assert_close(out[n], ft[n])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_runs_code_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil").mkdir()
    with open(tmp_path / "evil" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Exploit()}, f)
    with pytest.raises(TaskvecError, match=r"weights_only=True.*never unpickles"):
        open_checkpoint(tmp_path / "evil")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_safetensors_file_is_named_with_its_tensor(tmp_path):
    folder = write_model(tmp_path / "m", toy_tensors(0))
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(TaskvecError, match=r"model\.safetensors: truncated: tensor '[\w.]+' ends at byte"):
        open_checkpoint(folder)


def test_garbage_file_gives_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(TaskvecError, match="not a safetensors file or truncated"):
        open_checkpoint(tmp_path / "m")


def test_missing_shard_listed_in_index(tmp_path):
    folder = write_model(tmp_path / "m", toy_tensors(0), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(TaskvecError, match="shard model-00002-of-00002.safetensors is missing"):
        open_checkpoint(folder)


def test_model_id_resolves_in_the_local_hub_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    write_model(repo / "snapshots" / "abc123", toy_tensors(0))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    ckpt = open_checkpoint("acme/tiny")
    assert ckpt.folder == repo / "snapshots" / "abc123" and "layers.0.w" in ckpt
    with pytest.raises(TaskvecError, match="not in the local Hugging Face cache"):
        open_checkpoint("acme/absent")


def test_existing_output_is_refused_unless_forced(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(TaskvecError, match="already exists; pass --force"):
        run(ta_recipe(base, ft), tmp_path / "out")
    run(ta_recipe(base, ft), tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_may_not_replace_an_input(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    with pytest.raises(TaskvecError, match="is an input folder"):
        run(ta_recipe(base, ft), ft, force=True)
    with pytest.raises(TaskvecError, match="is an input folder or contains one"):
        run(ta_recipe(base, ft), tmp_path, force=True)


def test_config_tokenizer_and_model_card_are_written(tmp_path):
    base = sentence_transformers_base(tmp_path / "base")
    (base / "runs").mkdir()  # a subfolder modules.json does not list is not part of the model
    (base / "runs" / "events.txt").write_text("training log")
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    run(ta_recipe(base, ft, out_dtype="bfloat16"), tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "tokenizer.json").exists() and (out / "1_Pooling" / "config.json").exists()
    assert (out / "modules.json").exists() and not (out / "runs").exists()
    card = (out / "README.md").read_text()
    assert "- `ft` (local)" in card and "merge_method: task_arithmetic" in card
    assert str(tmp_path) not in card and "base_model_relation" not in card  # no Hub id known: no base_model
    tensors = read_model(out)
    assert tensors["layers.0.w"].dtype == torch.bfloat16 and tensors["position_ids"].dtype == torch.int64


def test_writer_puts_tensors_at_planned_places_in_any_order_and_rejects_surprises(tmp_path):
    """Workers write their results as they finish: the files' bytes must not depend on that order."""
    specs = [("a", torch.float32, (2,)), ("b", torch.float16, (3,)), ("c", torch.bfloat16, (4, 2))]
    tensors = {"a": torch.tensor([1.0, 2.0]), "b": torch.arange(3).half(), "c": torch.randn(4, 2).bfloat16()}
    outputs = []
    for order in ("abc", "cab"):
        with ShardedWriter(tmp_path / order, specs, shard_size=20) as w:  # two shards
            for name in order:
                w.write(name, tensors[name])
            w.commit()
        outputs.append({f.name: f.read_bytes() for f in sorted((tmp_path / order).iterdir())})
        got = read_model(tmp_path / order)
        assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3  # two shards and the index
    with ShardedWriter(tmp_path / "o", specs) as w:
        with pytest.raises(RuntimeError, match="not planned"):
            w.write("z", torch.zeros(1))
        with pytest.raises(RuntimeError, match="writer expected b"):
            w.write("b", torch.zeros(3))
        w.write("a", tensors["a"])
        with pytest.raises(RuntimeError, match="twice"):
            w.write("a", tensors["a"])
        with pytest.raises(RuntimeError, match="closed after 1 of 3"):
            w.commit()
    assert not (tmp_path / "o").exists() and not any(p.name.startswith(".o") or p.name == "o" for p in tmp_path.iterdir())


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1024", 1024)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_rejects_nonsense():
    with pytest.raises(TaskvecError, match="shard size"):
        parse_size("lots")


def test_progress_prints_plain_lines_when_not_a_terminal(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    (tmp_path / "r.yaml").write_text(ta_recipe(base, ft).to_yaml())
    proc = subprocess.run([sys.executable, "-m", "taskvec.cli", "merge", str(tmp_path / "r.yaml"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "task_arithmetic: 5/5 tensors" in proc.stderr and "ETA" in proc.stderr


def test_cuda_device_without_a_gpu_is_a_clear_error_and_math_dtype_is_selectable(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    if not torch.cuda.is_available():
        with pytest.raises(TaskvecError, match="no CUDA GPU is available here; use --device cpu"):
            run(ta_recipe(base, ft), tmp_path / "out", device="cuda")
    else:  # the same merge on the GPU matches the CPU within float32 rounding
        run(ta_recipe(base, ft), tmp_path / "gpu", device="cuda")
        run(ta_recipe(base, ft), tmp_path / "cpu")
        for k, v in read_model(tmp_path / "cpu").items():
            torch.testing.assert_close(read_model(tmp_path / "gpu")[k], v)
    run(ta_recipe(base, ft, weight=0.5), tmp_path / "bf16", compute_dtype=torch.bfloat16)
    run(ta_recipe(base, ft, weight=0.5), tmp_path / "f32")
    fast, exact = read_model(tmp_path / "bf16"), read_model(tmp_path / "f32")
    assert fast["layers.0.w"].dtype == torch.float32  # output dtype follows the base, not the math
    torch.testing.assert_close(fast["layers.0.w"], exact["layers.0.w"], rtol=2e-2, atol=2e-2)
    assert not torch.equal(fast["layers.0.w"], exact["layers.0.w"])
