"""Recipes: mergekit's schema, per-tensor settings, and one clear error per bad input, before any tensor is read."""

import pytest
import torch
from conftest import read_model, toy_tensors, write_model

from taskvec import MergeOptions, TaskvecError, merge_recipe, parse_recipe
from taskvec.io import safetensors_file
from taskvec.parameters import count_layers, evaluate, layer_index, position


@pytest.fixture
def family(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    a = write_model(tmp_path / "a", toy_tensors(1))
    b = write_model(tmp_path / "b", toy_tensors(2))
    return tmp_path, base, a, b


def recipe(base, *models, method="task_arithmetic", params=None, model_params=None, **extra):
    return {
        "merge_method": method, "base_model": str(base) if base else None,
        "models": [{"model": str(m), "parameters": {"weight": 1.0} if model_params is None else model_params} for m in models],
        **({"parameters": params} if params else {}), **extra,
    }


def merge(data, out, **kw):
    return merge_recipe(parse_recipe(data), out, MergeOptions(progress=False, **kw))


@pytest.fixture
def no_tensor_reads(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("a tensor was read before validation finished")
    monkeypatch.setattr(safetensors_file, "read_tensor", forbidden)
    monkeypatch.setattr("taskvec.io.checkpoint.read_tensor", forbidden)


def test_unknown_method_lists_the_available_ones(family):
    _, base, a, _ = family
    with pytest.raises(TaskvecError, match=r"unknown method 'tiess'; available: .*task_arithmetic"):
        parse_recipe(recipe(base, a, method="tiess"))


def test_unknown_field_is_named(family):
    _, base, a, _ = family
    with pytest.raises(TaskvecError, match=r"unknown field 'modelz'"):
        parse_recipe({**recipe(base, a), "modelz": []})


@pytest.mark.parametrize("where", ["top", "model"])
def test_unknown_parameter_is_named(family, where):
    _, base, a, _ = family
    data = recipe(base, a, params={"densty": 0.5}) if where == "top" else recipe(base, a, model_params={"weight": 1, "densty": 0.5})
    with pytest.raises(TaskvecError, match=r"parameters\.densty: task_arithmetic has no parameter 'densty'; it takes lambda, normalize, weight"):
        parse_recipe(data)


def test_global_parameter_under_a_model_says_where_it_belongs(family):
    _, base, a, _ = family
    with pytest.raises(TaskvecError, match=r"models\[0\]\.parameters\.lambda: 'lambda' applies to the whole merge"):
        parse_recipe(recipe(base, a, model_params={"weight": 1, "lambda": 2}))


def test_bad_parameter_value_type(family):
    _, base, a, _ = family
    with pytest.raises(TaskvecError, match="weight must be float, got 'heavy'"):
        parse_recipe(recipe(base, a, model_params={"weight": "heavy"}))


def test_empty_slices_and_modules_are_refused_clearly(family):
    with pytest.raises(TaskvecError, match=r"slices\[0\]: sources must list at least one model"):
        parse_recipe({"merge_method": "linear", "slices": [{"sources": []}]})
    with pytest.raises(TaskvecError, match="modules are not supported yet"):
        parse_recipe({"merge_method": "linear", "modules": {"text": {}}})


def test_task_arithmetic_needs_a_base(family):
    _, _, a, b = family
    with pytest.raises(TaskvecError, match="needs a base_model"):
        parse_recipe(recipe(None, a, b))


def test_missing_path_is_named(family, no_tensor_reads):
    tmp, base, a, _ = family
    with pytest.raises(TaskvecError, match=r"nowhere/deep/model: no such file or folder"):
        merge(recipe(base, a, "nowhere/deep/model"), tmp / "out")
    with pytest.raises(TaskvecError, match=r"acme/model: not a local path, and not in the local Hugging Face cache"):
        merge(recipe(base, a, "acme/model"), tmp / "out")
    assert not (tmp / "out").exists()


def test_shape_mismatch_names_tensor_shapes_and_files_before_reading(family, no_tensor_reads):
    tmp, base, a, _ = family
    bad = toy_tensors(3)
    bad["layers.1.w"] = torch.zeros(4, 5)
    write_model(tmp / "bad", bad)
    with pytest.raises(TaskvecError, match=r"tensor 'layers\.1\.w': shape \[4, 5\] in .*bad/model\.safetensors but \[4, 4\] in .*base/model\.safetensors"):
        merge(recipe(base, a, tmp / "bad"), tmp / "out")


def test_missing_required_weight_names_model_and_tensor(family, no_tensor_reads):
    tmp, base, a, _ = family
    data = recipe(base, a, model_params={"weight": [{"filter": "layers", "value": 1.0}]})
    with pytest.raises(TaskvecError, match=r"parameter 'weight' has no value for .*a at tensor 'embed\.weight'"):
        merge(data, tmp / "out")


def test_a_tensor_only_one_model_has_is_an_error_or_carried_over(family):
    tmp, base, a, _ = family
    with_head = {**toy_tensors(4), "score.weight": torch.ones(2, 4)}
    write_model(tmp / "rm", with_head)
    with pytest.raises(TaskvecError, match=r"'score\.weight' is in .*rm but not in base .*--carry-missing"):
        merge(recipe(base, a, tmp / "rm"), tmp / "out")
    merge(recipe(base, a, tmp / "rm"), tmp / "out", on_missing="carry")
    out = read_model(tmp / "out")
    assert torch.equal(out["score.weight"], torch.ones(2, 4))
    base_t, a_t, rm_t = toy_tensors(0), toy_tensors(1), toy_tensors(4)
    torch.testing.assert_close(out["layers.0.w"], a_t["layers.0.w"] + rm_t["layers.0.w"] - base_t["layers.0.w"])


def test_a_model_lacking_a_tensor_keeps_the_base_value_there_when_carried(family):
    """--carry-missing: the tensor merges over the models that have it (the lacking model's task vector is zero
    there): base + (a - base), not the base's copy."""
    tmp, base, a, _ = family
    lacking = toy_tensors(5)
    del lacking["layers.1.b"]
    write_model(tmp / "lacking", lacking)
    with pytest.raises(TaskvecError, match=r"'layers\.1\.b' is in base .* but not in .*lacking.*--carry-missing"):
        merge(recipe(base, a, tmp / "lacking"), tmp / "out")
    merge(recipe(base, a, tmp / "lacking"), tmp / "out", on_missing="carry")
    out = read_model(tmp / "out")
    torch.testing.assert_close(out["layers.1.b"], toy_tensors(1)["layers.1.b"], rtol=0, atol=1e-6)
    base_t, a_t, l_t = toy_tensors(0), toy_tensors(1), toy_tensors(5)
    torch.testing.assert_close(out["layers.0.w"], a_t["layers.0.w"] + l_t["layers.0.w"] - base_t["layers.0.w"])


def test_integer_tensors_are_copied_from_the_base_never_averaged(family):
    tmp, base, a, _ = family
    odd = toy_tensors(6)
    odd["position_ids"] = odd["position_ids"] * 7
    write_model(tmp / "odd", odd)
    merge(recipe(base, a, tmp / "odd", method="linear", params={"weight": 0.5}), tmp / "out")
    assert torch.equal(read_model(tmp / "out")["position_ids"], toy_tensors(0)["position_ids"])


def test_non_finite_result_is_an_error_and_nothing_is_written(family):
    tmp, base, a, _ = family
    bad = toy_tensors(7)
    bad["layers.1.w"][0, 0] = float("inf")
    write_model(tmp / "inf", bad)
    with pytest.raises(TaskvecError, match=r"tensor 'layers\.1\.w': the merged result has 1 non-finite value"):
        merge(recipe(base, a, tmp / "inf"), tmp / "out")
    assert not (tmp / "out").exists() and not list(tmp.glob(".out*"))


def test_fp16_overflow_is_caught(family):
    tmp, base, a, _ = family
    merge_data = recipe(base, a, model_params={"weight": 1e6}, out_dtype="float16")
    with pytest.raises(TaskvecError, match="overflow in the output dtype float16"):
        merge(merge_data, tmp / "out")


def test_linear_weighted_average_by_hand(tmp_path):
    write_model(tmp_path / "x", {"w": torch.tensor([1.0, 2.0, 3.0])})
    write_model(tmp_path / "y", {"w": torch.tensor([3.0, 6.0, -3.0])})
    data = {"merge_method": "linear", "models": [
        {"model": str(tmp_path / "x"), "parameters": {"weight": 3.0}},
        {"model": str(tmp_path / "y"), "parameters": {"weight": 1.0}}]}
    merge(data, tmp_path / "norm")
    assert read_model(tmp_path / "norm")["w"].tolist() == [1.5, 3.0, 1.5]  # (3x + y) / 4
    merge({**data, "parameters": {"normalize": False}}, tmp_path / "raw")
    assert read_model(tmp_path / "raw")["w"].tolist() == [6.0, 12.0, 6.0]  # 3x + y


def test_task_arithmetic_by_hand_with_lambda_and_normalize(tmp_path):
    write_model(tmp_path / "base", {"w": torch.tensor([1.0, 1.0])})
    write_model(tmp_path / "x", {"w": torch.tensor([3.0, 1.0])})  # tau (2, 0)
    write_model(tmp_path / "y", {"w": torch.tensor([1.0, 5.0])})  # tau (0, 4)
    data = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"), "parameters": {"lambda": 0.5},
            "models": [{"model": str(tmp_path / "x"), "parameters": {"weight": 1.0}},
                       {"model": str(tmp_path / "y"), "parameters": {"weight": 3.0}}]}
    merge(data, tmp_path / "o1")
    assert read_model(tmp_path / "o1")["w"].tolist() == [2.0, 7.0]  # 1 + 0.5 * (2, 12)
    data["parameters"]["normalize"] = True
    merge(data, tmp_path / "o2")
    assert read_model(tmp_path / "o2")["w"].tolist() == [1.25, 2.5]  # 1 + 0.5 * (2, 12) / 4


def test_layer_gradient_and_filters_select_per_tensor_weights(family):
    tmp, base, a, _ = family
    # two layers (config says num_hidden_layers: 2): layer 0 at t=0 gets weight 0, layer 1 at t=1 gets weight 1
    merge(recipe(base, a, model_params={"weight": [0.0, 1.0]}), tmp / "grad")
    out, b, ft = read_model(tmp / "grad"), toy_tensors(0), toy_tensors(1)
    assert torch.equal(out["layers.0.w"], b["layers.0.w"])
    torch.testing.assert_close(out["layers.1.w"], ft["layers.1.w"])
    torch.testing.assert_close(out["embed.weight"], b["embed.weight"])  # embeddings sit at t=0
    filtered = {"weight": [{"filter": "layers.1.b", "value": 0.0}, {"value": 1.0}]}
    merge(recipe(base, a, model_params=filtered), tmp / "filt")
    out = read_model(tmp / "filt")
    assert torch.equal(out["layers.1.b"], b["layers.1.b"])
    torch.testing.assert_close(out["layers.1.w"], ft["layers.1.w"])


def test_top_level_per_model_parameter_is_a_default_for_every_model(family):
    tmp, base, a, b = family
    data = recipe(base, a, b, params={"weight": 0.5}, model_params={})
    data["models"][1]["parameters"] = {"weight": 0.0}
    merge(data, tmp / "out")
    out, bt, at = read_model(tmp / "out"), toy_tensors(0), toy_tensors(1)
    torch.testing.assert_close(out["layers.0.w"], bt["layers.0.w"] + 0.5 * (at["layers.0.w"] - bt["layers.0.w"]))


def test_settings_by_hand():
    assert evaluate([0.0, 1.0], "x", 0.25) == 0.25
    assert evaluate([0.0, 1.0, 0.0], "x", 0.75) == 0.5
    assert evaluate([{"filter": "mlp", "value": 2}, {"value": 1}], "layers.3.mlp.up", 0) == 2
    assert evaluate([{"filter": "mlp", "value": 2}, {"value": 1}], "layers.3.attn.q", 0) == 1
    assert evaluate([{"filter": "mlp", "value": [0.0, 1.0]}], "layers.3.mlp.up", 0.5) == 0.5
    assert evaluate([{"filter": "mlp", "value": 2}], "attn", 0) is None
    assert layer_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_index("encoder.layer.3.output.dense.weight") == 3
    assert layer_index("transformer.h.7.mlp.c_fc.weight") == 7 and layer_index("lm_head.weight") is None
    assert count_layers(["model.layers.0.x", "model.layers.5.x"], None) == 6
    assert count_layers([], {"num_hidden_layers": 30}) == 30
    assert position("model.layers.5.x", 11) == 0.5
    assert position("model.embed_tokens.weight", 11) == 0.0 and position("lm_head.weight", 11) == 0.0  # as mergekit 0.1.5


def test_mergekit_parameters_without_effect_are_accepted_with_a_warning(family):
    _, base, a, _ = family
    with pytest.warns(UserWarning, match="'density' is accepted for mergekit compatibility but has no effect"):
        parse_recipe(recipe(base, a, model_params={"weight": 1.0, "density": 0.5}))


def test_linear_counts_an_unlisted_base_as_a_weighted_model_like_mergekit(tmp_path):
    write_model(tmp_path / "base", {"w": torch.tensor([0.0, 4.0])})
    write_model(tmp_path / "x", {"w": torch.tensor([2.0, 0.0])})
    data = {"merge_method": "linear", "base_model": str(tmp_path / "base"),
            "models": [{"model": str(tmp_path / "x"), "parameters": {"weight": 1.0}}]}
    with pytest.raises(TaskvecError, match=r"parameter 'weight' has no value for .*base"):
        merge(data, tmp_path / "o")
    merge({**data, "parameters": {"weight": 3.0}}, tmp_path / "o")  # x keeps 1.0, the base takes 3.0
    assert read_model(tmp_path / "o")["w"].tolist() == [0.5, 3.0]  # (2 + 3 * 0) / 4, (0 + 3 * 4) / 4
