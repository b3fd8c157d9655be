"""The methods mergekit 0.1.5 added (sce, karcher, multislerp, nearswap, arcee_fusion, ram, ramplus_tl): small
examples whose answers are worked out by hand, the invariances each promises, and a merge through the engine.
(Their agreement with mergekit itself is benchmarks/mergekit_parity.py's job.)"""

import math

import pytest
import torch
from conftest import read_model, run, toy_tensors, write_model
from hypothesis import given, settings
from hypothesis import strategies as st

from taskvec import parse_recipe
from taskvec.errors import TaskvecError
from taskvec.methods import ModelArgs, get_method
from taskvec.methods.slerp import slerp_tensors

T = torch.tensor
NEW = ["sce", "karcher", "multislerp", "nearswap", "arcee_fusion", "ram", "ramplus_tl"]


def call(name, base, tensors, model_params=None, **params):
    """A method's pure function with its defaults filled in, as the engine calls it; deltas methods get task
    vectors and their result is added to the base."""
    method = get_method(name)
    full = {p.name: p.default for p in method.params}
    full.update(params)
    models = []
    for mp in model_params or [{}] * len(tensors):
        values = {p.name: p.default for p in method.model_params}
        values.update(mp)
        models.append(ModelArgs(values))
    if method.inputs == "deltas":
        return base + method.fn(base, [t - base for t in tensors], models, full)
    return method.fn(base, [t.clone() for t in tensors], models, full)


def deg(angle):
    return T([math.cos(math.radians(angle)), math.sin(math.radians(angle))])


def test_all_seven_are_registered_with_mergekits_parameters():
    expected = {"sce": {"select_topk": 1.0}, "karcher": {"max_iter": 10, "tol": 1e-5},
                "multislerp": {"normalize_weights": True, "eps": 1e-8}, "ram": {"epsilon": 1e-5},
                "ramplus_tl": {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}, "arcee_fusion": {}}
    for name, defaults in expected.items():
        assert {p.name: p.default for p in get_method(name).params} == defaults, name
    assert [p.name for p in get_method("nearswap").params] == ["t"]
    assert [p.name for p in get_method("multislerp").model_params] == ["weight"]
    assert {get_method(n).base for n in NEW} == {"required", "optional", "weighted"}
    assert get_method("karcher").base == "weighted" and get_method("multislerp").base == "optional"


# ---- sce --------------------------------------------------------------------------------------------------------

def test_sce_weights_by_mean_square_and_erases_minority_signs():
    """tau1 = [2, -1, 0.5, 3], tau2 = [1, 1, -0.5, 2]: mean squares 57/16 and 25/16, so weights 57/82 and 25/82.
    The summed signs elect + everywhere (the tie at entry 1 goes to +): entries 1 and 2 keep one model each."""
    base = T([0.5, 0.0, -1.0, 2.0])
    out = call("sce", base, [base + T([2.0, -1.0, 0.5, 3.0]), base + T([1.0, 1.0, -0.5, 2.0])])
    torch.testing.assert_close(out, base + T([139 / 82, 1.0, 0.5, 221 / 82]))


def test_sce_selects_the_entries_where_the_models_differ_most():
    """Variances [1, 0, 0, 4]: two are non-zero, select_topk 0.5 keeps one (the last); entry 2, which both models
    changed alike, is dropped -- selection keeps disagreement. With select_topk 1 everything takes part."""
    base = torch.zeros(4)
    models = [T([3.0, 0.0, 1.0, -2.0]), T([1.0, 0.0, 1.0, 2.0])]
    torch.testing.assert_close(call("sce", base, models, select_topk=0.5), T([0.0, 0.0, 0.0, 2.0]))
    # weights 0.7 / 0.3; entry 3's signs cancel (+ elected), so only the second model's +2 counts
    torch.testing.assert_close(call("sce", base, models), T([2.4, 0.0, 1.0, 2.0]))


def test_sce_ties_in_variance_go_to_the_earliest_entries():
    base = torch.zeros(4)
    out = call("sce", base, [T([1.0, 1.0, 1.0, 1.0]), T([-1.0, -1.0, -1.0, -1.0])], select_topk=0.5)
    torch.testing.assert_close(out, T([1.0, 1.0, 0.0, 0.0]))


