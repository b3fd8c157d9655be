"""Engine v2: typed plans, declared kernel coverage, parameter checks before any tensor is read, and the bugs fixed
on the way -- each test fails on the previous engine."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import read_model, write_model

from taskvec import MergeOptions, merge_recipe, parse_recipe
from taskvec.engine import kernels
from taskvec.engine.fused import FusedMerger
from taskvec.merge import describe_recipe, plan_recipe
from taskvec.methods import _REGISTRY, ModelArgs, Param, get_method
from taskvec.methods.nuslerp import nuslerp_tensors
from taskvec.methods.slerp import slerp_tensors
from taskvec.methods.sparsify import random_draws, rank_keep_probabilities

T = torch.tensor


def family(tmp_path, n=2, shape=(6, 4), layers=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.w": torch.randn(shape, generator=g).to(dtype) for i in range(layers)}
    write_model(tmp_path / "base", base, config={"model_type": "toy", "num_hidden_layers": layers})
    for k in range(n):
        write_model(tmp_path / f"ft{k}", {name: (v.float() + 0.1 * torch.randn(v.shape, generator=g)).to(dtype)
                                          for name, v in base.items()})
    return tmp_path


def recipe(tmp_path, method, model_params, params=None, n=2):
    return {"merge_method": method, "base_model": str(tmp_path / "base"), "parameters": params or {},
            "models": [{"model": str(tmp_path / f"ft{k}"), "parameters": dict(model_params)} for k in range(n)]}


def write_recipe(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_plan_carries_every_parameter_typed(tmp_path):
    family(tmp_path)
    plan = plan_recipe(parse_recipe(recipe(tmp_path, "dare_ties", {"weight": 0.5, "density": 0.3})),
                       MergeOptions(seed=3))
    assert [t.path for t in plan.tensors] == ["fused", "fused"]
    for t in plan.tensors:
        assert all(isinstance(m, ModelArgs) and m.seed is not None and m.values == {"weight": 0.5, "density": 0.3}
                   for m in t.models)
        assert not any(k.startswith("_") for k in t.params)
    seeds = {m.seed for t in plan.tensors for m in t.models}
    assert len(seeds) == 4  # one stream per model and tensor


def test_dry_run_describes_the_plan_and_writes_nothing(tmp_path, cli):
    family(tmp_path)
    path = write_recipe(tmp_path, recipe(tmp_path, "ties", {"weight": 1.0, "density": 0.5}))
    view = describe_recipe(path)
    assert view.columns[:4] == ["tensor", "path", "shape", "dtype in → out"]
    assert [r[:3] for r in view.rows] == [["model.layers.0.w", "fused", "6×4"], ["model.layers.1.w", "fused", "6×4"]]
    assert view.rows[0][4:6] == ["1/0.5", "1/0.5"] and view.models == ["ft0", "ft1"]
    assert view.model_columns == "weight/density" and "trim_scope=tensor" in view.totals["parameters"]
    assert view.totals["read bytes"] == 3 * 2 * 24 * 4 and view.totals["write bytes"] == 2 * 24 * 4
    code, out = cli("merge", path, "--out", tmp_path / "out", "--dry-run")
    assert code == 0 and "model.layers.1.w" in out and "fused" in out and "peak memory" in out
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_an_option_the_kernel_does_not_declare_takes_the_reference_path(tmp_path, monkeypatch):
    family(tmp_path)
    data = recipe(tmp_path, "ties", {"weight": 1.0, "density": 0.5})
    assert {t.path for t in plan_recipe(parse_recipe(data)).tensors} == {"fused"}
    ties = get_method("ties")
    extended = dataclasses.replace(ties, params=ties.params + (Param("new_option", float, 0.5, "added later"),))
    monkeypatch.setitem(_REGISTRY, "ties", extended)
    assert {t.path for t in plan_recipe(parse_recipe(data)).tensors} == {"reference"}
    data["parameters"] = {"rescale": True}  # a value the kernel does not handle
    monkeypatch.setitem(_REGISTRY, "ties", ties)
    assert {t.path for t in plan_recipe(parse_recipe(data)).tensors} == {"reference"}


@pytest.mark.parametrize("method,model_params,params,message", [
    ("dare_ties", {"weight": 1.0, "density": 2.0}, {}, "density must be in (0, 1], got 2"),
    ("ties", {"weight": 1.0, "density": 0.0}, {}, "density must be in (0, 1], got 0"),
    ("ties", {"weight": 1.0, "density": float("nan")}, {}, "density must be a finite number"),
    ("task_arithmetic", {"weight": float("inf")}, {}, "weight must be a finite number"),
    ("breadcrumbs", {"weight": 1.0, "density": 0.5, "gamma": -0.1}, {}, "gamma must be in [0, 1), got -0.1"),
    ("breadcrumbs", {"weight": 1.0, "density": 0.7, "gamma": 0.5}, {}, "density + gamma must be at most 1"),
    ("della", {"weight": 1.0, "density": 0.1, "epsilon": 0.15}, {}, "density - epsilon must be above 0"),
    ("della", {"weight": 1.0, "density": 0.9, "epsilon": 0.15}, {}, "density + epsilon at most 1"),
    ("task_arithmetic", {"weight": 1.0}, {"lambda": float("nan")}, "lambda must be a finite number"),
])
def test_parameter_ranges_are_one_line_before_any_tensor_is_read(tmp_path, cli, monkeypatch, method, model_params,
                                                                 params, message):
    family(tmp_path)
    path = write_recipe(tmp_path, recipe(tmp_path, method, model_params, params))
    reads = []
    from taskvec.io import checkpoint
    monkeypatch.setattr(checkpoint.SafetensorsCheckpoint, "read", lambda *a, **k: reads.append(a))
    code, out = cli("merge", path, "--out", tmp_path / "out", ok=False)
    assert code == 2 and message in out and out.strip().startswith("error:") and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1 and not reads and not (tmp_path / "out").exists()


def test_slerp_t_outside_zero_one_is_refused(tmp_path, cli):
    family(tmp_path, n=1)
    data = recipe(tmp_path, "slerp", {}, {"t": 1.5}, n=1)
    code, out = cli("merge", write_recipe(tmp_path, data), "--out", tmp_path / "out", ok=False)
    assert code == 2 and "t must be in [0, 1], got 1.5" in out


def test_a_gradient_over_layers_the_config_does_not_have_is_an_error(tmp_path, cli):
    family(tmp_path, layers=4)
    config = tmp_path / "base" / "config.json"
    config.write_text('{"model_type": "toy", "num_hidden_layers": 2}')  # but tensors go up to layer 3
    data = recipe(tmp_path, "task_arithmetic", {"weight": [0.0, 1.0]})
    code, out = cli("merge", write_recipe(tmp_path, data), "--out", tmp_path / "out", ok=False)
    assert code == 2 and "'model.layers.2.w': its layer 2 lies beyond the layer count" in out
    data = recipe(tmp_path, "task_arithmetic", {"weight": 0.5})  # a scalar needs no position: fine
    cli("merge", write_recipe(tmp_path, data), "--out", tmp_path / "out")


def test_negative_weight_with_normalized_sign_election_warns(tmp_path):
    family(tmp_path, n=1)
    data = recipe(tmp_path, "ties", {"weight": -1.0, "density": 1.0}, n=1)
    with pytest.warns(UserWarning, match="for negation use task_arithmetic"):
        result = merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False))
    assert any("negative weight" in w for w in result.warnings)
    out, ft = read_model(tmp_path / "out"), read_model(tmp_path / "ft0")
    torch.testing.assert_close(out["model.layers.0.w"], ft["model.layers.0.w"])  # the sign came back: +tau


@pytest.mark.parametrize("spelling", ["./base/", "{tmp}/base", "{tmp}/x/../base"])
def test_a_base_listed_under_another_spelling_is_the_base(tmp_path, spelling, monkeypatch):
    family(tmp_path, n=1)
    monkeypatch.chdir(tmp_path)
    data = {"merge_method": "slerp", "base_model": "base", "parameters": {"t": 0.5},
            "models": [{"model": "ft0"}, {"model": spelling.format(tmp=tmp_path)}]}
    (tmp_path / "x").mkdir()
    merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False))  # slerp takes one model
    data = {"merge_method": "linear", "base_model": "base", "parameters": {},
            "models": [{"model": "ft0", "parameters": {"weight": 1.0}},
                       {"model": spelling.format(tmp=tmp_path), "parameters": {"weight": 3.0}}]}
    merge_recipe(parse_recipe(data), tmp_path / "lin", MergeOptions(progress=False))
    out, base, ft = read_model(tmp_path / "lin"), read_model(tmp_path / "base"), read_model(tmp_path / "ft0")
    torch.testing.assert_close(out["model.layers.0.w"], (ft["model.layers.0.w"] + 3 * base["model.layers.0.w"]) / 4)


def test_slerp_and_nuslerp_interpolate_linearly_at_zero_norm():
    v = T([3.0, -4.0])
    torch.testing.assert_close(slerp_tensors(0.5, torch.zeros(2), v), 0.5 * v)  # spherical gave 0.707 * v
    torch.testing.assert_close(slerp_tensors(0.25, v, torch.zeros(2)), 0.75 * v)
    torch.testing.assert_close(nuslerp_tensors(0.5, torch.zeros(2), v, False, True), 0.5 * v)
    rows = torch.stack([torch.zeros(2), v])  # row-wise: only the zero row falls back
    out = nuslerp_tensors(0.5, rows, torch.stack([v, T([4.0, 3.0])]), False, False)
    torch.testing.assert_close(out[0], 0.5 * v)
    torch.testing.assert_close(out[1], (v + T([4.0, 3.0])) * math.sqrt(0.5))  # orthogonal rows: spherical


def test_nuslerp_with_a_frozen_tensor_moves_half_way(tmp_path):
    """A tensor one fine-tune left frozen has a zero task vector: nuslerp of it and tau at t = 0.5 is 0.5 tau."""
    family(tmp_path, n=2)
    write_model(tmp_path / "ft0", read_model(tmp_path / "base"))
    data = recipe(tmp_path, "nuslerp", {"weight": 1.0})
    merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False))
    out, base, ft = read_model(tmp_path / "out"), read_model(tmp_path / "base"), read_model(tmp_path / "ft1")
    for k in base:
        torch.testing.assert_close(out[k], base[k] + 0.5 * (ft[k] - base[k]))


def test_della_ranks_tied_magnitudes_by_position_on_every_device():
    x = T([[1.0, -1.0, 1.0, -1.0, 0.5]])
    p = rank_keep_probabilities(x, 0.5, 0.2)
    # ascending ranks: 0.5 -> 0, then the four ties in position order -> 1, 2, 3, 4
    torch.testing.assert_close(p, 0.3 + T([[1.0, 2.0, 3.0, 4.0, 0.0]]) / 4 * 0.4, rtol=0, atol=1e-7)


def test_the_keyed_draw_is_splitmix64():
    """SplitMix64's first output for seed 0 is 0xE220A8397B1DCDAF: its top 32 bits are the draw of index 0."""
    assert int(random_draws(0, 0, 1)[0]) == 0xE220A839
    assert int(kernels.keyed_draw(np.uint64(0), 0)) == 0xE220A839


