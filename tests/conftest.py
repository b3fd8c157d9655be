import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from taskvec.cli import app  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write_model(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None) -> Path:
    """A Hugging Face-style folder: model.safetensors, or `shards` files plus model.safetensors.index.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            part = names[i::shards]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in part}, folder / fname, metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "toy", "num_hidden_layers": 2}))
    return folder


def read_model(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an output folder, through the safetensors library (an independent reader)."""
    folder = Path(folder)
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def toy_tensors(seed: int = 0, dtype=torch.float32, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": (torch.randn(10, 4, generator=g) * scale).to(dtype),
        "layers.0.w": (torch.randn(4, 4, generator=g) * scale).to(dtype),
        "layers.1.w": (torch.randn(4, 4, generator=g) * scale).to(dtype),
        "layers.1.b": (torch.randn(4, generator=g) * scale).to(dtype),
        "position_ids": torch.arange(6).unsqueeze(0),
    }


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args, ok=True, cwd=None):
        old = os.getcwd()
        if cwd:
            os.chdir(cwd)
        try:
            result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        finally:
            os.chdir(old)
        output = result.output  # click >= 8.2: stdout and stderr interleaved
        try:
            stderr = result.stderr
        except ValueError:  # an older click that did not capture stderr apart
            stderr = ""
        if stderr and stderr not in output:
            output += stderr
        if ok:
            assert result.exit_code == 0, output
        return result.exit_code, output

    return invoke


def ta_recipe(base, *models, weight=1.0, **extra):
    """A task-arithmetic recipe over folders, every model at `weight`."""
    from taskvec import parse_recipe

    return parse_recipe({
        "merge_method": "task_arithmetic", "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": weight}} for m in models], **extra,
    })


def run(recipe, out, **kw):
    """merge_recipe without progress output."""
    from taskvec import MergeOptions, merge_recipe

    return merge_recipe(recipe, out, MergeOptions(progress=False, **kw))


def sentence_transformers_base(folder: Path) -> Path:
    """A model folder laid out as sentence-transformers saves one: config, tokenizer, modules.json and the
    1_Pooling module folder it lists."""
    base = write_model(folder, toy_tensors(0), config={"model_type": "toy", "torch_dtype": "float32"})
    (base / "tokenizer.json").write_text("{}")
    (base / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                    "type": "sentence_transformers.models.Pooling"}]))
    (base / "1_Pooling").mkdir()
    (base / "1_Pooling" / "config.json").write_text("{}")
    return base
