"""Compression codecs as pure functions: hand-computed examples and properties (taskvec.store.codecs)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskvec import TaskvecError
from taskvec.store import codecs as C


def test_sign_of_a_2x3_tensor_by_hand():
    t = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, -1.0]])
    bits, scale = C.sign_encode(t)
    # row 0: + - + -> 101 then padding -> 0b10100000 = 160; row 1: - + - (0 counts as +) -> 010 -> 0b01000000 = 64
    assert bits.dtype == torch.uint8 and bits.tolist() == [[160], [64]]
    torch.testing.assert_close(scale, torch.tensor([2.0, 0.5]))  # mean |row|
    torch.testing.assert_close(C.sign_decode(bits, scale, 3), torch.tensor([[2.0, -2.0, 2.0], [-0.5, 0.5, -0.5]]))
    bits_t, scale_t = C.sign_encode(t, per_row=False)
    assert bits_t.tolist() == [[160], [64]] and scale_t.tolist() == [1.25]  # mean |t| = 7.5 / 6
    torch.testing.assert_close(C.sign_decode(bits_t, scale_t, 3), torch.tensor([[1.25, -1.25, 1.25], [-1.25, 1.25, -1.25]]))


def test_bit_packing_matches_numpy_packbits():
    np = pytest.importorskip("numpy")
    bits = torch.rand(5, 21, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = C.pack_bits(bits)
    assert packed.shape == (5, 3)
    assert packed.numpy().tolist() == np.packbits(bits.numpy(), axis=1).tolist()
    assert torch.equal(C.unpack_bits(packed, 21), bits)


def test_sparse_on_a_known_vector():
    t = torch.tensor([0.1, -5.0, 0.0, 3.0, -0.2, 1.0])
    idx, val = C.sparse_encode(t, 0.5)  # ceil(0.5 * 6) = 3 largest |entries|: -5, 3, 1 at positions 1, 3, 5
    assert idx.dtype == torch.int32 and idx.tolist() == [1, 3, 5] and val.tolist() == [-5.0, 3.0, 1.0]
    assert C.sparse_decode(idx, val, (6,)).tolist() == [0.0, -5.0, 0.0, 3.0, 0.0, 1.0]
    assert C.sparse_decode(idx, val, (6,), 2, 5).tolist() == [0.0, 3.0, 0.0]  # a window of flat positions
    assert C.sparse_window(idx, 2, 5) == (1, 2)
    assert C.sparse_count(10, 0.01) == 1 and C.sparse_count(10, 1.0) == 10 and C.sparse_count(1000, 0.3) == 300


def test_lowrank_of_a_rank_one_matrix_by_hand():
    t = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0]))
    u, v = C.lowrank_encode(t, 1)
    assert u.shape == (3, 1) and v.shape == (1, 2)
    torch.testing.assert_close(C.lowrank_decode(u, v), t)
    assert C.lowrank_pays((100, 80), 10) and not C.lowrank_pays((4, 4), 2) and not C.lowrank_pays((16,), 1)


def test_energy_rank_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])  # squares 9, 4, 1 of 14: rank 1 holds 9/14 = 0.643, rank 2 13/14 = 0.929
    assert [C.energy_rank(s, e) for e in (0.5, 0.64, 0.65, 0.92, 0.93, 1.0)] == [1, 1, 2, 2, 3, 3]
    assert C.energy_rank(torch.tensor([2.0, 0.0]), 1.0) == 1 and C.energy_rank(torch.zeros(3), 0.9) == 1


@pytest.mark.parametrize("spec, want", [
    ("dense-bf16", C.Compression("dense-bf16")), ("sparse:0.1", C.Compression("sparse", 0.1)),
    ("lowrank:8", C.Compression("lowrank", 8)), ("lowrank-energy:0.9", C.Compression("lowrank-energy", 0.9)),
    ("sign", C.Compression("sign")), ("sign:tensor", C.Compression("sign", 0.0)),
])
def test_parse_round_trips(spec, want):
    assert C.parse(spec) == want and str(C.parse(spec)) == spec


@pytest.mark.parametrize("spec", ["sparse:0", "sparse:1.5", "sparse", "lowrank:0", "lowrank:2.5", "lowrank-energy:0",
                                  "zip", "sign:column", "dense-bf16:2", "sparse:nan"])
def test_parse_refuses_bad_specs_with_the_choices(spec):
    with pytest.raises(TaskvecError, match="use dense-bf16, sparse:DENSITY"):
        C.parse(spec)


matrices = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1)).map(
    lambda a: torch.randn(a[0], a[1], generator=torch.Generator().manual_seed(a[2])))


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_lowrank_at_full_rank_reconstructs_to_float_tolerance(t):
    u, v = C.lowrank_encode(t, min(t.shape))
    torch.testing.assert_close(C.lowrank_decode(u, v), t, rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_sparse_at_density_one_is_exact(t):
    idx, val = C.sparse_encode(t, 1.0)
    assert torch.equal(C.sparse_decode(idx, val, tuple(t.shape)).reshape(t.shape), t)


@settings(max_examples=40, deadline=None)
@given(matrices, st.floats(0.01, 1.0))
def test_sparse_keeps_the_largest_magnitudes(t, density):
    idx, val = C.sparse_encode(t, density)
    assert len(idx) == math.ceil(density * t.numel() - 1e-9) and bool((idx[1:] > idx[:-1]).all())
    dropped = torch.ones(t.numel(), dtype=torch.bool)
    dropped[idx.long()] = False
    if dropped.any():
        assert t.reshape(-1)[dropped].abs().max() <= val.abs().min()


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_sign_scale_is_the_l2_best_per_row(t):
    bits, scale = C.sign_encode(t)
    approx = C.sign_decode(bits, scale, t.shape[1])
    assert torch.equal(approx.sign() * (t != 0), t.sign())  # the signs survive (zeros decode as +scale)
    for factor in (0.9, 1.1):  # any other scale of the same signs is worse
        assert (approx - t).norm() <= (approx * factor - t).norm() + 1e-6
