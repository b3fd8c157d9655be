"""Do taskvec and mergekit 0.1.5 compute the same tensors from the same recipes?

Generates a small LLaMA-shaped float32 checkpoint family (a base and three fine-tunes), runs every deterministic
method both have through `mergekit-yaml` and `taskvec merge` with identical recipes (gradients and filters
included), and prints the largest relative difference per method:
max over tensors of max|taskvec - mergekit| / max|mergekit|. The target is 1e-5.

mergekit is LGPL and heavy: it is installed into its own virtual environment (default .cache/mergekit-venv, created
on first use with `pip install torch==2.13.0` then `mergekit==0.1.5`) and run as a separate program; taskvec never
imports it. Not part of CI. Run: python benchmarks/mergekit_parity.py [--mergekit-venv DIR]
Random methods (dare_*, della*) are left out: mergekit draws from torch's global generator, taskvec from seeded
per-tensor generators, so their masks differ by design (and taskvec rescales DARE survivors by 1/density, as the
paper does, where mergekit matches the L1 norm). arcee_fusion is compared: mergekit draws a random sample only to
estimate the quantiles of tensors above 1,000,000 entries (taskvec computes them exactly), and the family's largest
tensor has 32,768.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _mergekit import ensure_mergekit  # noqa: E402

HIDDEN, INTER, LAYERS, VOCAB = 64, 160, 4, 512

RECIPES: dict[str, str] = {
    "linear": """merge_method: linear
models:
  - model: {ft1}
    parameters: {{weight: 0.6}}
  - model: {ft2}
    parameters: {{weight: [0.2, 0.9]}}
""",
    "task_arithmetic": """merge_method: task_arithmetic
base_model: {base}
parameters: {{lambda: 0.8}}
models:
  - model: {ft1}
    parameters:
      weight: [{{filter: mlp, value: 0.5}}, {{value: 1.0}}]
  - model: {ft2}
    parameters: {{weight: -0.3}}
  - model: {ft3}
    parameters: {{weight: [0.2, 0.7, 0.4]}}
""",
    "ties": """merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {ft2}
    parameters: {{weight: 0.7, density: [0.3, 0.8]}}
  - model: {ft3}
    parameters: {{weight: 0.5, density: 0.6}}
""",
    "breadcrumbs": """merge_method: breadcrumbs
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 1.0, density: 0.6, gamma: 0.05}}
  - model: {ft2}
    parameters: {{weight: 0.5, density: 0.7, gamma: 0.02}}
""",
    "model_stock": """merge_method: model_stock
base_model: {base}
models:
  - model: {base}
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
""",
    "slerp": """merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {ft1}
parameters:
  t:
    - filter: self_attn
      value: [0.0, 0.5, 0.3, 0.7, 1.0]
    - value: 0.4
""",
    "nuslerp": """merge_method: nuslerp
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 0.3}}
  - model: {ft2}
    parameters: {{weight: 0.7}}
""",
}
RECIPES["breadcrumbs_ties"] = RECIPES["breadcrumbs"].replace("method: breadcrumbs", "method: breadcrumbs_ties")
# the methods mergekit 0.1.5 added (sce, karcher, multislerp, nearswap, arcee_fusion, ram, ramplus_tl)
RECIPES["sce"] = """merge_method: sce
base_model: {base}
parameters:
  select_topk:
    - filter: self_attn
      value: [0.2, 0.9]
    - value: 0.5
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["sce (select_topk 1)"] = """merge_method: sce
base_model: {base}
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["karcher"] = """merge_method: karcher
base_model: {base}
parameters: {{max_iter: 5, tol: 1.0e-6}}
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["karcher (no base)"] = """merge_method: karcher
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["multislerp"] = """merge_method: multislerp
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: [0.2, 0.8]}}
  - model: {ft2}
    parameters: {{weight: 0.5}}
  - model: {ft3}
    parameters:
      weight: [{{filter: mlp, value: 0.1}}, {{value: 0.3}}]
"""
RECIPES["multislerp (no base)"] = """merge_method: multislerp
parameters: {{normalize_weights: false, eps: 1.0e-6}}
models:
  - model: {ft1}
    parameters: {{weight: 0.3}}
  - model: {ft2}
    parameters: {{weight: 0.6}}
"""
RECIPES["nearswap"] = """merge_method: nearswap
base_model: {base}
parameters:
  t:
    - filter: mlp
      value: 0.005
    - value: [0.001, 0.02]
models:
  - model: {ft3}
"""
RECIPES["arcee_fusion"] = """merge_method: arcee_fusion
base_model: {base}
models:
  - model: {ft3}
"""
RECIPES["ram"] = """merge_method: ram
base_model: {base}
parameters:
  epsilon: [{{filter: self_attn, value: 0.02}}, {{value: 0.012}}]
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["ram (defaults)"] = """merge_method: ram
base_model: {base}
models:
  - model: {ft1}
  - model: {ft2}
"""
RECIPES["ramplus_tl"] = """merge_method: ramplus_tl
base_model: {base}
parameters: {{r: 0.5, alpha: 0.8, epsilon: [0.01, 0.02]}}
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
RECIPES["ramplus_tl (defaults)"] = """merge_method: ramplus_tl
base_model: {base}
models:
  - model: {ft1}
  - model: {ft2}
  - model: {ft3}
