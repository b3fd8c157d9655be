"""The subspace methods (tsv, iso_c, iso_cts) and consensus merging: closed forms on hand-built matrices, a dense
numpy implementation of each paper's formulas written here, properties (order, scale, threads), and a real merge."""

import numpy as np
import pytest
import torch

from conftest import read_model, run, toy_tensors, write_model
from taskvec import parse_recipe
from taskvec.errors import TaskvecError
from taskvec.methods import ModelArgs, get_method

DEFAULTS = {"tsv": {"lambda": 1.0, "fraction": 0.0}, "iso_c": {"lambda": 1.0},
            "iso_cts": {"lambda": 1.0, "common_space_fraction": 0.8}, "consensus": {"lambda": 1.0, "k": 2}}


def merge(name, deltas, weights=None, **params):
    method = get_method(name)
    mask_lambda = params.pop("mask_lambda", 0.4)
    models = [ModelArgs({"weight": w, "mask_lambda": mask_lambda} if name == "consensus" else {"weight": w})
              for w in (weights or [1.0] * len(deltas))]
    return method.fn(None, [d.clone() for d in deltas], models, {**DEFAULTS[name], **params})


def outer(u, v, scale):
    return scale * torch.outer(u, v)


def unit(n, i):
    e = torch.zeros(n)
    e[i] = 1.0
    return e


# ---- closed forms -----------------------------------------------------------------------------------------------

def test_orthogonal_supports_tsv_is_the_sum_and_iso_c_flattens_it():
    """τ1 = 3·e0 f0ᵀ, τ2 = 1·e1 f1ᵀ: singular directions already orthogonal. TSV keeps both: the sum. Iso-C: the
    same directions at the mean singular value 2."""
    t1, t2 = outer(unit(6, 0), unit(5, 0), 3.0), outer(unit(6, 1), unit(5, 1), 1.0)
    torch.testing.assert_close(merge("tsv", [t1, t2]), t1 + t2, rtol=0, atol=1e-6)
    want = 2.0 * (torch.outer(unit(6, 0), unit(5, 0)) + torch.outer(unit(6, 1), unit(5, 1)))
    torch.testing.assert_close(merge("iso_c", [t1, t2]), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(merge("iso_c", [t1, t2], **{"lambda": 0.5}), 0.5 * want, rtol=0, atol=1e-6)


def test_one_task_tsv_returns_its_truncated_task_vector():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 6, generator=g)
    torch.testing.assert_close(merge("tsv", [t]), t, rtol=0, atol=1e-5)  # fraction 1/1: the whole rank
    u, s, vh = torch.linalg.svd(t.double(), full_matrices=False)
    truncated = (u[:, :3] * s[:3]) @ vh[:3]
    torch.testing.assert_close(merge("tsv", [t], fraction=0.5), truncated.float(), rtol=0, atol=1e-5)


def test_two_copies_of_one_task_vector_merge_to_it():
    """TSV of [τ, τ] at fraction 1: the concatenated directions [U U] have rank r, not 2r. The polar factor is taken
    on that range only (the partial isometry [U U]/√2), so the merge is τ itself, not τ plus arbitrary directions."""
    t = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(merge("tsv", [t, t], fraction=1.0), t, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (30, 30)])
def test_svd_and_polar_from_the_gram_matrix_equal_numpy(shape):
    """spectral.svd/polar use the Gram matrix's eigh (half the cost of an SVD on a CPU); they equal numpy's SVD, and
    a rank-2 matrix keeps exactly 2 directions."""
    from taskvec.methods.spectral import polar, svd

    g = torch.Generator().manual_seed(4)
    m = torch.randn(shape, generator=g, dtype=torch.float64)
    u, s, vh = svd(m)
    want_u, want_s, want_vh = np.linalg.svd(m.numpy(), full_matrices=False)
    np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-10)
    np.testing.assert_allclose((u * s).numpy() @ vh.numpy(), m.numpy(), atol=1e-10)
    np.testing.assert_allclose(np.abs(u.T.numpy() @ want_u), np.eye(min(shape)), atol=1e-8)  # same directions
    np.testing.assert_allclose(polar(m).numpy(), want_u @ want_vh, atol=1e-9)
    low = torch.randn(shape[0], 2, generator=g, dtype=torch.float64) @ torch.randn(2, shape[1], generator=g,
                                                                                  dtype=torch.float64)
    assert svd(low)[1].numel() == 2


