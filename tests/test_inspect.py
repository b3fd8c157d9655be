"""`taskvec inspect`: every number against hand computation, blocks against whole tensors, stored vectors against
models + base, the report folder, and the errors."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, write_model
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import taskvec
import taskvec.engine.blocks
from taskvec.inspect import stats

RELU = EXAMPLES / "relu"


def relu(*names):
    return [str(RELU / n) for n in names]


def pair(report, a, b):
    return next(p for p in report.pairs if Path(p.a).name == a and Path(p.b).name == b)


def test_relu_examples_by_hand():
    # base (0,0,0); task_a (1,1,0), task_b (0,1,1) share weight 1; the disjoint pair (1,0,0), (0,0,1) share none
    r = taskvec.inspect_vectors(relu("task_a", "task_b", "task_a_disjoint", "task_b_disjoint"), RELU / "base")
    a, _, ad, _ = r.vectors
    assert (a.l2_norm, a.l1_norm, a.fraction_changed, a.numel) == (math.sqrt(2), 2.0, 2 / 3, 3)
    assert (ad.l2_norm, ad.fraction_changed) == (1.0, 1 / 3)
    assert a.l2_by_layer == {"other": math.sqrt(2)} and a.l2_by_module == {"neuron.weight": math.sqrt(2)}

    shared = pair(r, "task_a", "task_b")
    assert shared.cosine == pytest.approx(0.5, abs=1e-15)  # 1 / (sqrt 2 * sqrt 2)
    assert (shared.both_changed, shared.opposite_signs, shared.sign_conflict_rate) == (1, 0, 0.0)
    # 3 entries: keep_count(3, k%) = 1 for k = 1, 5, 20; both ones tie at the threshold 1, so masks {0,1} and {1,2}
    assert a.top_k_threshold == {1: 1.0, 5: 1.0, 20: 1.0} and a.top_k_size == {1: 2, 5: 2, 20: 2}
    assert shared.top_k_jaccard == {1: 1 / 3, 5: 1 / 3, 20: 1 / 3}
    # TIES at density 0.2 keeps 1 entry per tensor (the earliest of tied ones): a keeps (1,0,0), b keeps (0,1,0);
    # each drops 1 of the pair's 4; no sign conflict
    assert (shared.ties_trim_dropped, shared.ties_sign_dropped, shared.ties_total_dropped) == (0.5, 0.0, 0.5)

    disjoint = pair(r, "task_a_disjoint", "task_b_disjoint")
    assert disjoint.cosine == 0.0 and disjoint.top_k_jaccard == {1: 0.0, 5: 0.0, 20: 0.0}
    assert disjoint.sign_conflict_rate is None and disjoint.both_changed == 0  # no entry changed by both
    assert (disjoint.ties_trim_dropped, disjoint.ties_total_dropped) == (0.0, 0.0)
    assert pair(r, "task_a", "task_a_disjoint").top_k_jaccard[20] == 0.5  # {0,1} vs {0}
    assert len(r.pairs) == 6 and r.tensors == 1 and r.parameters == 3


# Hand-made task vectors over a base of 0.5 everywhere (all values exact in float32), flattened in name order:
#   A = [1, -2, 0, 3 | 0.5, 0, 0, 0 | 1, 0]      B = [2, 2, 0, -1 | 0, 0, 0, 0.5 | -1, 0]
#        layer 0        layer 1       embed           layer 0        layer 1       embed
DELTA_A = {"model.layers.0.self_attn.q_proj.weight": [[1, -2], [0, 3]],
           "model.layers.1.self_attn.q_proj.weight": [[0.5, 0], [0, 0]], "model.embed_tokens.weight": [1, 0]}
DELTA_B = {"model.layers.0.self_attn.q_proj.weight": [[2, 2], [0, -1]],
           "model.layers.1.self_attn.q_proj.weight": [[0, 0], [0, 0.5]], "model.embed_tokens.weight": [-1, 0]}


def hand_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    def model(folder, deltas):
        tensors = {n: torch.as_tensor(v, dtype=torch.float32) + 0.5 for n, v in deltas.items()}
        tensors["position_ids"] = torch.arange(4)
        return write_model(tmp_path / folder, tensors)

    return model("base", {n: torch.zeros(torch.tensor(v).shape) for n, v in DELTA_A.items()}), \
        model("A", DELTA_A), model("B", DELTA_B)


def check_hand_numbers(r):
    a, b = r.vectors
    assert (a.l2_norm, b.l2_norm) == (math.sqrt(15.25), math.sqrt(10.25))
    assert (a.l1_norm, a.changed, a.fraction_changed) == (7.5, 5, 0.5)
    assert a.l2_by_layer == {"0": math.sqrt(14), "1": 0.5, "other": 1.0}
    assert a.l2_by_module == {"self_attn.q_proj.weight": math.sqrt(14.25), "model.embed_tokens.weight": 1.0}
    p = r.pairs[0]
    assert p.cosine == pytest.approx(-6 / math.sqrt(15.25 * 10.25), rel=1e-15)
    # changed in both: entries 0 (1, 2), 1 (-2, 2), 3 (3, -1), 8 (1, -1); the last three disagree
    assert (p.both_changed, p.opposite_signs, p.sign_conflict_rate) == (4, 3, 0.75)
    assert p.by_layer["0"] == {"cosine": pytest.approx(-5 / math.sqrt(14 * 9)), "sign_conflict_rate": 2 / 3,
                               "both_changed": 3, "opposite_signs": 2}
    assert p.by_layer["1"] == {"cosine": 0.0, "sign_conflict_rate": None, "both_changed": 0, "opposite_signs": 0}
    assert p.by_layer["other"]["cosine"] == -1.0 and p.by_layer["other"]["sign_conflict_rate"] == 1.0
    worst = [(c["layer"], c["sign_conflict_rate"]) for c in r.most_conflicting_layers()]
    assert worst == [("other", 1.0), ("0", 2 / 3)]
    # 10 entries: top 1% and 5% keep 1 -- A {3}, B's two tied 2s {0, 1}; top 20% keeps 2 -- A {1, 3}, B {0, 1}
    assert a.top_k_size == {1: 1, 5: 1, 20: 2} and b.top_k_size == {1: 2, 5: 2, 20: 2}
    assert p.top_k_jaccard == {1: 0.0, 5: 0.0, 20: 1 / 3}
    assert r.tensors == 3 and r.parameters == 10
    assert [s["tensor"] for s in r.skipped] == ["position_ids"] and "int64" in r.skipped[0]["reason"]


def test_hand_made_vectors(tmp_path):
    base, a, b = hand_models(tmp_path)
    r = taskvec.inspect_vectors([a, b], base, density=0.5)
    check_hand_numbers(r)
    # TIES, density 0.5 per tensor: layer 0 keeps A (0,-2,0,3), B (2,2,0,0): trim drops 1 + 1; the sum (2,0,0,3)
    # elects + everywhere (0 goes to +), so A's -2 is dropped; layer 1 keeps both 0.5s; the embedding keeps 1 and -1,
    # sum 0 elects +, B's -1 is dropped. Pair mass 7.5 + 6.5 = 14.
    p = r.pairs[0]
    assert (p.ties_trim_dropped, p.ties_sign_dropped, p.ties_total_dropped, p.l1_mass) == (2 / 14, 3 / 14, 5 / 14, 14)
    # density 0.2 keeps one entry per tensor (B's tied 2s: the first): trim drops 3 + 3, sign drops B's -1
    p = taskvec.inspect_vectors([a, b], base).pairs[0]
    assert (p.ties_trim_dropped, p.ties_sign_dropped, p.ties_total_dropped) == (6 / 14, 1 / 14, 7 / 14)


def test_tolerance_counts_only_larger_changes(tmp_path):
    base, a, b = hand_models(tmp_path)
    r = taskvec.inspect_vectors([a, b], base, tolerance=1.0)  # |δ| > 1: A {-2, 3}, B {2, 2}
    assert r.vectors[0].changed == 2 and r.vectors[1].changed == 2
    assert (r.pairs[0].both_changed, r.pairs[0].opposite_signs) == (1, 1)  # entry 1: -2 vs 2
    assert r.settings["tolerance"] == 1.0


def quantised_models(tmp_path: Path) -> list[Path]:
    """A base and three fine-tunes whose deltas tie a lot (multiples of 0.25), in a tensor of 64 x 16 rows."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (40, 16), "model.layers.0.mlp.down_proj.weight": (64, 16),
              "model.layers.0.input_layernorm.weight": (16,), "model.layers.1.mlp.down_proj.weight": (64, 16),
              "lm_head.weight": (40, 16)}
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    folders = [write_model(tmp_path / "base", base)]
    for m in range(3):
        ft = {n: t + torch.randint(-3, 4, t.shape, generator=g) * 0.25 * (torch.rand(t.shape, generator=g) < 0.5)
              for n, t in base.items()}
        folders.append(write_model(tmp_path / f"ft{m}", ft))
    return folders


