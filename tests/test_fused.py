"""The fused kernels against the reference tensor code: the same bits for every method, option and dtype they cover."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskvec.engine import kernels
from taskvec.engine.blocks import BLOCK_ELEMENTS, row_blocks
from taskvec.errors import TaskvecError
from taskvec.engine.fused import FusedMerger, KernelMagnitudes
from taskvec.inputs import ModelInput
from taskvec.io.checkpoint import open_checkpoint
from taskvec.merge import MergeOptions, merge_recipe
from taskvec.methods import get_method
from taskvec.selection import TorchMagnitudes, top_k
from taskvec.recipe import Recipe

from conftest import read_model, write_model

ROWS = BLOCK_ELEMENTS // 128 + 37  # a 128-column tensor of this many rows spans two blocks, the second partial
CASES = [
    ("linear", [{"weight": 0.5}, {"weight": 0.3}, {"weight": 1.1}], {}),
    ("linear", [{"weight": 0.5}, {"weight": -0.3}, {"weight": 1.1}], {"normalize": False}),
    ("task_arithmetic", [{"weight": 0.5}, {"weight": -0.3}, {"weight": 1.1}], {}),
    ("task_arithmetic", [{"weight": 0.5}, {"weight": 0.3}, {"weight": 1.1}], {"normalize": True, "lambda": 0.7}),
    ("ties", [{"weight": 1.0, "density": 0.5}] * 3, {}),
    ("ties", [{"weight": 0.7, "density": 0.2}, {"weight": -0.4, "density": 0.9}, {"weight": 1.0, "density": 1.0}],
     {"normalize": False, "lambda": 1.3}),
    ("ties", [{"weight": 1.0, "density": 0.3}, {"weight": 1.0, "density": 0.001}, {"weight": 2.0, "density": 0.6}],
     {}),
    ("ties", [{"weight": 1.0, "density": 0.3}] * 3, {"trim_scope": "global"}),
    ("dare_ties", [{"weight": 1.0, "density": 0.5}] * 3, {}),
    ("dare_ties", [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.01}, {"weight": 1.0, "density": 1.0}],
     {"normalize": True}),
    ("dare_linear", [{"weight": 1.0, "density": 0.3}] * 3, {"rescale": False}),
    ("dare_linear", [{"weight": 0.2, "density": 0.3}] * 3, {"normalize": True, "lambda": 2.0}),
]


def quantised_models(root, dtypes, unchanged=0.0):
    """A base and three fine-tunes whose task vectors take few distinct values (many ties at any threshold) and
    are often exactly zero (more so with `unchanged`, the fraction of entries a fine-tune leaves as they are), in a
    big two-block tensor, a small matrix and a vector."""
    g = torch.Generator().manual_seed(7)
    shapes = {"big.weight": (ROWS, 128), "small.weight": (5, 7), "norm.weight": (37,), "empty.weight": (0, 4)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    write_model(root / "base", {k: v.to(dtypes[0]) for k, v in base.items()})
    for i, dtype in enumerate(dtypes[1:]):
        ft = {k: v + torch.randint(-2, 3, v.shape, generator=g) / 16 * (torch.rand(v.shape, generator=g) >= unchanged)
              for k, v in base.items()}
        write_model(root / f"ft{i}", {k: v.to(dtype) for k, v in ft.items()})
    return root


def merge_both(root, method, model_params, params, out_dtype, monkeypatch, workers=2):
    recipe = Recipe.model_validate({
        "merge_method": method, "dtype": out_dtype, "parameters": params,
        "models": [{"model": str(root / f"ft{i}"), "parameters": p} for i, p in enumerate(model_params)],
        **({} if method == "linear" else {"base_model": str(root / "base")}),  # linear's base is one of the models
    })
    calls = []
    original = FusedMerger.merge
    monkeypatch.setattr(FusedMerger, "merge", lambda self, *a: calls.append(1) or original(self, *a))
    outputs = []
    for fused in ("0", "1"):
        monkeypatch.setenv("TASKVEC_FUSED", fused)
        out = root / f"out-{method}-{fused}"
        merge_recipe(recipe, out, MergeOptions(force=True, progress=False, workers=workers))
        outputs.append(read_model(out))
    return outputs, len(calls)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_int = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.dtype == b.dtype and torch.equal(a.view(as_int), b.view(as_int))


@pytest.mark.parametrize("method,model_params,params", CASES)
@pytest.mark.parametrize("dtypes,out_dtype", [
    ((torch.bfloat16,) * 4, "bfloat16"),
    ((torch.float32, torch.float32, torch.bfloat16, torch.float16), "float32"),
    ((torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32), "float16"),
])
def test_fused_equals_reference(tmp_path, monkeypatch, method, model_params, params, dtypes, out_dtype):
    root = quantised_models(tmp_path, dtypes)
    (reference, fused), calls = merge_both(root, method, model_params, params, out_dtype, monkeypatch)
    assert calls == len(reference)  # the fused path ran for every tensor
    assert reference.keys() == fused.keys()
    for name in reference:
        assert same_bits(reference[name], fused[name]), name


def test_thresholds_tie_inside_the_block(tmp_path, monkeypatch):
    """Deltas of a few values: the per-tensor threshold is not zero and splits a tie class, so the kept set
    depends on the exact tie cut (the partial third pass)."""
    root = quantised_models(tmp_path, (torch.float32,) * 4)
    merger = FusedMerger(get_method("ties"), open_checkpoint(root / "base"),
                         [ModelInput(open_checkpoint(root / f"ft{i}")) for i in range(3)])
    name, shape = "big.weight", (ROWS, 128)
    densities = [0.3, 0.05, 0.7]
    source = KernelMagnitudes(merger, name, row_blocks(shape, "entry"), [0, 1, 2])
    found = top_k(source, math.prod(shape), densities, exact_zeros=False)
    base = merger.base.read(name)
    for selection, inp, density in zip(found, merger.inputs, densities):
        threshold, cut = selection.threshold, selection.cut
        magnitudes = (inp.checkpoint.read(name) - base).abs().reshape(-1)
        expected = top_k(TorchMagnitudes.of(magnitudes), magnitudes.numel(), [density], exact_zeros=False)[0]
        expected_threshold, expected_cut = expected.threshold, expected.cut
        assert threshold == expected_threshold and threshold > 0
        kept = (magnitudes > threshold) | ((magnitudes == threshold) & (torch.arange(magnitudes.numel()) <= cut))
        expected = (magnitudes > threshold) | (
            (magnitudes == threshold) & (torch.arange(magnitudes.numel()) <= expected_cut))
        assert torch.equal(kept, expected)
        assert int(kept.sum()) == int(density * magnitudes.numel())


@pytest.mark.parametrize("density,shortcut", [(0.5, True), (0.9, True), (0.1, False)])
def test_mostly_unchanged_fine_tunes_take_the_zero_threshold_shortcut(tmp_path, monkeypatch, density, shortcut):
    """About 80% of each task vector is zero: for density >= 0.3 the threshold is zero, settled by counting zeros
    without the histograms; the result is the reference's either way."""
    root = quantised_models(tmp_path, (torch.bfloat16,) * 4, unchanged=0.75)
    histograms = []
    original = kernels.magnitude_histograms
    monkeypatch.setattr(kernels, "magnitude_histograms", lambda *a: histograms.append(1) or original(*a))
    (reference, fused), _ = merge_both(root, "ties", [{"weight": 1.0, "density": density}] * 3, {}, "bfloat16",
                                       monkeypatch)
    for name in reference:
        assert same_bits(reference[name], fused[name]), name
    assert (not histograms) == shortcut


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=64))
def test_bfloat16_rounding_matches_torch(patterns):
    """Every float32 bit pattern -- NaNs, infinities, subnormals, exact ties -- rounds to torch's bfloat16."""
    values = np.array(patterns + [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x80000000, 0x00000001, 0x7FC00001],
                      dtype=np.uint32).view(np.float32)
    ours = np.array([kernels.bfloat16_bits(v) for v in values], dtype=np.uint16)
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert (ours[nan] == 0x7FC0).all()