def test_vectors_are_averaged():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0])
    for name in ("tsv", "iso_c", "iso_cts"):
        torch.testing.assert_close(merge(name, [a, b]), torch.tensor([2.0, 1.0, 1.0]))


def test_consensus_keeps_entries_two_tasks_care_about():
    """mask_lambda 0.4 (the default). Entry 0: three equal changes, each 1 > 0.4·2 -> 3 votes, kept. Entry 1: only
    task 0 (5 > 0) -> selfish, dropped. Entry 2: tasks 0 and 1 (2 > 0.4·2.1), not task 2 (0.1 < 0.4·4) -> kept.
    Entry 3: nobody changed it -> 0. With mask_lambda 0.6 the three equal changes no longer count (1 < 0.6·2)."""
    t = [torch.tensor([1.0, 5.0, 2.0, 0.0]), torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([1.0, 0.0, 0.1, 0.0])]
    torch.testing.assert_close(merge("consensus", t), torch.tensor([3.0, 0.0, 4.1, 0.0]))
    torch.testing.assert_close(merge("consensus", t, k=1), torch.tensor([3.0, 5.0, 4.1, 0.0]))
    torch.testing.assert_close(merge("consensus", t, mask_lambda=0.6), torch.tensor([0.0, 0.0, 4.1, 0.0]))
    with pytest.raises(TaskvecError, match="k = 4 tasks must agree, but only 3 model"):
        merge("consensus", t, k=4)


# ---- the papers' formulas, densely, in numpy ---------------------------------------------------------------------

def polar(m):
    p, _, qh = np.linalg.svd(m, full_matrices=False)
    return p @ qh


def np_tsv(ts):
    k = int(min(ts[0].shape) / len(ts))
    svds = [np.linalg.svd(t, full_matrices=False) for t in ts]
    u = np.concatenate([u[:, :k] for u, _, _ in svds], axis=1)
    s = np.concatenate([s[:k] for _, s, _ in svds])
    vh = np.concatenate([vh[:k] for _, _, vh in svds], axis=0)
    return polar(u) @ np.diag(s) @ polar(vh)


def np_iso_c(ts):
    u, s, vh = np.linalg.svd(sum(ts), full_matrices=False)
    return s.mean() * u @ vh


def np_iso_cts(ts, fraction=0.8):
    r, n = min(ts[0].shape), len(ts)
    common = int(r * fraction)
    per_task = round((r - common) / n)
    common = r - per_task * n
    u, s, vh = np.linalg.svd(sum(ts), full_matrices=False)
    us, ss, vhs = [u[:, :common]], [s[:common]], [vh[:common]]
    for t in ts:
        ut, st, vht = np.linalg.svd(t - u[:, :common] @ u[:, :common].T @ t, full_matrices=False)
        us.append(ut[:, :per_task]), ss.append(st[:per_task]), vhs.append(vht[:per_task])
    return np.concatenate(ss).mean() * polar(np.concatenate(us, axis=1)) @ polar(np.concatenate(vhs, axis=0))


@pytest.mark.parametrize("name, reference", [("tsv", np_tsv), ("iso_c", np_iso_c), ("iso_cts", np_iso_cts)])
@pytest.mark.parametrize("shape", [(12, 9), (7, 15)])
def test_matches_a_dense_numpy_implementation(name, reference, shape):
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(shape, generator=g) * (i + 1) for i in range(3)]
    want = reference([t.double().numpy() for t in ts])
    got = merge(name, ts)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())


# ---- properties --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts", "consensus"])
def test_order_scale_and_threads(name):
    g = torch.Generator().manual_seed(2)
    ts = [torch.randn(10, 8, generator=g) for _ in range(3)]
    base = merge(name, ts)
    torch.testing.assert_close(merge(name, ts[::-1]), base, rtol=0, atol=1e-5)  # the models' order does not matter
    # positively homogeneous: twice the task vectors, twice the merge (consensus' masks are scale-free too)
    torch.testing.assert_close(merge(name, [2 * t for t in ts]), 2 * base, rtol=0, atol=1e-5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge(name, ts)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, base)  # float64 SVDs: the same float32 bits whatever the thread count