def reference(folders: list[Path], density: float, ks=(1, 5, 20)) -> dict:
    """The same numbers from whole vectors in memory, with sorts: an independent implementation."""
    base = load_file(folders[0] / "model.safetensors")
    models = [load_file(f / "model.safetensors") for f in folders[1:]]
    deltas = [{n: (m[n] - base[n]).double() for n in base} for m in models]  # float32 deltas, as the merge's
    flat = [torch.cat([d[n].reshape(-1) for n in base]) for d in deltas]
    out = {"norm": [float(f.norm()) for f in flat], "pairs": []}

    def top(f, k):
        keep = max(1, int(k / 100 * f.numel()))
        t = f.abs().sort(descending=True).values[keep - 1]
        return (f.abs() >= t) & (f != 0)

    def trimmed(d):  # per tensor, ties to the earliest entry (a stable sort)
        parts = []
        for n in base:
            x = d[n].reshape(-1)
            keep = max(1, int(density * x.numel()))
            order = sorted(range(x.numel()), key=lambda i: (-abs(float(x[i])), i))[:keep]
            mask = torch.zeros(x.numel(), dtype=torch.bool)
            mask[order] = True
            parts.append(x * mask)
        return torch.cat(parts)

    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            a, b = flat[i], flat[j]
            both = (a != 0) & (b != 0)
            ta, tb = trimmed(deltas[i]), trimmed(deltas[j])
            positive = (ta + tb) >= 0
            lost = sum(float(x[(x != 0) & ((x > 0) != positive)].abs().sum()) for x in (ta, tb))
            mass = float(a.abs().sum() + b.abs().sum())
            out["pairs"].append({
                "cosine": float(a @ b / (a.norm() * b.norm())),
                "sign": int((both & ((a > 0) != (b > 0))).sum()) / int(both.sum()),
                "jaccard": {k: int((top(a, k) & top(b, k)).sum()) / int((top(a, k) | top(b, k)).sum()) for k in ks},
                "trim": float((a - ta).abs().sum() + (b - tb).abs().sum()) / mass, "sign_drop": lost / mass,
            })
    return out


