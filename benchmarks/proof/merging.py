"""Merges for the proof suite, through taskvec's public surface only: the `taskvec` CLI or `taskvec.merge_recipe`.

A merged model needs to exist only while it is being scored (MiniLM merges are 90 MB each): `merged` writes it to a
scratch folder and removes it afterwards. What it scored is remembered by the merged weights' content (see
scoring.py), so the cache can never hold a number for other weights than the ones that earned it.
"""

import copy
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import yaml


def recipe(method: str, base: Path, models: list[Path], config: dict) -> str:
    """A mergekit-style recipe: `density` per model (as mergekit puts it), everything else global; weights 1."""
    model_params = {"weight": 1.0, **({"density": config["density"]} if "density" in config else {})}
    global_params = {k: v for k, v in config.items() if k != "density"}
    data = {"merge_method": method, "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(m), "parameters": copy.deepcopy(model_params)} for m in models]}
    if global_params:
        data["parameters"] = global_params
    return yaml.safe_dump(data, sort_keys=False)


@contextmanager
def merged(recipe_text: str, workdir: Path, use_cli: bool = False, seed: int = 0, keep: Path | None = None):
    """Yields the folder of the merged model (`seed`: the random drops of dare_* and della*); removed afterwards
    unless `keep` names where it should stay."""
    name = "merge-" + uuid.uuid4().hex[:12]
    out = keep or workdir / name
    path = workdir / "recipes" / (name + ".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_text)
    try:
        if use_cli:
            subprocess.run([sys.executable, "-m", "taskvec.cli", "merge", str(path), "--out", str(out), "--force",
                            "--seed", str(seed), "-q"], check=True)
        else:
            import taskvec

            taskvec.merge_recipe(taskvec.load_recipe(path), out,
                                 taskvec.MergeOptions(force=True, progress=False, seed=seed))
        yield out
    finally:
        path.unlink(missing_ok=True)
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
