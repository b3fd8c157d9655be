"""Merge methods on small hand-computed tensors, their limits, and invariants."""

import math

import pytest
import torch
from conftest import read_model, write_model
from hypothesis import given, settings
from hypothesis import strategies as st

from taskvec import MergeOptions, merge_recipe, parse_recipe
from taskvec.methods import ModelArgs, get_method
from taskvec.methods.sparsify import magnitude_mask, outlier_mask, rank_keep_probabilities
from taskvec.selection import TorchMagnitudes, ranked

T = torch.tensor


def call(name, base, tensors, model_params, **params):
    """Run a registered method's pure function with its defaults filled in, as the engine does."""
    method = get_method(name)
    full = {p.name: p.default for p in method.params}
    full.update(params)
    mps = []
    for i, mp in enumerate(model_params):
        values = {p.name: p.default for p in method.model_params}
        values.update({k: v for k, v in mp.items() if k != "seed"})
        mps.append(ModelArgs(values, seed=mp.get("seed", 1000 + i)))
    out = method.fn(base, [t.clone() for t in tensors], mps, full)
    return base + out if method.inputs == "deltas" else out


TAUS = [T([4.0, -1.0, 0.5, -3.0]), T([-2.0, 3.0, -0.2, 1.0]), T([1.0, -2.0, 3.0, -4.0])]
ZERO = torch.zeros(4)


def test_ties_by_hand_trim_elect_disjoint_mean():
    # trim to density 0.5 (2 of 4 entries each):
    assert torch.equal(TAUS[0] * magnitude_mask(TAUS[0], 0.5), T([4.0, 0, 0, -3.0]))
    assert torch.equal(TAUS[1] * magnitude_mask(TAUS[1], 0.5), T([-2.0, 3.0, 0, 0]))
    assert torch.equal(TAUS[2] * magnitude_mask(TAUS[2], 0.5), T([0, 0, 3.0, -4.0]))
    # elected signs by total mass: (4-2, 3, 3, -3-4) -> (+, +, +, -)
    # disjoint mean over agreeing non-zero entries: (4/1, 3/1, 3/1, (-3-4)/2)
    out = call("ties", ZERO, TAUS, [{"weight": 1.0, "density": 0.5}] * 3)
    assert out.tolist() == [4.0, 3.0, 3.0, -3.5]


def test_ties_count_consensus_differs_from_mass():
    taus = [T([1.0]), T([1.0]), T([-5.0])]
    by_mass = call("ties", T([0.0]), taus, [{"weight": 1.0}] * 3)
    by_count = call("ties", T([0.0]), taus, [{"weight": 1.0}] * 3, consensus_method="count")
    assert by_mass.tolist() == [-5.0] and by_count.tolist() == [1.0]


def test_ties_with_full_density_and_agreeing_signs_is_task_arithmetic():
    taus = [T([1.0, -2.0, 0.5]), T([3.0, -1.0, 0.25])]
    base = T([10.0, 10.0, 10.0])
    mps = [{"weight": 0.5, "density": 1.0}, {"weight": 2.0, "density": 1.0}]
    for normalize in (False, True):
        ties = call("ties", base, taus, mps, normalize=normalize)
        ta = call("task_arithmetic", base, taus, mps, normalize=normalize)
        torch.testing.assert_close(ties, ta)


def test_dare_with_full_density_is_task_arithmetic():
    mps = [{"weight": 0.7, "density": 1.0}, {"weight": -0.3, "density": 1.0}, {"weight": 1.0, "density": 1.0}]
    ta = call("task_arithmetic", ZERO, TAUS, mps)
    torch.testing.assert_close(call("dare_linear", ZERO, TAUS, mps), ta)
    agree = [t.abs() for t in TAUS]
    torch.testing.assert_close(call("dare_ties", ZERO, agree, mps[:1] * 3), call("task_arithmetic", ZERO, agree, mps[:1] * 3))