def test_sce_weighs_models_equally_when_their_mean_squares_are_tiny():
    """mergekit's absolute threshold: mean squares 5e-8 and 1e-8 sum below 1e-6, so the weights are equal (the
    weighted answer would be (5 * 3 + 1 * 1) / 6 * 1e-4 at entry 0)."""
    base = torch.zeros(2)
    out = call("sce", base, [T([3e-4, 1e-4]), T([1e-4, 1e-4])])
    torch.testing.assert_close(out, T([2e-4, 1e-4]))
    big = call("sce", base, [T([3.0, 1.0]), T([1.0, 1.0])])  # above it: weighted by 5 and 1
    torch.testing.assert_close(big, T([16 / 6, 1.0]))


# ---- karcher ----------------------------------------------------------------------------------------------------

def test_karcher_of_two_vectors_is_their_normalised_midpoint_at_the_mean_length():
    out = call("karcher", None, [T([1.0, 0.0, 0.0]), T([0.0, 1.0, 0.0])])
    torch.testing.assert_close(out, T([1.0, 1.0, 0.0]) / math.sqrt(2))
    out = call("karcher", None, [T([2.0, 0.0]), T([0.0, 4.0])])  # lengths 2 and 4: mean 3
    torch.testing.assert_close(out, 3 * deg(45))


def test_karcher_is_the_spherical_mean_not_the_euclidean_one():
    """Directions at 0, 0 and 90 degrees: their mean on the circle is at 30 degrees; the normalised Euclidean mean,
    (2, 1) / sqrt(5), is at 26.57 -- what zero fixed-point steps give."""
    points = [deg(0), deg(0), deg(90)]
    torch.testing.assert_close(call("karcher", None, points), deg(30), rtol=0, atol=1e-6)
    torch.testing.assert_close(call("karcher", None, points, max_iter=0), deg(math.degrees(math.atan(0.5))),
                               rtol=0, atol=1e-6)


def test_karcher_leaves_directionless_inputs_out_of_the_direction_but_not_the_length():
    out = call("karcher", None, [T([2.0, 0.0]), T([0.0, 2.0]), T([0.0, 0.0])])
    torch.testing.assert_close(out, 4 / 3 * deg(45))
    torch.testing.assert_close(call("karcher", None, [torch.zeros(3), torch.zeros(3)]), torch.zeros(3))


# ---- multislerp -------------------------------------------------------------------------------------------------

