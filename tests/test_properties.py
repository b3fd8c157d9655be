"""Algebraic laws of task arithmetic, checked on random small checkpoints written to disk."""

import itertools

import torch
from conftest import read_model, write_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskvec import MergeOptions, TaskVector, merge_recipe, parse_recipe

_counter = itertools.count()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def model_family(draw, n_models: int = 3):
    """A base and n fine-tunes of it: same names, shapes and dtypes; an integer buffer rides along."""
    n_tensors = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))) for _ in range(n_tensors)]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    base = {f"layers.{i}.weight": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shapes)}
    base["buffer.ids"] = torch.arange(5, dtype=torch.int64)
    models = []
    for _ in range(n_models):
        m = {k: (v.float() + 0.1 * torch.randn(v.shape, generator=g)).to(dtype) if v.is_floating_point() else v
             for k, v in base.items()}
        models.append(m)
    return base, models


def exact_for_halves(t: torch.Tensor) -> dict:
    """float16/bfloat16 values (and integers) survive float32 arithmetic exactly here: the difference of two nearby
    half-precision numbers and its sum back are exact in float32, so the round trip must give the same bits."""
    return {} if t.dtype == torch.float32 else {"rtol": 0, "atol": 0}


def fresh(tmp_path_factory):
    return tmp_path_factory.mktemp(f"case{next(_counter)}")


def quiet(**kw) -> MergeOptions:
    return MergeOptions(progress=False, **kw)


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(model_family(n_models=1))
def test_extract_then_apply_returns_the_finetuned_model(tmp_path_factory, family):
    base, (ft,) = family
    d = fresh(tmp_path_factory)
    write_model(d / "base", base)
    write_model(d / "ft", ft)
    TaskVector.from_models(d / "base", d / "ft").save(d / "tv", options=quiet())
    TaskVector.load(d / "tv").apply(d / "base", d / "out", options=quiet())
    out = read_model(d / "out")
    assert set(out) == set(ft)
    for name, t in ft.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        torch.testing.assert_close(out[name], t, **exact_for_halves(t))


@SETTINGS
@given(model_family(n_models=1))
def test_adding_then_subtracting_a_task_vector_gives_the_base_back(tmp_path_factory, family):
    base, (ft,) = family
    d = fresh(tmp_path_factory)
    write_model(d / "base", base)
    write_model(d / "ft", ft)
    TaskVector.from_models(d / "base", d / "ft").save(d / "tv", options=quiet())
    expr = TaskVector.load(d / "tv") - TaskVector.from_models(d / "base", d / "ft")  # two distinct terms
    assert len(expr.terms) == 2
    expr.apply(d / "base", d / "out", options=quiet())
    out = read_model(d / "out")
    for name, t in base.items():
        torch.testing.assert_close(out[name], t, **exact_for_halves(t))


@SETTINGS
@given(model_family(n_models=3))
def test_analogy_matches_its_formula(tmp_path_factory, family):
    base, (a, b, c) = family
    d = fresh(tmp_path_factory)
    for name, m in {"base": base, "a": a, "b": b, "c": c}.items():
        write_model(d / name, m)
    tv = {k: TaskVector.from_models(d / "base", d / k) for k in "abc"}
    (tv["c"] + (tv["b"] - tv["a"])).apply(d / "base", d / "out", options=quiet())
    out = read_model(d / "out")
    for name, t in base.items():
        if not t.is_floating_point():
            assert torch.equal(out[name], t)
            continue
        want = (base[name].float() + (c[name].float() - base[name].float()) + (b[name].float() - base[name].float())
                - (a[name].float() - base[name].float())).to(t.dtype)
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        torch.testing.assert_close(out[name], want)


@SETTINGS
@given(model_family(n_models=2), st.sampled_from([1, 2, 3]), st.sampled_from([1, 3]))
def test_sharded_and_unsharded_inputs_and_thread_counts_give_identical_outputs(tmp_path_factory, family, shards, workers):
    base, models = family
    d = fresh(tmp_path_factory)
    for sharding, sub in ((1, "flat"), (shards, "sharded")):
        write_model(d / sub / "base", base, shards=sharding)
        for i, m in enumerate(models):
            write_model(d / sub / f"m{i}", m, shards=sharding)
    outs = []
    for sub, w, shard_size in (("flat", 1, 5 * 10**9), ("sharded", workers, 64)):
        recipe = parse_recipe({
            "merge_method": "task_arithmetic", "base_model": str(d / sub / "base"),
            "models": [{"model": str(d / sub / f"m{i}"), "parameters": {"weight": 0.3 + i}} for i in range(2)],
        })
        merge_recipe(recipe, d / f"out_{sub}", quiet(workers=w, shard_size=shard_size))
        outs.append(read_model(d / f"out_{sub}"))
    assert set(outs[0]) == set(outs[1]) == set(base)
    for name in base:
        assert outs[0][name].dtype == base[name].dtype and outs[0][name].shape == base[name].shape
        assert torch.equal(outs[0][name], outs[1][name]), name


@SETTINGS
@given(model_family(n_models=2), st.floats(-2, 2), st.floats(-2, 2))
def test_task_arithmetic_recipe_equals_in_memory_arithmetic(tmp_path_factory, family, wa, wb):
    base, (a, b) = family
    d = fresh(tmp_path_factory)
    for name, m in {"base": base, "a": a, "b": b}.items():
        write_model(d / name, m)
    recipe = parse_recipe({
        "merge_method": "task_arithmetic", "base_model": str(d / "base"), "parameters": {"lambda": 0.5},
        "models": [{"model": str(d / "a"), "parameters": {"weight": wa}}, {"model": str(d / "b"), "parameters": {"weight": wb}}],
    })
    merge_recipe(recipe, d / "out", quiet())
    out = read_model(d / "out")
    for name, t in base.items():
        if t.is_floating_point():
            want = base[name].float() + 0.5 * (wa * (a[name].float() - t.float()) + wb * (b[name].float() - t.float()))
            torch.testing.assert_close(out[name], want.to(t.dtype))
        else:
            assert torch.equal(out[name], t)
