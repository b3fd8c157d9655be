"""Which tensors the output has, where each comes from, and whether the inputs fit -- from headers alone.

Every floating tensor that the base and all inputs provide is merged. Integer and boolean tensors (position ids,
masks) are copied from the base, never averaged -- also when a fine-tuned model lacks them (transformers 5 no longer
saves ``position_ids``). A tensor that some inputs lack is an error, unless
``on_missing="carry"``: then it is copied from the base, or else from the first model that has it (for models with
extra modules such as a vision tower or a reward head).
"""

from dataclasses import dataclass

import torch

from ..errors import TaskvecError
from ..inputs import Input
from ..io.checkpoint import Checkpoint, TensorInfo

ON_MISSING = ("error", "carry")


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_dtype: torch.dtype
    out_dtype: torch.dtype
    merge: bool  # False: copied as is from `copy_from`
    copy_from: Checkpoint | None
    read_bytes: int


def plan_tensors(
    base: Checkpoint | None,
    inputs: list[Input],
    out_dtype: torch.dtype | None = None,
    on_missing: str = "error",
    reference: Checkpoint | None = None,
) -> list[TensorPlan]:
    """The output's tensors in the reference's on-disk order (the base, else `reference`, else the first input)."""
    if on_missing not in ON_MISSING:
        raise TaskvecError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    reference = base if base is not None else (reference or inputs[0].checkpoint)
    ref_label = f"base {reference.label}" if base is not None else f"{reference.label}"
    ordered = sorted(reference.tensors.values(), key=lambda t: (str(t.file), t.offset))
    extra: dict[str, tuple[Input, TensorInfo]] = {}
    for inp in inputs:
        for name in inp.names():
            if name not in reference and name not in extra:
                extra[name] = (inp, inp.info(name))
    missing: list[str] = []
    plans: list[TensorPlan] = []
    for ref in ordered:
        holders, lacking = [], []
        for inp in inputs:
            info = inp.info(ref.name)
            if info is None:
                if not inp.absent_means_zero and ref.dtype.is_floating_point:
                    lacking.append(inp)
                continue
            if info.shape != ref.shape:
                raise TaskvecError(
                    f"tensor {ref.name!r}: shape {list(info.shape)} in {info.file} but {list(ref.shape)} in "
                    f"{ref.file}; merging needs models of the same architecture fine-tuned from the same base"
                )
            holders.append(info)
        missing += [f"{ref.name!r} is in {ref_label} but not in {inp.label}" for inp in lacking]
        merge = ref.dtype.is_floating_point and not lacking
        plans.append(_plan(ref, None if merge else reference, merge, out_dtype, holders))
    for name, (owner, info) in extra.items():
        if owner.absent_means_zero and base is not None:
            raise TaskvecError(
                f"tensor {name!r}: task vector {owner.label} changes it, but the base {base.label} has no such tensor"
            )
        missing.append(f"{name!r} is in {owner.label} but not in {ref_label}")
        plans.append(_plan(info, owner.checkpoint, False, out_dtype, []))
    if missing and on_missing == "error":
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TaskvecError(
            f"tensor {missing[0]}{more}. Models must have the same tensors; to copy such tensors from the model "
            "that has them (extra modules such as a vision tower or reward head), pass --carry-missing"
        )
    return plans


def _plan(ref: TensorInfo, copy_from, merge: bool, out_dtype, holders: list[TensorInfo]) -> TensorPlan:
    floating = ref.dtype.is_floating_point
    dtype = out_dtype if (floating and out_dtype is not None) else ref.dtype
    read = ref.nbytes + (sum(h.nbytes for h in holders) if merge else 0)
    return TensorPlan(ref.name, ref.shape, ref.dtype, dtype, merge, copy_from, read)