def test_dare_keeps_survivors_rescaled_by_one_over_density():
    tau = torch.linspace(1, 2, 10_000)
    out = call("dare_linear", torch.zeros_like(tau), [tau], [{"weight": 1.0, "density": 0.25}])
    kept = out != 0
    torch.testing.assert_close(out[kept], tau[kept] / 0.25)
    assert abs(kept.float().mean().item() - 0.25) < 0.02  # 10,000 draws: sd 0.0043
    again = call("dare_linear", torch.zeros_like(tau), [tau], [{"weight": 1.0, "density": 0.25}])
    assert torch.equal(out, again)  # same seed, same mask
    unscaled = call("dare_linear", torch.zeros_like(tau), [tau], [{"weight": 1.0, "density": 0.25}], rescale=False)
    torch.testing.assert_close(unscaled[kept], tau[kept])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_subnormal=False), min_size=1, max_size=6), st.floats(0.1, 0.9),
       st.integers(0, 2**31))
def test_dare_preserves_the_expected_value(values, density, seed):
    """Each entry is kept with probability p and scaled by 1/p: its mean over N = 20,000 independent draws is within
    6 standard deviations, |tau| * sqrt((1 - p) / (p N)), of tau."""
    n = 20_000
    tau = T(values)
    drawn = call("dare_linear", torch.zeros(len(values) * n), [tau.repeat(n)],
                 [{"weight": 1.0, "density": density, "seed": seed}]).reshape(n, -1)
    sd = tau.abs() * math.sqrt((1 - density) / (density * n))
    assert ((drawn.mean(dim=0) - tau).abs() <= 6 * sd + 1e-6).all()


def test_breadcrumbs_by_hand_drops_small_and_outliers():
    tau = T([0.1, -0.5, 2.0, -8.0, 1.0, 0.3, -0.05, 4.0, 0.7, -1.5])
    # density 0.5 keeps 5; gamma 0.1 drops the 1 largest (-8); the 4 smallest go too
    assert torch.equal(tau * outlier_mask(tau, 0.5, 0.1), T([0, 0, 2.0, 0, 1.0, 0, 0, 4.0, 0.7, -1.5]))
    out = call("breadcrumbs", torch.zeros(10), [tau], [{"weight": 1.0, "density": 0.5, "gamma": 0.1}])
    assert torch.equal(out, T([0, 0, 2.0, 0, 1.0, 0, 0, 4.0, 0.7, -1.5]))


def test_della_probabilities_by_hand_and_rescaling():
    tau = T([1.0, -3.0, 2.0, 0.5])
    # magnitude ranks (ascending) 1, 3, 2, 0 -> p = 0.3 + rank / 3 * 0.4
    torch.testing.assert_close(rank_keep_probabilities(tau, 0.5, 0.2), T([0.3 + 0.4 / 3, 0.7, 0.3 + 0.8 / 3, 0.3]))
    probs = rank_keep_probabilities(tau, 0.5, 0.2)
    out = call("della_linear", ZERO, [tau], [{"weight": 1.0, "density": 0.5, "epsilon": 0.2}])
    kept = out != 0
    torch.testing.assert_close(out[kept], (tau / probs)[kept])
    with pytest.raises(ValueError, match="density - epsilon"):
        rank_keep_probabilities(tau, 0.1, 0.2)


def test_model_stock_by_hand():
    base = T([0.0, 0.0])
    # task vectors 60 degrees apart: cos 0.5, t = 2 * 0.5 / (1 + 0.5) = 2/3 of the average (0.75, sqrt(3)/4)
    out = call("model_stock", base, [T([1.0, 0.0]), T([0.5, math.sqrt(3) / 2])], [{}, {}])
    torch.testing.assert_close(out, T([0.5, math.sqrt(3) / 6]))
    # orthogonal task vectors: t = 0, the base
    torch.testing.assert_close(call("model_stock", base, [T([1.0, 0.0]), T([0.0, 1.0])], [{}, {}]), base)