"""
# slices: a frankenmerge (6 layers from two models' overlapping ranges, one scaled) and per-slice merges with a
# gradient over the first slice and slice-level parameters in the second
RECIPES["passthrough (slices)"] = """merge_method: passthrough
slices:
  - sources:
      - model: {ft1}
        layer_range: [0, 3]
  - sources:
      - model: {ft2}
        layer_range: [1, 4]
        parameters: {{scale: 0.5}}
"""
RECIPES["task_arithmetic (slices)"] = """merge_method: task_arithmetic
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {ft1}
        layer_range: [0, 2]
        parameters: {{weight: [0.2, 1.0]}}
      - model: {ft3}
        layer_range: [0, 2]
        parameters: {{weight: 0.4}}
  - sources:
      - model: {base}
        layer_range: [2, 4]
      - model: {ft2}
        layer_range: [2, 4]
    parameters: {{weight: 0.7}}
"""
RECIPES["ties (slices)"] = """merge_method: ties
base_model: {base}
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {ft1}
        layer_range: [0, 4]
        parameters: {{weight: 1.0, density: 0.5}}
      - model: {ft2}
        layer_range: [0, 4]
        parameters: {{weight: 0.6, density: [0.3, 0.9]}}
  - sources:
      - model: {base}
        layer_range: [2, 4]
      - model: {ft3}
        layer_range: [1, 3]
        parameters: {{weight: 1.0, density: 0.7}}
"""


def write_family(root: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({f"{p}self_attn.{x}_proj.weight": (HIDDEN, HIDDEN) for x in "qkvo"})
        shapes.update({f"{p}mlp.gate_proj.weight": (INTER, HIDDEN), f"{p}mlp.up_proj.weight": (INTER, HIDDEN),
                       f"{p}mlp.down_proj.weight": (HIDDEN, INTER), f"{p}input_layernorm.weight": (HIDDEN,),
                       f"{p}post_attention_layernorm.weight": (HIDDEN,)})
    base = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "torch_dtype": "float32", "max_position_embeddings": 256}
    paths = {}
    for name, scale in (("base", 0.0), ("ft1", 0.01), ("ft2", 0.01), ("ft3", 0.02)):
        folder = root / name
        folder.mkdir(parents=True)
        tensors = {k: (v + scale * torch.randn(v.shape, generator=g)).contiguous() for k, v in base.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config))
        paths[name] = folder
    return paths


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mergekit-venv", type=Path, default=ROOT / ".cache" / "mergekit-venv")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mergekit_parity.json")
    args = ap.parse_args()
    mergekit = ensure_mergekit(args.mergekit_venv)
    version = subprocess.run([str(args.mergekit_venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskvec-parity-") as tmp:
        work = Path(tmp)
        paths = write_family(work)
        for method, template in RECIPES.items():
            slug = method.replace(" ", "-").replace("(", "").replace(")", "")
            recipe = work / f"{slug}.yaml"
            recipe.write_text(template.format(**{k: str(v) for k, v in paths.items()}))
            t0 = time.perf_counter()
            mk = subprocess.run([str(mergekit), str(recipe), str(work / f"mk-{slug}"), "--quiet"],
                                capture_output=True, text=True)
            t1 = time.perf_counter()
            tv = subprocess.run([sys.executable, "-m", "taskvec.cli", "merge", str(recipe), "--out",
                                 str(work / f"tv-{slug}"), "-q"], capture_output=True, text=True)
            t2 = time.perf_counter()
            if mk.returncode or tv.returncode:
                rows.append({"method": method, "error": (mk.stderr or tv.stderr).strip().splitlines()[-1]})
                continue
            a, b = read_all(work / f"tv-{slug}"), read_all(work / f"mk-{slug}")
            worst, where = 0.0, None
            for name, ref in b.items():
                diff = float((a[name].double() - ref.double()).abs().max()) / max(float(ref.double().abs().max()), 1e-30)
                if diff > worst:
                    worst, where = diff, name
            rows.append({"method": method, "max_rel_diff": worst, "worst_tensor": where,
                         "same_tensor_names": sorted(a) == sorted(b), "pass": worst <= 1e-5 and sorted(a) == sorted(b),
                         "mergekit_s": round(t1 - t0, 2), "taskvec_s": round(t2 - t1, 2)})
    result = {"mergekit_version": version, "target": 1e-5, "checkpoint": f"LLaMA-shaped, hidden {HIDDEN}, "
              f"{LAYERS} layers, vocab {VOCAB}, float32", "machine": platform.platform(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"taskvec vs mergekit {version}: largest relative difference per method (target 1e-5)\n")
    print("| method | max relative difference | worst tensor | result |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | - | - | ERROR: {r['error']} |")
        else:
            print(f"| {r['method']} | {r['max_rel_diff']:.2e} | {r['worst_tensor'] or '- (bit-identical)'} | "
                  f"{'pass' if r['pass'] else 'MISS'} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