def comparable(r) -> dict:
    d = r.to_dict()
    for v in d["vectors"]:
        v.pop("label"), v.pop("kind")
    for p in d["pairs"]:
        p.pop("a"), p.pop("b")
    return {"vectors": d["vectors"], "pairs": d["pairs"], "tensors": d["tensors"]}


def assert_same_numbers(x, y, rel=1e-12):
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            assert_same_numbers(x[k], y[k], rel)
    elif isinstance(x, list):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert_same_numbers(u, v, rel)
    elif isinstance(x, float):
        assert x == pytest.approx(y, rel=rel, abs=1e-15)
    else:
        assert x == y


def test_blocks_give_the_numbers_of_whole_tensors_and_of_a_reference(tmp_path, monkeypatch):
    base, *fts = quantised_models(tmp_path)
    whole = taskvec.inspect_vectors(fts, base, density=0.3)
    monkeypatch.setattr(taskvec.engine.blocks, "BLOCK_ELEMENTS", 100)  # 6 rows of 16: 11 blocks per 64-row tensor
    assert len(taskvec.engine.blocks.row_blocks((64, 16), "entry")) == 11
    blocked = taskvec.inspect_vectors(fts, base, density=0.3)
    assert_same_numbers(comparable(whole), comparable(blocked))
    ref = reference([base, *fts], density=0.3)
    assert [v.l2_norm for v in blocked.vectors] == pytest.approx(ref["norm"], rel=1e-12)
    for got, want in zip(blocked.pairs, ref["pairs"]):
        assert got.cosine == pytest.approx(want["cosine"], rel=1e-12)
        assert got.sign_conflict_rate == pytest.approx(want["sign"], rel=1e-12)
        assert got.top_k_jaccard == pytest.approx(want["jaccard"], rel=1e-12)
        assert got.ties_trim_dropped == pytest.approx(want["trim"], rel=1e-12)
        assert got.ties_sign_dropped == pytest.approx(want["sign_drop"], rel=1e-12)
    assert set(blocked.vectors[0].l2_by_layer) == {"0", "1", "other"}
    assert set(blocked.vectors[0].l2_by_module) == {"model.embed_tokens.weight", "mlp.down_proj.weight",
                                                     "input_layernorm.weight", "lm_head.weight"}