def test_fused_thread_counts_agree(tmp_path, monkeypatch):
    root = quantised_models(tmp_path, (torch.bfloat16,) * 4)
    one, _ = merge_both(root, "dare_ties", [{"weight": 1.0, "density": 0.4}] * 3, {}, "bfloat16", monkeypatch, 1)
    three, _ = merge_both(root, "dare_ties", [{"weight": 1.0, "density": 0.4}] * 3, {}, "bfloat16", monkeypatch, 3)
    for name in one[1]:
        assert same_bits(one[1][name], three[1][name])


def test_fused_path_refuses_non_finite(tmp_path, monkeypatch):
    root = quantised_models(tmp_path, (torch.float32,) * 4)
    bad = read_model(root / "ft1")
    bad["big.weight"][5, 3] = float("inf")
    write_model(root / "ft1", bad)
    recipe = Recipe.model_validate({
        "merge_method": "ties", "base_model": str(root / "base"),
        "models": [{"model": str(root / f"ft{i}"), "parameters": {"weight": 1.0, "density": 0.5}} for i in range(3)],
    })
    with pytest.raises(TaskvecError, match="non-finite"):
        merge_recipe(recipe, root / "out", MergeOptions(force=True, progress=False))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**40), st.integers(1, 300))
def test_kernel_draws_are_the_reference_draws(seed, offset, n):
    """DARE's draws in the kernel (uint64) and in torch (wrapping int64) are the same numbers."""
    from taskvec.methods.sparsify import random_draws
    ours = np.array([kernels.keyed_draw(np.uint64(seed), offset + j) for j in range(n)], dtype=np.int64)
    assert np.array_equal(ours, random_draws(seed, offset, n).numpy())


