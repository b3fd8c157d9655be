"""The search space, written in the recipe itself: any value may be ``{search: [lo, hi]}`` (a range; add
``log: true`` to sample it on a log scale) or ``{choices: [v1, v2, ...]}`` instead of a number.

A searched value may sit anywhere a value does -- a model's ``weight``, a top-level ``lambda``, one point of a layer
gradient (``weight: [{search: [0, 1]}, {search: [0, 1]}]``) or the ``value`` of a ``{filter, value}`` condition --
so the space is found by walking the recipe, and a candidate is the same recipe with each searched value replaced.
Each dimension is named by where it sits (``models[0].weight``, ``lambda``, ``models[1].density[2]``), and those
names are the trace's columns and Optuna's parameter names.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

from ..errors import TaskvecError

KEYS = ("search", "choices")


@dataclass(frozen=True)
class Dimension:
    name: str  # where it sits, readable: models[0].weight, lambda, models[1].density[2]
    path: tuple  # keys and indices into the recipe mapping
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def grid(self, points: int) -> list:
        """The values a grid search tries: the choices as given, or `points` evenly spaced over the range (on a log
        scale with ``log``), ends included."""
        if self.choices is not None:
            return list(self.choices)
        if points == 1 or self.low == self.high:
            return [self.low]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            values = [math.exp(a + (b - a) * i / (points - 1)) for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        return [min(max(v, self.low), self.high) for v in values]  # rounding never leaves the range


def is_searched(node: Any) -> bool:
    return isinstance(node, dict) and bool(set(node) & set(KEYS))


def find_dimensions(recipe: dict, source: str = "recipe") -> list[Dimension]:
    """Every searched value of a raw recipe mapping, in recipe order; errors name the field."""
    dims: list[Dimension] = []
    _walk(recipe, (), dims, source)
    return dims


def _walk(node: Any, path: tuple, dims: list[Dimension], source: str) -> None:
    if is_searched(node):
        dims.append(_dimension(node, path, source))
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, path + (key,), dims, source)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, path + (i,), dims, source)


def dimension_name(path: tuple) -> str:
    """``("models", 0, "parameters", "weight")`` -> ``models[0].weight``; ``("parameters", "lambda")`` -> ``lambda``."""
    parts = [p for p in path if p != "parameters"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _dimension(node: dict, path: tuple, source: str) -> Dimension:
    name = dimension_name(path)
    where = f"{source}: {name}"
    if path[:1] not in (("parameters",), ("models",)) or (path[0] == "models" and "parameters" not in path):
        raise TaskvecError(f"{where}: only parameter values can be searched (under 'parameters' or a model's "
                           f"'parameters')")
    if "search" in node and "choices" in node:
        raise TaskvecError(f"{where}: give either 'search: [lo, hi]' or 'choices: [...]', not both")
    if "search" in node:
        extra = sorted(set(node) - {"search", "log"})
        if extra:
            raise TaskvecError(f"{where}: unknown key {extra[0]!r}; a range is {{search: [lo, hi]}} "
                               f"(optionally log: true)")
        bounds = node["search"]
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(_is_number(b) for b in bounds)):
            raise TaskvecError(f"{where}: search must be a list of two numbers [lo, hi], got {bounds!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise TaskvecError(f"{where}: search [{bounds[0]}, {bounds[1]}] needs finite lo <= hi")
        log = node.get("log", False)
        if not isinstance(log, bool):
            raise TaskvecError(f"{where}: log must be true or false, got {log!r}")
        if log and low <= 0:
            raise TaskvecError(f"{where}: a log-scale range needs lo > 0, got {bounds[0]}")
        return Dimension(name, path, low=low, high=high, log=log)
    extra = sorted(set(node) - {"choices"})
    if extra:
        raise TaskvecError(f"{where}: unknown key {extra[0]!r}; a list of values is {{choices: [v1, v2, ...]}}")
    choices = node["choices"]
    if not isinstance(choices, list) or not choices:
        raise TaskvecError(f"{where}: choices must be a non-empty list of values, got {choices!r}")
    for v in choices:
        if not (_is_number(v) or isinstance(v, (bool, str))):
            raise TaskvecError(f"{where}: each choice must be a number, true/false or a string, got {v!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise TaskvecError(f"{where}: choices {choices!r} repeat a value")
    return Dimension(name, path, choices=tuple(choices))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def substitute(recipe: dict, dims: list[Dimension], values: dict[str, Any]) -> dict:
    """The recipe with every searched value replaced by ``values[dimension name]``: a plain recipe."""
    out = copy.deepcopy(recipe)
    for d in dims:
        parent = out
        for key in d.path[:-1]:
            parent = parent[key]
        value = values[d.name]
        parent[d.path[-1]] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """Numbers as YAML writes them plainly: 0.5 not numpy floats; whole floats from an int range stay floats."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    return float(value)


def corners(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Candidates that together use every bound and every choice (for checking the whole space before a search):
    all lows, all highs, and each choice once."""
    lows = {d.name: d.low if d.is_range else d.choices[0] for d in dims}
    out = [lows, {d.name: d.high if d.is_range else d.choices[-1] for d in dims}]
    for d in dims:
        for c in (d.choices or ())[1:-1]:
            out.append({**lows, d.name: c})
    return out


def grid(dims: list[Dimension], points: int) -> list[dict[str, Any]]:
    """Every combination, the first dimension varying slowest."""
    axes = [d.grid(points) for d in dims]
    return [dict(zip([d.name for d in dims], combo)) for combo in itertools.product(*axes)]