def test_a_missing_seed_fails_the_same_on_both_paths(tmp_path):
    family(tmp_path)
    plan = plan_recipe(parse_recipe(recipe(tmp_path, "dare_linear", {"weight": 1.0, "density": 0.5})))
    tensor = plan.tensors[0]
    unseeded = dataclasses.replace(tensor, models=tuple(dataclasses.replace(m, seed=None) for m in tensor.models))
    from taskvec.io.checkpoint import open_checkpoint
    merger = FusedMerger(plan.method, open_checkpoint(tmp_path / "base"), plan.inputs)
    with pytest.raises(RuntimeError, match="without a seed"):
        merger.merge(unseeded)
    with pytest.raises(RuntimeError, match="without a seed"):
        plan.method.fn(None, [torch.ones(3)], unseeded.models[:1], unseeded.params)


@pytest.mark.parametrize("fused", ["0", "1"])
def test_a_near_zero_sum_of_agreeing_weights_divides_by_one_on_both_paths(tmp_path, monkeypatch, fused):
    family(tmp_path, n=1)
    monkeypatch.setenv("TASKVEC_FUSED", fused)
    data = recipe(tmp_path, "ties", {"weight": 5e-9, "density": 1.0}, n=1)
    merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False))
    out, base, ft = read_model(tmp_path / "out"), read_model(tmp_path / "base"), read_model(tmp_path / "ft0")
    for k in base:  # tau * 5e-9 / 1, not tau * 5e-9 / 5e-9
        torch.testing.assert_close(out[k], base[k] + (ft[k] - base[k]) * 5e-9)