def test_a_recipe_runs_them_through_the_engine(tmp_path):
    """taskvec merge with each method equals the method applied to the task vectors by hand, tensor by tensor."""
    write_model(tmp_path / "base", toy_tensors(0))
    write_model(tmp_path / "a", toy_tensors(1))
    write_model(tmp_path / "b", toy_tensors(2))
    base, a, b = toy_tensors(0), toy_tensors(1), toy_tensors(2)
    for name, params in (("tsv", {}), ("iso_c", {"lambda": 1.3}), ("iso_cts", {"common_space_fraction": 0.5}),
                         ("consensus", {"k": 1})):
        recipe = parse_recipe({"merge_method": name, "base_model": str(tmp_path / "base"), "parameters": params,
                               "models": [{"model": str(tmp_path / m)} for m in ("a", "b")]})
        run(recipe, tmp_path / name)
        out = read_model(tmp_path / name)
        for tensor, b0 in base.items():
            if not b0.is_floating_point():
                continue
            want = b0 + merge(name, [a[tensor] - b0, b[tensor] - b0], **params)
            torch.testing.assert_close(out[tensor], want, rtol=0, atol=1e-5, msg=f"{name} {tensor}")


@pytest.mark.parametrize("name, params", [("tsv", {"lambda": 0.8}), ("iso_c", {"lambda": 1.3}),
                                          ("tsv", {"fraction": 0.9}), ("iso_cts", {"common_space_fraction": 0.5})])
def test_a_tall_matrix_is_merged_a_block_of_rows_at_a_time(name, params, tmp_path, monkeypatch):
    """The engine streams a tall matrix through the method's passes over row blocks (an embedding's task vectors are
    never held whole) and gets the very bits of the method applied to the whole task vectors: 9000 rows are 3
    blocks of at most 4096, and no read of the big tensor asks for more. A wide matrix and a bfloat16 model too."""
    from taskvec.io.checkpoint import SafetensorsCheckpoint
    from taskvec.methods.spectral import ROWS_PER_BLOCK

    g = torch.Generator().manual_seed(5)
    shapes = {"embed.weight": (9000, 24), "wide.weight": (12, 5000), "norm.weight": (24,)}
    models = {who: {k: torch.randn(shape, generator=g).to(torch.bfloat16) for k, shape in shapes.items()}
              for who in ("base", "a", "b", "c")}
    for who, tensors in models.items():
        write_model(tmp_path / who, tensors)
    reads = []
    original = SafetensorsCheckpoint.read

    def read(self, tensor, rows=None, into=None):
        if tensor == "embed.weight":
            reads.append(9000 if rows is None else rows[1] - rows[0])
        return original(self, tensor, rows, into)

    monkeypatch.setattr(SafetensorsCheckpoint, "read", read)
    weights = [1.0, 0.5, -0.7]
    recipe = parse_recipe({"merge_method": name, "base_model": str(tmp_path / "base"), "parameters": params,
                           "models": [{"model": str(tmp_path / m), "parameters": {"weight": w}}
                                      for m, w in zip("abc", weights)]})
    run(recipe, tmp_path / "out")
    assert reads and max(reads) <= ROWS_PER_BLOCK
    out = read_model(tmp_path / "out")
    for tensor in shapes:
        b0 = models["base"][tensor].float()
        deltas = [models[m][tensor].float() - b0 for m in "abc"]
        want = (b0 + merge(name, deltas, weights, **params)).to(torch.bfloat16)
        assert torch.equal(out[tensor], want), tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts", "consensus"])
def test_on_cuda_the_merge_matches_the_cpu(name, tmp_path):
    """The SVDs run where the tensors are: on a GPU with --device cuda, the CPU's result up to float64 rounding."""
    g = torch.Generator().manual_seed(3)
    ts = [torch.randn(64, 48, generator=g) for _ in range(3)]
    cpu = merge(name, ts)
    gpu = merge(name, [t.cuda() for t in ts])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5 * float(cpu.abs().max()))
    write_model(tmp_path / "base", toy_tensors(0))
    write_model(tmp_path / "a", toy_tensors(1))
    write_model(tmp_path / "b", toy_tensors(2))
    recipe = parse_recipe({"merge_method": name, "base_model": str(tmp_path / "base"),
                           "parameters": {"k": 1} if name == "consensus" else {},
                           "models": [{"model": str(tmp_path / m)} for m in ("a", "b")]})
    run(recipe, tmp_path / "cpu")
    run(recipe, tmp_path / "gpu", device="cuda")
    for tensor, t in read_model(tmp_path / "cpu").items():
        torch.testing.assert_close(read_model(tmp_path / "gpu")[tensor], t, rtol=0, atol=1e-5, msg=tensor)