def test_model_stock_of_identical_models_is_that_model():
    w = T([[1.0, -2.0], [0.5, 3.0]])
    base = torch.zeros(2, 2)
    for filter_wise in (False, True):
        out = call("model_stock", base, [w, w, w], [{}, {}, {}], filter_wise=filter_wise)
        torch.testing.assert_close(out, w)


def test_slerp_by_hand_and_endpoints():
    v0, v1 = T([1.0, 0.0]), T([0.0, 1.0])
    torch.testing.assert_close(call("slerp", v0, [v1], [{}], t=0.5), T([math.sqrt(0.5), math.sqrt(0.5)]))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    torch.testing.assert_close(call("slerp", a, [b], [{}], t=0.0), a)
    torch.testing.assert_close(call("slerp", a, [b], [{}], t=1.0), b)
    parallel = call("slerp", T([1.0, 1.0]), [T([2.0, 2.0])], [{}], t=0.25)  # |cos| > 0.9995: linear
    torch.testing.assert_close(parallel, T([1.25, 1.25]))


def test_nuslerp_weights_set_t_and_base_makes_it_act_on_task_vectors():
    base = T([1.0, 1.0])
    a, b = T([2.0, 1.0]), T([1.0, 2.0])  # task vectors (1, 0) and (0, 1)
    out = call("nuslerp", base, [a, b], [{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, base + T([math.sqrt(0.5), math.sqrt(0.5)]))
    torch.testing.assert_close(call("nuslerp", base, [a, b], [{"weight": 1.0}, {"weight": 0.0}]), a)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "della", "linear",
                        "model_stock"]), st.integers(0, 1000), st.permutations([0, 1, 2]))
def test_reordering_models_with_the_same_parameters_changes_nothing(name, seed, order):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 5, generator=g)
    models = [base + torch.randn(6, 5, generator=g) for _ in range(3)]
    weights = [0.5, 0.3, 0.8]
    mps = [{"weight": w, "density": 0.6, "seed": 77 + i} for i, w in enumerate(weights)]
    method = get_method(name)
    xs = [m - base for m in models] if method.inputs == "deltas" else models
    ref = call(name, base, xs, mps)
    permuted = call(name, base, [xs[i] for i in order], [mps[i] for i in order])
    torch.testing.assert_close(permuted, ref)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, -0.0, 1e-30, 0.5, -0.5, 1.5, 3.0, -7.25, 1e20, 2.5e-3]), min_size=1,
                         max_size=20), min_size=1, max_size=4), st.data())
def test_global_ranks_are_exact(chunks, data):
    tensors = [T(c) for c in chunks]
    everything = torch.cat(tensors).abs().sort().values
    n = everything.numel()
    ranks = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=3))
    found = ranked(TorchMagnitudes(range(len(tensors)), lambda i: [tensors[i], -2 * tensors[i]]), [ranks, ranks])
    assert [r.value for r in found[0]] == [float(everything[r - 1]) for r in ranks]
    assert [r.value for r in found[1]] == [float(2 * everything[r - 1]) for r in ranks]
    for r, at in zip(ranks, found[0]):  # how many entries lie below the value, and how many equal it
        value = everything[r - 1]
        assert at.below == int((everything < value).sum()) and at.equal == int((everything == value).sum())


def _recipe(tmp_path, method, models, params=None, model_params=None):
    return parse_recipe({
        "merge_method": method, "base_model": str(tmp_path / "base"), "parameters": params or {},
        "models": [{"model": str(tmp_path / m), "parameters": {"weight": 1.0, **(model_params or {})}} for m in models],
    })


