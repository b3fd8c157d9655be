"""The one check every merged tensor passes: it is finite, or the merge stops naming the tensor and the inputs."""

import torch

from ..dtypes import dtype_name
from ..errors import TaskvecError
from ..inputs import Input


def check_finite(name: str, tensor: torch.Tensor, inputs: list[Input]) -> torch.Tensor:
    """One cheap reduction proves a tensor finite; only if it is not are the entries checked one by one."""
    if not tensor.is_floating_point():
        return tensor
    total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all()):
        return tensor
    bad = int((~torch.isfinite(tensor)).sum())
    raise TaskvecError(
        f"tensor {name!r}: the merged result has {bad} non-finite value(s) (inf or nan), from non-finite inputs "
        f"or an overflow in the output dtype {dtype_name(tensor.dtype)}; check the inputs "
        f"({', '.join(i.label for i in inputs)}), the weights, or use out_dtype float32 or bfloat16"
    )
