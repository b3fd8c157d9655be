"""mergekit's slices and passthrough: stacked layer ranges ("frankenmerges") and per-slice merges, checked against
hand computations on a LLaMA-shaped family (mergekit 0.1.5's own outputs: benchmarks/mergekit_parity.py)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import read_model
from taskvec.errors import TaskvecError
from taskvec.merge import MergeOptions, describe_views, merge_recipe

HIDDEN, INTER, LAYERS, VOCAB = 8, 16, 4, 32


def family(root: Path) -> Path:
    """base, ft1, ft2: LLaMA tensors and config, 4 layers; each fine-tune is the base plus its own noise."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({f"{p}self_attn.{x}_proj.weight": (HIDDEN, HIDDEN) for x in "qkvo"})
        shapes.update({f"{p}mlp.gate_proj.weight": (INTER, HIDDEN), f"{p}mlp.up_proj.weight": (INTER, HIDDEN),
                       f"{p}mlp.down_proj.weight": (HIDDEN, INTER), f"{p}input_layernorm.weight": (HIDDEN,),
                       f"{p}post_attention_layernorm.weight": (HIDDEN,)})
    base = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
              "num_key_value_heads": 2, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "torch_dtype": "float32", "max_position_embeddings": 64}
    for name, scale in (("base", 0.0), ("ft1", 0.05), ("ft2", 0.05)):
        (root / name).mkdir()
        tensors = {k: (v + scale * torch.randn(v.shape, generator=g)).contiguous() for k, v in base.items()}
        save_file(tensors, root / name / "model.safetensors", metadata={"format": "pt"})
        (root / name / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def models(tmp_path):
    return family(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def layer(tensors: dict, i: int) -> dict:
    prefix = f"model.layers.{i}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


FRANKEN = """merge_method: passthrough
dtype: float32
slices:
  - sources: [{model: ft1, layer_range: [0, 3]}]
  - sources: [{model: ft2, layer_range: [1, 4], parameters: {scale: %s}}]
"""


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_passthrough_stacks_layer_ranges_and_the_folder_loads(models, scale):
    out = models / "franken"
    merge_recipe(write(models / "franken.yaml", FRANKEN % scale), out)
    merged, ft1, ft2 = read_model(out), read_model(models / "ft1"), read_model(models / "ft2")
    for k in range(6):  # 0-2 from ft1's 0-2, 3-5 from ft2's 1-3 (times scale)
        source, i, factor = (ft1, k, 1.0) if k < 3 else (ft2, k - 2, scale)
        want = {n: t * factor if factor != 1.0 else t for n, t in layer(source, i).items()}
        got = layer(merged, k)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want), k
    assert torch.equal(merged["model.embed_tokens.weight"], ft1["model.embed_tokens.weight"])  # the first slice's
    for name in ("model.norm.weight", "lm_head.weight"):  # the last slice's
        assert torch.equal(merged[name], ft2[name] * scale if scale != 1.0 else ft2[name])
    assert len(merged) == 3 + 6 * 9
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6 and model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3,
                                                                                                            VOCAB)


def test_each_slice_merges_its_sources_with_gradients_over_the_slice(models):
    """Slice 1: base + [0, 1]·τ1 over its two layers (0 then 1); slice 2: base + 0.5·τ2. Embeddings follow the first
    slice at gradient position 0 (weight 0: the base's), norm and head the last slice's (0.5·τ2)."""
    recipe = write(models / "ta.yaml", """merge_method: task_arithmetic
base_model: base
slices:
  - sources:
      - {model: base, layer_range: [0, 2]}
      - {model: ft1, layer_range: [0, 2], parameters: {weight: [0.0, 1.0]}}
  - sources:
      - {model: base, layer_range: [2, 4]}
      - {model: ft2, layer_range: [2, 4]}
    parameters: {weight: 0.5}
""")
    merge_recipe(recipe, models / "ta")
    merged, base, ft1, ft2 = (read_model(models / n) for n in ("ta", "base", "ft1", "ft2"))
    for k, (ft, weight) in enumerate([(ft1, 0.0), (ft1, 1.0), (ft2, 0.5), (ft2, 0.5)]):
        for name, b in layer(base, k).items():
            want = b + weight * (layer(ft, k)[name] - b)
            torch.testing.assert_close(layer(merged, k)[name], want, rtol=0, atol=1e-7, msg=f"{k} {name}")
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    for name in ("model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(merged[name], base[name] + 0.5 * (ft2[name] - base[name]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("body, message", [
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2]}, "
     "{model: ft2, layer_range: [0, 3]}]\n", r"slices\[0\]: every source must span the same number of layers"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [2, 6]}]\n",
     r"slices\[0\]\.sources\[0\]: layer_range \[2, 6\] reaches beyond ft1's 4 layers"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [3, 1]}]\n",
     r"layer_range \[3, 1\]: give \[start, stop\)"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2]}, "
     "{model: ft2, layer_range: [0, 2]}]\n", r"slices\[0\]: passthrough takes at least 1 and at most 1 model"),
    ("merge_method: task_arithmetic\nbase_model: base\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2]}]\n",
     r"slices\[0\]: task_arithmetic merges task vectors against the base, so the base \(base\) must be one"),
    ("merge_method: passthrough\nmodels: [{model: ft1}]\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2]}]\n",
     r"give 'models' or 'slices', not both"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2], "
     "parameters: {density: 0.5}}]\n", r"slices\[0\]\.sources\[0\]\.parameters\.density: passthrough has no "
                                       r"parameter 'density'"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: ft1, layer_range: [0, 2]}]\n"
     "    residual_weight: 0.5\n", r"residual_weight is not supported"),
])
def test_bad_slices_are_one_line_before_anything_is_written(models, body, message):
    with pytest.raises(TaskvecError, match=message) as e:
        merge_recipe(write(models / "bad.yaml", body), models / "out")
    assert "\n" not in str(e.value) and not (models / "out").exists()


def test_dry_run_and_cli(models, cli):
    path = write(models / "franken.yaml", FRANKEN % 1.0)
    views = describe_views(path, MergeOptions(progress=False))
    assert [title for title, _ in views] == ["slice 1: output layers 0-2 from ft1[0:3]",
                                             "slice 2: output layers 3-5 from ft2[1:4]"]
    first = [row[0] for row in views[0][1].rows]
    assert "model.embed_tokens.weight" in first and "lm_head.weight" not in first
    code, out = cli("merge", path, "--dry-run")
    assert "slice 2: output layers 3-5" in out
    cli("merge", path, "--out", models / "cli", "-q")
    assert torch.equal(read_model(models / "cli")["model.layers.5.mlp.up_proj.weight"],
                       read_model(models / "ft2")["model.layers.3.mlp.up_proj.weight"])


def test_tune_refuses_a_slices_recipe_with_one_line(models, tmp_path):
    from taskvec.merge import merge_to_memory

    with pytest.raises(TaskvecError, match="a slices recipe is merged by taskvec merge"):
        merge_to_memory(write(models / "franken.yaml", FRANKEN % 1.0))