def test_random_draws_are_uniform_and_independent_of_blocks():
    from taskvec.methods.sparsify import random_draws, random_keep
    draws = random_draws(12345, 0, 1 << 20).double() / 2**32
    assert abs(float(draws.mean()) - 0.5) < 0.002 and abs(float(draws.var()) - 1 / 12) < 0.001
    assert abs(float((draws[1:] * draws[:-1]).mean()) - 0.25) < 0.002  # neighbours uncorrelated
    delta = torch.ones(1000, 64)
    whole = random_keep(delta, 0.3, 99)
    halves = torch.cat([random_keep(delta[:333], 0.3, 99), random_keep(delta[333:], 0.3, 99, offset=333 * 64)])
    assert torch.equal(whole, halves) and abs(float(whole.float().mean()) - 0.3) < 0.01


def test_dare_does_not_depend_on_the_block_size(tmp_path, monkeypatch):
    import taskvec.engine.blocks as blocks
    root = quantised_models(tmp_path, (torch.bfloat16,) * 4)
    params = [{"weight": 1.0, "density": 0.4}] * 3
    (ref, fused), _ = merge_both(root, "dare_ties", params, {}, "bfloat16", monkeypatch)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 1 << 12)
    (ref_small, fused_small), _ = merge_both(root, "dare_ties", params, {}, "bfloat16", monkeypatch)
    for name in ref:
        assert same_bits(ref[name], ref_small[name]) and same_bits(fused[name], fused_small[name]), name
        assert same_bits(ref[name], fused[name]), name


def test_fused_reads_pytorch_bin_checkpoints_too(tmp_path, monkeypatch):
    """A checkpoint that cannot be memory-mapped (pytorch_model.bin) is read into reused buffers instead."""
    root = quantised_models(tmp_path, (torch.float32,) * 4)
    base = read_model(root / "base")
    for f in (root / "base").glob("*.safetensors"):
        f.unlink()
    torch.save(base, root / "base" / "pytorch_model.bin")
    (reference, fused), calls = merge_both(root, "ties", [{"weight": 1.0, "density": 0.3}] * 3, {}, "bfloat16",
                                           monkeypatch)
    assert calls == len(reference)
    for name in reference:
        assert same_bits(reference[name], fused[name]), name
