"""Names of tensor dtypes, as safetensors headers, recipes and the command line spell them."""

import torch

from .errors import TaskvecError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

_RECIPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(name: str, where: str = "dtype") -> torch.dtype:
    """A floating dtype from a recipe or option value such as ``bfloat16`` or ``fp16``."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _RECIPE_NAMES:
        choices = ", ".join(sorted({"float32", "float16", "bfloat16", "float64"}))
        raise TaskvecError(f"{where}: unknown dtype {name!r}; use one of {choices}")
    return _RECIPE_NAMES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16`` (the spelling config.json uses)."""
    return str(dtype).removeprefix("torch.")
