"""Merges for the proof suite, through taskvec's public surface only: the `taskvec` CLI or `taskvec.merge_recipe`.

A merge is named by its recipe: the recipe's hash keys the cached accuracies, so a merged model needs to exist only
while it is being scored (MiniLM merges are 90 MB each and the suite makes a few hundred).
"""

import hashlib
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from taskvec.methods import get_method
from taskvec.methods.sparsify import RANDOM_STREAM


def recipe(method: str, base: Path, models: list[Path], config: dict) -> str:
    """A mergekit-style recipe: `density` per model (as mergekit puts it), everything else global; weights 1."""
    model_params = {"weight": 1.0, **({"density": config["density"]} if "density" in config else {})}
    global_params = {k: v for k, v in config.items() if k != "density"}
    data = {"merge_method": method, "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(m), "parameters": dict(model_params)} for m in models]}
    if global_params:
        data["parameters"] = global_params
    return yaml.safe_dump(data, sort_keys=False)


def identity(recipe_text: str) -> str:
    """The recipe's hash; for methods that draw random masks also the name of taskvec's random stream, whose draws
    decide the merged model as much as the recipe does."""
    method = get_method(yaml.safe_load(recipe_text)["merge_method"])
    text = recipe_text + (f"\nrandom stream: {RANDOM_STREAM}" if method.random else "")
    return "merge:" + hashlib.sha1(text.encode()).hexdigest()[:16]


@contextmanager
def merged(recipe_text: str, workdir: Path, use_cli: bool, keep: Path | None = None):
    """Yields the folder of the merged model; removed afterwards unless `keep` names where it should stay."""
    out = keep or workdir / ("merge-" + identity(recipe_text).split(":")[1])
    if not (out / "config.json").is_file():
        path = workdir / "recipes" / (out.name + ".yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(recipe_text)
        if use_cli:
            subprocess.run([sys.executable, "-m", "taskvec.cli", "merge", str(path), "--out", str(out), "--force",
                            "-q"], check=True)
        else:
            import taskvec

            taskvec.merge_recipe(taskvec.load_recipe(path), out, taskvec.MergeOptions(force=True, progress=False))
    try:
        yield out
    finally:
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