def test_global_trim_scope_ranks_the_whole_task_vector(tmp_path):
    write_model(tmp_path / "base", {"a": torch.zeros(2), "b": torch.zeros(3)})
    write_model(tmp_path / "m", {"a": T([4.0, 5.0]), "b": T([0.5, 3.0, -2.0])})
    q = MergeOptions(progress=False)
    merge_recipe(_recipe(tmp_path, "ties", ["m"], {"trim_scope": "global"}, {"density": 0.4}), tmp_path / "g", q)
    merge_recipe(_recipe(tmp_path, "ties", ["m"], {}, {"density": 0.4}), tmp_path / "t", q)
    g, t = read_model(tmp_path / "g"), read_model(tmp_path / "t")
    assert g["a"].tolist() == [4.0, 5.0] and g["b"].tolist() == [0.0, 0.0, 0.0]  # the 2 largest of all 5
    assert t["a"].tolist() == [0.0, 5.0] and t["b"].tolist() == [0.0, 3.0, 0.0]  # 1 per tensor
    merge_recipe(_recipe(tmp_path, "breadcrumbs", ["m"], {"trim_scope": "global"}, {"density": 0.4, "gamma": 0.2}),
                 tmp_path / "bc", q)  # drop the largest (5), keep the next 2 (4, 3)
    bc = read_model(tmp_path / "bc")
    assert bc["a"].tolist() == [4.0, 0.0] and bc["b"].tolist() == [0.0, 3.0, 0.0]


def test_global_trim_needs_one_density_per_model(tmp_path, cli):
    write_model(tmp_path / "base", {"layers.0.a": torch.zeros(2), "layers.1.a": torch.zeros(2)})
    write_model(tmp_path / "m", {"layers.0.a": T([1.0, 2.0]), "layers.1.a": T([3.0, 4.0])})
    recipe = _recipe(tmp_path, "ties", ["m"], {"trim_scope": "global"}, {"density": [0.2, 0.8]})
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    code, out = cli("merge", tmp_path / "r.yaml", "--out", tmp_path / "o", ok=False)
    assert code == 2 and "trim_scope global needs one density per model" in out


def test_random_methods_are_reproducible_and_independent_of_threads_and_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.w": torch.randn(32, 32, generator=g) for i in range(6)}
    write_model(tmp_path / "base", base)
    for m in ("x", "y", "z"):
        write_model(tmp_path / m, {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()})
    outs = []
    for order, workers, seed in ((["x", "y", "z"], 1, 5), (["z", "x", "y"], 3, 5), (["x", "y", "z"], 2, 5),
                                 (["x", "y", "z"], 1, 6)):
        out = tmp_path / f"out{len(outs)}"
        merge_recipe(_recipe(tmp_path, "dare_ties", order, {}, {"density": 0.5}), out,
                     MergeOptions(progress=False, workers=workers, seed=seed))
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1] == outs[2] != outs[3]


@pytest.mark.parametrize("method,extra", [("slerp", {"t": 0.3}), ("nuslerp", {}), ("model_stock", {}),
                                          ("breadcrumbs", {}), ("della_linear", {}), ("linear", {})])
def test_every_method_runs_end_to_end_through_a_recipe(tmp_path, method, extra):
    g = torch.Generator().manual_seed(1)
    base = {"layers.0.w": torch.randn(8, 8, generator=g), "layers.1.w": torch.randn(8, 8, generator=g)}
    write_model(tmp_path / "base", base)
    n = 1 if method == "slerp" else 2
    for i in range(n):
        write_model(tmp_path / f"m{i}", {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    model_params = {} if method in ("slerp", "model_stock") else {"weight": 1.0}
    if method in ("breadcrumbs", "della_linear"):
        model_params["density"] = 0.5
    data = {"merge_method": method, "base_model": str(tmp_path / "base"), "parameters": extra,
            "models": [{"model": str(tmp_path / f"m{i}"), "parameters": model_params} for i in range(n)]}
    if method == "linear":  # linear would count the base as one more weighted model (as mergekit does)
        del data["base_model"]
    merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False))
    out = read_model(tmp_path / "out")
    assert set(out) == set(base) and all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "breadcrumbs_ties", "dare_ties",
                                    "della_linear"])