def test_stored_task_vectors_give_the_numbers_of_models_and_base(tmp_path, cli):
    base, a, b = hand_models(tmp_path)
    for m in (a, b):
        cli("extract", "--base", base, "--finetuned", m, "--out", tmp_path / f"tv_{m.name}", "-q")
    from_models = taskvec.inspect_vectors([a, b], base, density=0.5)
    stored = taskvec.inspect_vectors([tmp_path / "tv_A", tmp_path / "tv_B"], density=0.5)  # no base needed
    mixed = taskvec.inspect_vectors([tmp_path / "tv_A", b], base, density=0.5)
    assert_same_numbers(comparable(from_models), comparable(mixed), rel=0)
    check_hand_numbers(stored)
    want = comparable(from_models)
    got = comparable(stored)
    assert "at extraction" in got["tensors"]["skipped"][0]["reason"]  # the int tensor, left out by `extract`
    got["tensors"]["skipped"] = want["tensors"]["skipped"]
    assert_same_numbers(want, got, rel=0)
    assert [v.kind for v in mixed.vectors] == ["stored task vector", "model - base"]


def test_a_stored_vector_without_a_tensor_counts_it_as_zero(tmp_path, cli):
    base, a, b = hand_models(tmp_path)
    cli("extract", "--base", base, "--finetuned", a, "--out", tmp_path / "tv", "-q")
    stored = tmp_path / "tv" / "task_vector.safetensors"
    tensors = load_file(stored)
    del tensors["model.embed_tokens.weight"]
    save_file(tensors, stored)
    r = taskvec.inspect_vectors([tmp_path / "tv", b], base)
    assert r.parameters == 10  # the tensor is still compared, as zeros
    assert r.vectors[0].l2_norm == math.sqrt(14.25) and r.vectors[0].l2_by_layer["other"] == 0.0
    assert r.pairs[0].by_layer["other"] == {"cosine": None, "sign_conflict_rate": None, "both_changed": 0,
                                            "opposite_signs": 0}


def test_one_vector_has_no_pairs(tmp_path):
    r = taskvec.inspect_vectors(relu("task_a"), RELU / "base")
    assert r.pairs == [] and r.most_conflicting_layers() == []
    r.save(tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["layer_norm.png", "report.html", "report.json"]


def test_cli_writes_a_report_folder(tmp_path, cli):
    out = tmp_path / "report"
    _, output = cli("inspect", *relu("task_a", "task_b", "task_a_disjoint"), "--base", RELU / "base", "--out", out,
                    "-q")
    assert "Pairs: agreement" in output and "Most conflicting layers" in output and "task_a_disjoint" in output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cosine.png", "layer_conflict.png", "layer_norm.png", "report.html", "report.json",
                     "sign_conflict.png", "topk_overlap.png"]
    data = json.loads((out / "report.json").read_text())
    assert set(data) >= {"taskvec_version", "settings", "tensors", "vectors", "pairs", "most_conflicting_layers",
                         "definitions"}
    assert data["settings"]["tolerance"] == 0.0 and data["settings"]["density"] == 0.2
    assert data["settings"]["top_k_percent"] == [1, 5, 20] and data["settings"]["base"] == str(RELU / "base")
    assert data["pairs"][0]["top_k_jaccard"] == {"1": 1 / 3, "5": 1 / 3, "20": 1 / 3}
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 5 and "<table>" in page and "sign_conflict_rate" in page
    assert not list(tmp_path.glob(".report*"))  # no temporary folder left behind

    code, output = cli("inspect", *relu("task_a", "task_b"), "--base", RELU / "base", "--out", out, ok=False)
    assert code == 2 and "already exists" in output and "--force" in output
    cli("inspect", *relu("task_a", "task_b"), "--base", RELU / "base", "--out", out, "--force", "-q")
    assert len(json.loads((out / "report.json").read_text())["vectors"]) == 2


def test_cli_errors(tmp_path, cli):
    code, output = cli("inspect", *relu("task_a", "task_b"), ok=False)
    assert code == 2 and "task_a: is a model" in output and "--base" in output

    write_model(tmp_path / "wide", {"neuron.weight": torch.zeros(1, 4)})
    code, output = cli("inspect", *relu("task_a"), tmp_path / "wide", "--base", RELU / "base", ok=False)
    assert code == 2 and "'neuron.weight'" in output and "[1, 4] in" in output and "wide/model.safetensors" in output

    write_model(tmp_path / "ids", {"position_ids": torch.arange(3)})
    write_model(tmp_path / "ids2", {"position_ids": torch.arange(3)})
    code, output = cli("inspect", tmp_path / "ids", "--base", tmp_path / "ids2", ok=False)
    assert code == 2 and "no floating-point tensor is common" in output and "int64" in output

    code, output = cli("inspect", *relu("task_a"), "--base", RELU / "base", "--density", "0", ok=False)
    assert code == 2 and "--density" in output
    code, output = cli("inspect", *relu("task_a"), "--base", RELU / "base", "--out", RELU / "task_a", "--force",
                       ok=False)
    assert code == 2 and "is an input" in output
    assert (RELU / "task_a" / "model.safetensors").is_file()


