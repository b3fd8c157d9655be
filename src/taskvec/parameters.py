"""Per-tensor parameter values, as mergekit recipes write them: evaluated for one tensor from its name and layer.

A setting is a scalar; a *gradient* -- a list of numbers interpolated linearly over the layers, from the first
layer (position 0) to the last (position 1); or a list of ``{filter, value}`` conditions where the first whose
``filter`` is a substring of the tensor name (or is missing or ``*``) wins. Tensors outside the numbered layers
(embeddings, final norm, output head, pooler) sit at position 0, as in mergekit 0.1.5 (earlier mergekit releases put
the weights after the last layer at 1).
"""

import math
import re
from typing import Any

from .errors import TaskvecError

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, from its name (``model.layers.7.mlp...`` -> 7)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    """What a tensor is within its block, the same in every layer (``model.layers.7.mlp.down_proj.weight`` ->
    ``mlp.down_proj.weight``); a tensor outside the layers is its own full name."""
    m = _LAYER.search(name)
    return name[m.end():] if m else name


def count_layers(names: list[str], config: dict | None) -> int:
    """Number of blocks: from config.json when it says, else from the tensor names."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config and isinstance(config.get(key), int):
            return config[key]
    found = [i for i in map(layer_index, names) if i is not None]
    return max(found) + 1 if found else 0


def position(name: str, num_layers: int) -> float:
    """Where a tensor sits for gradients: 0 at the first layer, 1 at the last; 0 outside the layers. A layer beyond
    `num_layers` gets a position above 1, which ``evaluate`` refuses for gradients."""
    idx = layer_index(name)
    if idx is None:
        return 0.0
    if idx >= num_layers:
        return math.inf
    return idx / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """The value a setting takes for one tensor, or None when no condition matches."""
    if setting is None or isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, dict):  # a single {filter, value} condition
        setting = [setting]
    if all(isinstance(x, (bool, int, float, str)) for x in setting) and not 0 <= t <= 1:
        raise TaskvecError(
            f"tensor {tensor_name!r}: its layer {layer_index(tensor_name)} lies beyond the layer count the model's "
            "config.json declares, so a layer gradient cannot place it; fix num_hidden_layers in config.json, or "
            "give this parameter as a value or {filter, value} conditions"
        )
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if all(isinstance(x, (bool, int, float, str)) for x in setting):
        return setting[int(t * (len(setting) - 1))]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or f in tensor_name:
            return evaluate(cond["value"], tensor_name, t)
    return None
