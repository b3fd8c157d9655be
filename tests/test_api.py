"""The TaskVector Python API: lazy expressions, stored task vectors and their manifest."""

import json

import pytest
import torch
from conftest import read_model, toy_tensors, write_model

from taskvec import MergeOptions, TaskvecError, TaskVector, merge_recipe, parse_recipe

Q = MergeOptions(progress=False)


def test_building_an_expression_reads_nothing():
    tv_a = TaskVector.from_models("no/such/base", "no/such/a")
    tv_b = TaskVector.from_models("no/such/base", "no/such/b")
    expr = 0.5 * tv_a + tv_b - tv_a / 2 + -tv_b
    assert repr(expr) == "0 * (no/such/a - no/such/base) + 0 * (no/such/b - no/such/base)"
    with pytest.raises(TaskvecError, match="no such file or folder"):
        expr.apply("no/such/base/x", "out", options=Q)


def test_like_terms_combine(tmp_path):
    tv = TaskVector.from_models(tmp_path / "b", tmp_path / "f")
    assert list((tv + tv + 0.5 * tv).terms.values()) == [2.5]


def test_load_rejects_a_folder_that_is_not_a_task_vector(tmp_path):
    write_model(tmp_path / "m", toy_tensors(0))
    with pytest.raises(TaskvecError, match="not a task vector folder"):
        TaskVector.load(tmp_path / "m")


def test_manifest_records_base_identity_counts_and_skips(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0), config={"architectures": ["ToyModel"], "model_type": "toy"})
    ft_t = {**toy_tensors(1), "extra.head": torch.ones(3)}
    ft = write_model(tmp_path / "ft", ft_t)
    TaskVector.from_models(base, ft).save(tmp_path / "tv", options=Q)
    m = json.loads((tmp_path / "tv" / "taskvec.json").read_text())
    assert m["format"] == "taskvec/task-vector" and m["dtype"] == "float32"
    assert m["base"]["architectures"] == ["ToyModel"] and m["base"]["fingerprint"].startswith("taskvec-fp2:")
    assert m["version"] == 2 and set(m["base"]["tensors"]) == set(toy_tensors(0))
    assert m["base"]["tensors"]["layers.1.b"]["shape"] == [4] and m["base"]["tensors"]["position_ids"]["dtype"] == "I64"
    assert m["num_tensors"] == 4 and m["num_parameters"] == 40 + 16 + 16 + 4
    skipped = {s["tensor"]: s["reason"] for s in m["skipped"]}
    assert "int64 tensor" in skipped["position_ids"] and "only in the fine-tuned model" in skipped["extra.head"]
    tv = read_model(tmp_path / "tv")
    torch.testing.assert_close(tv["layers.0.w"], toy_tensors(1)["layers.0.w"] - toy_tensors(0)["layers.0.w"])


def test_fingerprint_ignores_sharding_and_sees_content(tmp_path):
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    prints = []
    for name, tensors, shards in (("flat", toy_tensors(0), 1), ("sharded", toy_tensors(0), 3), ("other", toy_tensors(9), 1)):
        write_model(tmp_path / name, tensors, shards=shards)
        TaskVector.from_models(tmp_path / name, ft).save(tmp_path / f"tv_{name}", options=Q)
        prints.append(json.loads((tmp_path / f"tv_{name}" / "taskvec.json").read_text())["base"]["fingerprint"])
    assert prints[0] == prints[1] != prints[2]


def test_stored_task_vector_works_wherever_a_finetuned_model_does(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    a = write_model(tmp_path / "a", toy_tensors(1))
    TaskVector.from_models(base, a).save(tmp_path / "tv_a", options=Q)
    outs = {}
    for name, ref in (("model", a), ("vector", tmp_path / "tv_a")):
        data = {"merge_method": "task_arithmetic", "base_model": str(base),
                "models": [{"model": str(ref), "parameters": {"weight": 0.7}}]}
        merge_recipe(parse_recipe(data), tmp_path / f"out_{name}", Q)
        outs[name] = read_model(tmp_path / f"out_{name}")
    for k in outs["model"]:
        torch.testing.assert_close(outs["model"][k], outs["vector"][k])


def test_applying_to_the_right_base_does_not_warn_and_another_base_is_refused(tmp_path, recwarn):
    base = write_model(tmp_path / "base", toy_tensors(0))
    a = write_model(tmp_path / "a", toy_tensors(1))
    TaskVector.from_models(base, a).save(tmp_path / "tv", options=Q)
    result = TaskVector.load(tmp_path / "tv").apply(base, tmp_path / "out", options=Q)
    assert result.warnings == [] and not [w for w in recwarn if "base" in str(w.message)]
    other = write_model(tmp_path / "other", toy_tensors(5))
    with pytest.raises(TaskvecError, match="is not the base") as e:
        TaskVector.load(tmp_path / "tv").apply(other, tmp_path / "out2", options=Q)
    assert "'layers.0.w'" in str(e.value) and "--force-base" in str(e.value)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))
    with pytest.warns(UserWarning, match="is not the base"):  # the override: a model fine-tuned from that base
        TaskVector.load(tmp_path / "tv").apply(other, tmp_path / "out2", options=MergeOptions(
            progress=False, force_base=True))


def test_compact_bfloat16_storage(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    a = write_model(tmp_path / "a", toy_tensors(1))
    TaskVector.from_models(base, a).save(tmp_path / "tv", dtype="bfloat16", options=Q)
    tv = read_model(tmp_path / "tv")
    assert tv["layers.0.w"].dtype == torch.bfloat16
    assert json.loads((tmp_path / "tv" / "taskvec.json").read_text())["dtype"] == "bfloat16"


def test_saved_expression_of_stored_vectors(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    for s in (1, 2):
        write_model(tmp_path / f"m{s}", toy_tensors(s))
        TaskVector.from_models(base, tmp_path / f"m{s}").save(tmp_path / f"tv{s}", options=Q)
    (TaskVector.load(tmp_path / "tv1") - 0.5 * TaskVector.load(tmp_path / "tv2")).save(tmp_path / "combo", options=Q)
    combo = read_model(tmp_path / "combo")
    t0, t1, t2 = toy_tensors(0), toy_tensors(1), toy_tensors(2)
    want = (t1["layers.1.b"] - t0["layers.1.b"]) - 0.5 * (t2["layers.1.b"] - t0["layers.1.b"])
    torch.testing.assert_close(combo["layers.1.b"], want)
    manifest = json.loads((tmp_path / "combo" / "taskvec.json").read_text())
    assert manifest["base"]["fingerprint"] == json.loads((tmp_path / "tv1" / "taskvec.json").read_text())["base"]["fingerprint"]