values = st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=12)


def totals_of(a: list[float], b: list[float]) -> stats.Totals:
    n = min(len(a), len(b))
    views = []
    for x in (a[:n], b[:n]):
        d = torch.tensor(x, dtype=torch.float32)
        threshold = float(d.abs().max())  # the top mask: the largest magnitudes
        views.append(stats.view(d, 0.0, {1: threshold}, torch.ones(n, dtype=torch.bool)))
    t = stats.Totals(2)
    t.add_block(None, "w", views)
    return t


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_cosine_is_symmetric_and_bounded_and_self_overlap_is_one(a, b):
    ab = stats.pair_stats(totals_of(a, b), (0, 1), ["a", "b"])
    ba = stats.pair_stats(totals_of(b, a), (0, 1), ["b", "a"])
    assert ab.cosine == ba.cosine and ab.sign_conflict_rate == ba.sign_conflict_rate
    assert ab.top_k_jaccard == ba.top_k_jaccard
    assert ab.cosine is None or -1 <= ab.cosine <= 1
    aa = stats.pair_stats(totals_of(a, a), (0, 1), ["a", "a"])
    if any(a):
        assert aa.cosine == 1.0 and aa.top_k_jaccard == {1: 1.0} and aa.sign_conflict_rate == 0.0
    else:
        assert aa.cosine is None and aa.top_k_jaccard == {1: None}


def long_named_report(tmp_path: Path):
    """Three fine-tunes with long folder names and tiny deltas: numbers like -0.009877 next to labels that can't
    all fit in 80 columns."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.layers.0.mlp.down_proj.weight": (64, 16), "model.layers.1.mlp.down_proj.weight": (64, 16),
              "lm_head.weight": (40, 16)}
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    write_model(tmp_path / "base", base)
    names = ["ft-bbc-news-classifier", "ft-imdb-sentiment-large", "ft-squad-v2-extractive-qa"]
    for name in names:
        write_model(tmp_path / name, {n: t + 3e-4 * torch.randn(t.shape, generator=g) for n, t in base.items()})
    return taskvec.inspect_vectors([tmp_path / n for n in names], tmp_path / "base", progress=False)


def body_cells(text: str) -> list[list[str]]:
    """The cells of a rendered table's body rows (header rows use the heavy ┃, body rows the light │)."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("width", [80, 100, 200])
def test_terminal_tables_shorten_labels_never_numbers(tmp_path, width):
    from rich.console import Console

    from taskvec.inspect.report import rich_table, tables

    report = long_named_report(tmp_path)
    for t in tables(report, full=True):
        console = Console(width=width, record=True)
        console.print(rich_table(t, console.width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        rendered = body_cells(text)
        assert len(rendered) == len(t.rows), text
        for row, cells in zip(t.rows, rendered):
            assert cells[t.labels:] == row[t.labels:], text  # every number verbatim, none cut to '…'
            for label, cell in zip(row[:t.labels], cells[:t.labels]):
                assert cell == label or (cell.endswith("…") and label.startswith(cell[:-1])), text
    console = Console(width=80, record=True)
    console.print(rich_table(tables(report)[0], 80))
    assert "ft-bbc-news-classifier" in console.export_text()  # a label is whole when there is room


def test_taskvec_inspect_prints_every_number_whole_in_80_columns(tmp_path, cli, monkeypatch):
    from taskvec.inspect.report import tables

    report = long_named_report(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    names = ["ft-bbc-news-classifier", "ft-imdb-sentiment-large", "ft-squad-v2-extractive-qa"]
    _, output = cli("inspect", *(tmp_path / n for n in names), "--base", tmp_path / "base", "-q")
    assert max(len(line) for line in output.splitlines()) <= 80
    numbers = {cell for t in tables(report) for row in t.rows for cell in row
               if re.fullmatch(r"-?[\d,.]+(e[+-]\d+)?%?", cell)}
    assert len(numbers) > 20 and {n for n in numbers if n not in output} == set(), output
