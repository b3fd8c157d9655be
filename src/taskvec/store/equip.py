"""``taskvec equip BASE org/a@1 org/b@2:0.5 --out DIR``: pull (cached), verify each vector's base, merge.

Everything that can be checked before a byte is downloaded is: the method and its parameters (as a recipe), the
output folder, and each manifest's architecture (tensor names and shapes) against BASE's headers. The vectors are
then pulled into the cache (digests verified) and merged in one streaming pass by the merge engine, which hashes
BASE as it reads it and compares every tensor with the vector's record: a wrong base stops the merge, naming the
tensors that differ, before the output is committed -- nothing is written. ``force_base`` warns instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import TaskvecError
from . import names
from .base_check import OVERRIDE, architecture_differences
from .client import StoreClient
from .package import PackageManifest


def equip(base: str, vectors: list[tuple[str, float]], out: str | Path, client: StoreClient, *,
          method: str = "task_arithmetic", parameters: dict | None = None, model_parameters: dict | None = None,
          out_dtype: str | None = None, options=None):
    """Merge the published task vectors ``vectors`` ([(org/name@version, weight)]) into ``base``; write ``out``."""
    from ..inputs import StoredVectorInput
    from ..io.checkpoint import open_checkpoint
    from ..io.model_folder import model_card
    from ..io.writer import prepare_target
    from ..merge import MergeOptions, merge_inputs
    from ..recipe import parse_recipe

    options = options or MergeOptions()
    refs = [str(names.parse_ref(ref)) for ref, _ in vectors]
    if len(set(refs)) != len(refs):
        raise TaskvecError("equip: a task vector is listed twice; give each once, with its weight as REF:WEIGHT")
    recipe = parse_recipe({
        "merge_method": method, "base_model": str(base), "out_dtype": out_dtype,
        "models": [{"model": ref, "parameters": {"weight": w, **(model_parameters or {})}}
                   for ref, (_, w) in zip(refs, vectors)],
        "parameters": parameters or None,
    }, "equip")
    prepare_target(Path(out), options.force)
    base_ckpt = open_checkpoint(base)
    inputs = []
    try:
        manifests = [client.manifest(ref) for ref in refs]
        notes = []
        for ref, (manifest, _) in zip(refs, manifests):
            note = check_architecture(ref, manifest, base_ckpt, options.force_base)
            if note:
                notes.append(note)
                warnings.warn(note)
        client.fetch_blobs(*client.uncached(manifests))  # all at once: several blobs download in parallel
        folders = [client.cached_vector(ref, m, body) for ref, (m, body) in zip(refs, manifests)]
        inputs = [StoredVectorInput(folder, label=ref) for ref, folder in zip(refs, folders)]
        from ..methods import get_method

        result = merge_inputs(
            base_ckpt, inputs, get_method(method), [m.parameters or {} for m in recipe.models],
            recipe.parameters or {}, Path(out), options,
            out_dtype=_dtype(out_dtype),
            card=model_card([(str(base), base_ckpt.config())] + refs, method, recipe.to_yaml(), Path(out)),
        )
        result.warnings[:0] = notes
        return result
    finally:
        base_ckpt.close()
        for inp in inputs:
            inp.close()


def _dtype(name):
    if name is None:
        return None
    from ..dtypes import parse_dtype

    return parse_dtype(name)


def check_architecture(ref: str, manifest: PackageManifest, base, force_base: bool = False) -> str | None:
    """Compare a package's recorded base tensors (names, shapes) with ``base``'s headers, before any download."""
    recorded = manifest.architecture.tensors
    if not recorded:
        return None
    parts = architecture_differences(base, recorded)
    if not parts:
        return None
    message = (f"{ref}: different architecture: it was extracted from another model than {base.label}: "
               f"{'; '.join(parts)}; its base is {manifest.base.id_hint or 'unnamed'} ({manifest.base.fingerprint})")
    if not force_base:
        raise TaskvecError(f"{message}. Equip that base, or pass {OVERRIDE} if {base.label} was fine-tuned from it")
    return message + " (--force-base: merged anyway)"