def test_merging_in_blocks_of_rows_equals_merging_whole_tensors(tmp_path, monkeypatch, method):
    """The reference path (the fused kernels are checked against it elsewhere): random masks too are keyed by an
    entry's position, so blocks change nothing."""
    import dataclasses

    from taskvec.methods import _REGISTRY

    monkeypatch.setenv("TASKVEC_FUSED", "0")

    g = torch.Generator().manual_seed(3)
    base = {"layers.0.w": torch.randn(37, 11, generator=g), "layers.0.b": torch.randn(37, generator=g)}
    write_model(tmp_path / "base", base)
    for m in ("x", "y"):
        write_model(tmp_path / m, {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()})
    mp = {"density": 0.5} if method != "linear" and method != "task_arithmetic" else {}
    if method == "della_linear":
        mp["epsilon"] = 0.1
    recipe = _recipe(tmp_path, method, ["x", "y"], {"weight": 0.5} if method == "linear" else {}, mp)
    monkeypatch.setattr("taskvec.engine.blocks.BLOCK_ELEMENTS", 50)  # blocks of 4 rows
    merge_recipe(recipe, tmp_path / "blocks", MergeOptions(progress=False))
    monkeypatch.setitem(_REGISTRY, method, dataclasses.replace(_REGISTRY[method], granularity="tensor"))
    merge_recipe(recipe, tmp_path / "whole", MergeOptions(progress=False))
    blocks, whole = read_model(tmp_path / "blocks"), read_model(tmp_path / "whole")
    for k in base:
        assert torch.equal(blocks[k], whole[k]), k


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=300), st.floats(0.001, 1.0), st.floats(0.0, 0.3),
       st.integers(1, 7))
def test_selections_keep_exactly_the_stable_sort_ranks_even_with_ties(values, density, gamma, blocks):
    """Quantised task vectors (bfloat16 fine-tunes) tie a lot: the masks keep exactly the intended count, ties going
    to the earliest entries -- the same set as a stable sort -- also when the tensor is cut in blocks."""
    from taskvec.methods.sparsify import magnitude_mask, outlier_mask
    from taskvec.selection import band, keep_count, top_k

    x = T(values, dtype=torch.float32) * 0.25
    n = x.numel()
    mag = x.abs()
    by_magnitude = torch.sort(mag, stable=True).indices  # ascending, ties in index order
    top = torch.sort(-mag, stable=True).indices[:keep_count(n, density)]
    want_top = torch.zeros(n, dtype=torch.bool)
    want_top[top] = True
    n_keep = int(density * n) if density < 1 else n
    n_bottom = max(0, n - n_keep - int(gamma * n)) if density < 1 else 0
    want_band = torch.zeros(n, dtype=torch.bool)
    want_band[by_magnitude[n_bottom:n_bottom + n_keep]] = True

    assert torch.equal(magnitude_mask(x, density), want_top)
    assert torch.equal(outlier_mask(x, density, gamma), want_band)
    source = TorchMagnitudes.of(mag)
    top_sel, band_sel = top_k(source, n, [density])[0], band(source, n, [density], [gamma])[0]
    cuts = sorted({0, n} | {n * i // blocks for i in range(1, blocks)})
    got_top = torch.cat([magnitude_mask(x[a:b], density, top_sel, a) for a, b in zip(cuts, cuts[1:])])
    got_band = torch.cat([outlier_mask(x[a:b], density, gamma, band_sel, a) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(got_top, want_top) and torch.equal(got_band, want_band)


@settings(max_examples=30, deadline=None)
@given(st.integers(70_000, 200_000), st.integers(0, 2**31), st.sampled_from([3, 1000, 10**9]), st.data())
def test_selection_by_histograms_is_exact(n, seed, levels, data):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g) * levels).floor()  # 3 levels: huge ties; 1e9: all distinct
    r = data.draw(st.integers(1, n))
    assert ranked(TorchMagnitudes.of(x), [[r]])[0][0].value == float(torch.kthvalue(x, r).values)
