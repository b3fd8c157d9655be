"""A plan as a person reads it (``taskvec merge --dry-run``): one row per output tensor, and the totals -- bytes to
read and write, and the peak memory the scheduler's budget allows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dtypes import dtype_name
from .engine.plan import MergePlan, TensorPlan

PYTHON_AND_LIBRARIES = 300 * 2**20  # measured: Python, torch, numba and the compiled kernels, before any tensor


@dataclass(frozen=True)
class PlanView:
    columns: list[str]
    rows: list[list[str]]
    models: list[str]  # the inputs, in the plan's order (columns m1, m2, ... refer to them)
    model_columns: str  # what a model's cell shows, e.g. "weight/density"
    totals: dict[str, int | str]


def describe(plan: MergePlan, workers: int, memory_budget: int, job_memory) -> PlanView:
    """Rows of (tensor, path, shape, dtypes, each model's weight/density...) and the totals; `job_memory(t)` is the
    executor's estimate of a tensor's peak bytes."""
    keys = [p.name for p in plan.method.model_params]
    shown = [k for k in ("weight", "density") if k in keys] + [k for k in keys if k not in ("weight", "density")]
    columns = ["tensor", "path", "shape", "dtype in → out"] + [f"m{i + 1}" for i in range(len(plan.inputs))]
    settings = {_params(t) for t in plan.tensors if t.merge}
    varying = len(settings) > 1  # the method's parameters get a column only when filters or gradients vary them
    if varying:
        columns.append("parameters")
    rows = [_row(t, shown, varying) for t in plan.tensors]
    rows = [row + [""] * (len(columns) - len(row)) for row in rows]
    memories = sorted((job_memory(t) for t in plan.tensors), reverse=True)
    in_flight = max(min(memory_budget, sum(memories[:2 * workers])), memories[0] if memories else 0)
    paths = {p: sum(1 for t in plan.tensors if t.path == p) for p in ("fused", "reference", "copy")}
    totals = {
        "method": plan.method.name, "tensors": len(plan.tensors), **{f"{p} tensors": n for p, n in paths.items()},
        "read bytes": plan.read_bytes(), "write bytes": plan.write_bytes(),
        "peak memory (estimate)": PYTHON_AND_LIBRARIES + in_flight,
    }
    if len(settings) == 1 and next(iter(settings)):
        totals["parameters"] = next(iter(settings))
    if plan.global_scope:
        totals["selection"] = "over each whole task vector (trim_scope global): two counting passes before merging"
    models = [_short(i.label) for i in plan.inputs]
    return PlanView(columns, rows, models, "/".join(shown), totals)


def _row(t: TensorPlan, shown: list[str], with_params: bool) -> list[str]:
    dtypes = sorted({dtype_name(d) for d in (t.input_dtypes or (t.source_dtype,))})
    row = [t.name, _path(t), "×".join(map(str, t.shape)) or "scalar", f"{','.join(dtypes)} → {dtype_name(t.out_dtype)}"]
    row += ["/".join(_fmt(m.values[k]) for k in shown) for m in t.models] if t.merge else []
    if t.merge and with_params:
        row.append(_params(t))
    return row


def _path(t: TensorPlan) -> str:
    """How the tensor is made: merged (fused or reference; models that lack it keep the base's value), or copied
    from the model named."""
    if not t.merge:
        return f"copy from {_short(t.copy_from.label)}"
    if t.lacking:
        return f"{t.path} ({', '.join(f'm{k + 1}' for k in t.lacking)}: base value)"
    return t.path


def _params(t: TensorPlan) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _short(label: str) -> str:
    """A model's name without the folders above it, as people call it."""
    return Path(label.rstrip("/")).name or label