def test_multislerp_of_two_at_equal_weights_is_slerp_half_way():
    a, b = T([3.0, 0.0, 4.0]), T([0.0, 5.0, 0.0])  # equal lengths
    out = call("multislerp", None, [a, b], [{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, slerp_tensors(0.5, a, b))


def test_multislerp_is_the_normalised_weighted_mean_of_directions_at_the_weighted_mean_length():
    """a = (1, 0), b = (0, 2), weights 3 : 1 -> direction (0.75, 0.25) normalised, length 0.75 + 0.5 = 1.25: an
    angle of 18.43 degrees, where SLERP at t = 0.25 would turn 22.5."""
    a, b = T([1.0, 0.0]), T([0.0, 2.0])
    out = call("multislerp", None, [a, b], [{"weight": 3.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, 1.25 * deg(math.degrees(math.atan(1 / 3))))
    raw = call("multislerp", None, [a, b], [{"weight": 1.5}, {"weight": 0.5}], normalize_weights=False)
    torch.testing.assert_close(raw, 2.5 * deg(math.degrees(math.atan(1 / 3))))  # length 1.5 + 1


def test_multislerp_with_a_base_interpolates_task_vectors():
    base = T([1.0, -1.0])
    out = call("multislerp", base, [base + T([2.0, 0.0]), base + T([0.0, 2.0])], [{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, base + 2 * deg(45))


def test_multislerp_without_a_direction_blends_linearly():
    out = call("multislerp", None, [T([1.0, 2.0]), T([-1.0, -2.0])], [{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, T([0.0, 0.0]))
    base = T([0.5, 0.25, -1.0])  # a tensor no fine-tune changed: the base, also for three models
    out = call("multislerp", base, [base.clone() for _ in range(3)], [{"weight": 1.0}] * 3)
    torch.testing.assert_close(out, base)


def test_multislerp_edge_cases():
    a = T([1.0, 2.0])
    assert torch.equal(call("multislerp", None, [a], [{"weight": 0.3}]), a)  # one model: as it is
    with pytest.raises(TaskvecError, match="sum to 0"):
        call("multislerp", None, [a, -a], [{"weight": 1.0}, {"weight": -1.0}])


# ---- nearswap ---------------------------------------------------------------------------------------------------

def test_nearswap_takes_near_values_and_moves_t_towards_far_ones():
    base = T([1.0, 1.0, 1.0, 1.0])
    model = base + T([0.05, -0.3, 1.0, 0.1])
    torch.testing.assert_close(call("nearswap", base, [model], t=0.1), base + T([0.05, -0.1, 0.1, 0.1]))
    torch.testing.assert_close(call("nearswap", base, [model], t=0.0), base)
    torch.testing.assert_close(call("nearswap", base, [model], t=5.0), model)


# ---- arcee_fusion -----------------------------------------------------------------------------------------------

def test_arcee_fusion_keeps_only_outlying_changes():
    """One row: one KL, so importance ranks like |change|. Sorted |change| 0.1 x4, 0.2 x3, 3: Q1 = median = 0.1
    (positions 1 and 3 of 0..7), Q3 = 0.2 (position 5); threshold 0.1 + 1.5 * 0.1 = 0.25: only 3 passes."""
    base = torch.zeros(8)
    change = T([0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1, 3.0])
    out = call("arcee_fusion", base, [base + change])
    torch.testing.assert_close(out, T([0.0] * 7 + [3.0]))


def test_arcee_fusion_ignores_changes_the_softmax_does_not_see():
    """Row 0 moves by a constant 3 (the largest change): its softmax, and KL, do not move, so its importance is 0.
    Importances 0 x4, then 0.1k, 0.2k, 0.35k, 0.4k: Q1 = median = 0, Q3 = 0.2k, threshold 0.3k."""
    base = torch.zeros(2, 4)
    change = T([[3.0, 3.0, 3.0, 3.0], [0.1, 0.2, 0.35, 0.4]])
    out = call("arcee_fusion", base, [base + change])
    torch.testing.assert_close(out, T([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.35, 0.4]]))


def test_arcee_fusion_keeps_everything_when_most_importances_are_zero():
    """14 of 16 importances are 0 (rows 1 and 2 unchanged, row 0 shifted by a constant): Q1 = median = Q3 = 0, the
    threshold is 0, and >= keeps every entry -- the shifted row too, which a strict > would drop."""
    base = torch.zeros(4, 4)
    change = torch.zeros(4, 4)
    change[0] = 3.0
    change[3] = T([0.0, 0.0, 0.5, 2.0])
    torch.testing.assert_close(call("arcee_fusion", base, [base + change]), change)


# ---- ram, ramplus_tl --------------------------------------------------------------------------------------------

RAM_TAUS = [T([1e-6, 0.5, 0.2, 0.0]), T([0.0, 0.3, 0.0, 0.0]), T([0.0, 0.1, 0.0, -0.4])]


def test_ram_keeps_unique_changes_whole_and_averages_shared_ones():
    base = T([1.0, 2.0, 3.0, 4.0])
    out = call("ram", base, [base + t for t in RAM_TAUS])
    # entry 0: 1e-6 is below epsilon (dropped); 1: three models, mean 0.3; 2 and 3: one model each, whole
    torch.testing.assert_close(out, base + T([0.0, 0.3, 0.2, -0.4]))
    out = call("ram", base, [base + t for t in RAM_TAUS], epsilon=0.15)  # now 0.1 at entry 1 does not count
    torch.testing.assert_close(out, base + T([0.0, 0.4, 0.2, -0.4]))


def test_ramplus_scales_unique_changes_by_the_shared_to_unique_ratio():
    """Model 1 changed entries 0 (shared) and 1, 2, 3 (unique): rho 1/3; model 2 changed 0 (shared) and 4 (unique):
    rho 1, capped at alpha 0.5. With r 0.5: lambda 1 + 0.5/3 = 7/6 and 1.25."""
    t1, t2 = T([0.5, 0.2, 0.1, 0.3, 0.0, 0.0]), T([0.3, 0.0, 0.0, 0.0, 0.4, 0.0])
    base = torch.zeros(6)
    out = call("ramplus_tl", base, [t1, t2], r=0.5, alpha=0.5)
    torch.testing.assert_close(out, T([0.4, 0.2 * 7 / 6, 0.1 * 7 / 6, 0.3 * 7 / 6, 0.5, 0.0]))
    torch.testing.assert_close(call("ramplus_tl", base, [t1, t2], r=0.0), call("ram", base, [t1, t2]))


# ---- invariances ------------------------------------------------------------------------------------------------

ORDER_FREE = ["sce", "karcher", "multislerp", "ram", "ramplus_tl"]


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(ORDER_FREE), st.integers(0, 1000), st.permutations([0, 1, 2]))
def test_reordering_the_models_changes_nothing(name, seed, order):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 5, generator=g)
    models = [base + torch.randn(6, 5, generator=g) * (0.5 + i) for i in range(3)]
    models[1][0] = base[0]  # some entries one model left alone: unique vs shared for ram
    mps = [{"weight": w} for w in (0.5, 0.3, 0.8)] if name == "multislerp" else None
    params = {"select_topk": 0.6} if name == "sce" else {"epsilon": 0.3} if name.startswith("ram") else {}
    ref = call(name, base, models, mps, **params)
    permuted = call(name, base, [models[i] for i in order], mps and [mps[i] for i in order], **params)
    torch.testing.assert_close(permuted, ref, rtol=1e-5, atol=1e-6)


# ---- through the engine -----------------------------------------------------------------------------------------

RECIPES = {  # method: (global parameters, per-model parameters, models besides the base)
    "sce": ({"select_topk": 0.5}, {}, 3),
    "karcher": ({"max_iter": 4}, {}, 2),
    "multislerp": ({"eps": 1e-7}, {"weight": 0.4}, 3),
    "nearswap": ({"t": [0.3, 0.8]}, {}, 1),
    "arcee_fusion": ({}, {}, 1),
    "ram": ({"epsilon": 0.5}, {}, 3),
    "ramplus_tl": ({"r": 0.3, "alpha": 0.9, "epsilon": 0.5}, {}, 3),
}


@pytest.mark.parametrize("name", NEW)
def test_a_recipe_merges_like_the_method_applied_by_hand(tmp_path, monkeypatch, name):
    """Parameters (a layer gradient for nearswap) and the base's role reach the method; entry-wise methods merged
    in blocks of rows equal the method on whole tensors; integer tensors are copied from the base."""
    monkeypatch.setattr("taskvec.engine.blocks.BLOCK_ELEMENTS", 8)  # blocks of 2 rows
    params, model_params, n = RECIPES[name]
    base = toy_tensors(0)
    models = [toy_tensors(i + 1) for i in range(n)]
    write_model(tmp_path / "base", base)
    for i, m in enumerate(models):
        write_model(tmp_path / f"m{i}", m)
    recipe = parse_recipe({"merge_method": name, "base_model": str(tmp_path / "base"), "parameters": params,
                           "models": [{"model": str(tmp_path / f"m{i}"), "parameters": model_params}
                                      for i in range(n)]})
    run(recipe, tmp_path / "out")
    out = read_model(tmp_path / "out")
    assert set(out) == set(base)
    moved = 0
    layer_t = {"layers.0.w": 0.3, "layers.1.w": 0.8, "layers.1.b": 0.8, "embed.weight": 0.3}
    for tensor, b in base.items():
        if not b.is_floating_point():
            assert torch.equal(out[tensor], b)
            continue
        inputs = [m[tensor] for m in models]
        here = dict(params, t=layer_t[tensor]) if name == "nearswap" else params
        if name == "karcher":  # the base is one more input
            want = call(name, None, [b] + inputs, **here)
        else:
            want = call(name, b, inputs, [model_params] * n if model_params else None, **here)
        torch.testing.assert_close(out[tensor], want, rtol=1e-5, atol=1e-6, msg=f"{name} {tensor}")
        moved += not torch.equal(out[tensor], b)
    assert moved >= 3, f"{name}: only {moved} of 4 floating tensors differ from the base"


def test_recipes_are_checked_before_merging(tmp_path):
    write_model(tmp_path / "base", toy_tensors(0))
    write_model(tmp_path / "m", toy_tensors(1))
    for data, message in (
        ({"merge_method": "nearswap", "models": [{"model": str(tmp_path / "m")}]}, "needs a base_model"),
        ({"merge_method": "sce", "base_model": str(tmp_path / "base"), "parameters": {"select_topk": 0.0},
          "models": [{"model": str(tmp_path / "m")}]}, "select_topk must be in"),
        ({"merge_method": "arcee_fusion", "base_model": str(tmp_path / "base"),
          "models": [{"model": str(tmp_path / "m")}, {"model": str(tmp_path / "base")}, {"model": "x"}]},
         "at most 1 model"),
    ):
        with pytest.raises(TaskvecError, match=message):
            parse_recipe(data)
