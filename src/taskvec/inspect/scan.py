"""Stream task vectors tensor by tensor, in row blocks, and add up their interference statistics.

Three passes over the inputs, none holding more than a block of each vector (plus, for TIES' per-tensor trim, one
tensor's magnitudes at a time, as the merge does): two count magnitudes for the exact global top-k% thresholds
(``selection.ranked``), the third computes every sum (``stats.Totals``).
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .. import __version__
from ..engine.blocks import block_numel, block_start, row_blocks
from ..dtypes import dtype_name
from ..errors import TaskvecError
from ..inputs import Input, ModelInput, open_input
from ..io.checkpoint import Checkpoint, open_checkpoint
from ..methods.sparsify import magnitude_mask
from ..progress import Reporter
from ..selection import TorchMagnitudes, ranked, top_k, top_k_rank
from ..parameters import layer_index, module_type
from . import stats
from .report import InspectReport

TOP_K = (1, 5, 20)
F32 = torch.float32
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    bytes_per_entry: int  # bytes read per entry, over every input and the base

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def inspect_vectors(vectors: Sequence[str | Path], base: str | Path | None = None, *, tolerance: float = 0.0,
                    density: float = 0.2, top_k: Sequence[float] = TOP_K, progress: bool = False) -> InspectReport:
    """Norms, overlap and sign conflicts of task vectors, before merging them.

    `vectors` are fine-tuned models (τ = model − `base`, which is then required) and/or stored task vectors; every
    number is defined in ``taskvec.inspect.stats``. Streams the inputs three times; memory stays at a few blocks.
    """
    if not vectors:
        raise TaskvecError("inspect needs at least one model or task vector")
    if not tolerance >= 0:
        raise TaskvecError(f"--tolerance {tolerance}: must be 0 or more (an entry counts as changed if |δ| > it)")
    if not 0 < density <= 1:
        raise TaskvecError(f"--density {density}: TIES keeps this fraction of each tensor; use a value in (0, 1]")
    if not top_k or not all(0 < k <= 100 for k in top_k):
        raise TaskvecError(f"top-k percentages {list(top_k)}: each must be in (0, 100]")
    start = time.monotonic()
    inputs: list[Input] = []
    base_ckpt = None
    try:
        for ref in vectors:
            inputs.append(open_input(str(ref)))
        models = [i for i in inputs if isinstance(i, ModelInput)]
        if models and base is None:
            raise TaskvecError(f"{models[0].label}: is a model, not a stored task vector; give --base BASE (the model "
                               "it was fine-tuned from) so that its task vector is model - base")
        if base is not None:
            base_ckpt = open_checkpoint(str(base))
        vocabulary = None
        if models and base_ckpt is not None and _vocabularies_differ(base_ckpt, models):
            from ..vocab import align_vocabularies  # rows compared by token, on the base's vocabulary

            alignment = align_vocabularies("base", base_ckpt, inputs, (), open_checkpoint)
            if alignment is not None:
                vocabulary = alignment.summary()
                base_ckpt = alignment.wrap(base_ckpt)
                for inp in inputs:
                    inp.checkpoint = alignment.wrap(inp.checkpoint)
        tensors, skipped = common_tensors(inputs, base_ckpt if models else None)
        scan = Scan(inputs, base_ckpt if models else None, tensors, tolerance, density, progress)
        thresholds = scan.top_k_thresholds(list(top_k))
        totals = scan.sums(thresholds)
    finally:
        for inp in inputs:
            inp.close()
        if base_ckpt is not None:
            base_ckpt.close()
    labels = [i.label for i in inputs]
    kinds = ["model - base" if isinstance(i, ModelInput) else "stored task vector" for i in inputs]
    settings = {
        "inputs": [{"ref": str(v), "kind": k} for v, k in zip(vectors, kinds)],
        "base": None if base is None else str(base), "tolerance": tolerance, "density": density,
        "top_k_percent": list(top_k), "ties": {"trim_scope": "tensor", "consensus_method": "sum", "weights": 1.0},
        "taskvec_version": __version__,
    }
    if vocabulary is not None:
        settings["vocabulary"] = vocabulary
    return InspectReport(
        settings=settings,
        vectors=[stats.vector_stats(totals, i, labels[i], kinds[i], thresholds[i]) for i in range(len(inputs))],
        pairs=[stats.pair_stats(totals, p, labels) for p in stats.pairs(len(inputs))],
        tensors=len(tensors), parameters=sum(t.numel for t in tensors),
        skipped=[{"tensor": n, "reason": r} for n, r in skipped.items()], seconds=time.monotonic() - start,
    )


def _vocabularies_differ(base: Checkpoint, models: list[Input]) -> bool:
    """Whether an embedding or LM-head tensor has another row count in some model than in the base."""
    from ..vocab import ROW_MODULES, module_of

    for name, info in base.tensors.items():
        if module_of(name) in ROW_MODULES and info.shape:
            if any(name in m.checkpoint and m.checkpoint.info(name).shape[0] != info.shape[0] for m in models):
                return True
    return False


def common_tensors(inputs: list[Input], base: Checkpoint | None) -> tuple[list[TensorSpec], dict[str, str]]:
    """The floating-point tensors every task vector has (a stored vector's absent tensor is a zero delta), and the
    others with the reason they are left out. Shapes and dtypes that disagree are errors."""
    names = list(dict.fromkeys(n for inp in inputs for n in inp.names()))
    tensors, skipped = [], {}
    for name in names:
        present = [(inp.label, inp.info(name)) for inp in inputs if inp.info(name) is not None]
        missing = [inp.label for inp in inputs if inp.info(name) is None and not inp.absent_means_zero]
        if base is not None and any(isinstance(inp, ModelInput) and inp.info(name) for inp in inputs):
            if name not in base:
                skipped[name] = f"not in the base {base.label}"
                continue
            present.append((base.label, base.info(name)))
        if missing:
            skipped[name] = f"missing from {missing[0]}"
            continue
        floats = [info.dtype.is_floating_point for _, info in present]
        if not any(floats):
            skipped[name] = (f"{dtype_name(present[0][1].dtype)} tensor (ids, masks): not a task vector; the merge "
                             "copies it from the base")
            continue
        if not all(floats):
            f_info, i_info = present[floats.index(True)][1], present[floats.index(False)][1]
            raise TaskvecError(f"tensor {name!r}: {dtype_name(f_info.dtype)} in {f_info.file} but "
                               f"{dtype_name(i_info.dtype)} in {i_info.file}; compare models of one architecture")
        first = present[0][1]
        for _, info in present[1:]:
            if info.shape != first.shape:
                raise TaskvecError(
                    f"tensor {name!r}: shape {list(first.shape)} in {first.file} but {list(info.shape)} in {info.file};"
                    " task vectors can only be compared between models of one architecture, fine-tuned from one base"
                )
        tensors.append(TensorSpec(name, first.shape, sum(info.dtype.itemsize for _, info in present)))
    compared = {t.name for t in tensors}
    for inp in inputs:  # what a stored vector left out when it was extracted (integer buffers...)
        for entry in getattr(inp, "manifest", {}).get("skipped", []):
            if entry["tensor"] not in compared:
                skipped.setdefault(entry["tensor"], f"{entry['reason']} (left out of {inp.label} at extraction)")
    if not tensors:
        raise TaskvecError(
            f"no floating-point tensor is common to {', '.join(i.label for i in inputs)}"
            + (f" and the base {base.label}" if base is not None else "")
            + f" ({len(skipped)} left out, e.g. {next(iter(skipped.items()), ('-', '-'))[0]!r}: "
            f"{next(iter(skipped.values()), 'no tensors')}); compare task vectors of one architecture"
        )
    return tensors, skipped


class Scan:
    """Reads blocks of every task vector: ``read(tensor, rows)`` gives one float32 block per input."""

    def __init__(self, inputs, base, tensors, tolerance, density, progress):
        self.inputs, self.base, self.tensors = inputs, base, tensors
        self.tolerance, self.density = tolerance, density
        self.units = [(t, rows) for t in tensors for rows in row_blocks(t.shape, "entry")]
        total = sum(_numel(t, rows) * t.bytes_per_entry for t, rows in self.units)
        self.reporter = Reporter("inspect", 3 * len(self.units), 3 * total, enabled=progress, unit="blocks")

    def _base_rows(self, t: TensorSpec, rows):
        if self.base is None:  # stored vectors only: a shape for the zeros of an absent tensor, without memory
            shape = t.shape if rows is None else (rows[1] - rows[0],) + t.shape[1:]
            return torch.empty(shape, device="meta")
        return self.base.read(t.name, rows).to(F32)

    def read(self, t: TensorSpec, rows) -> list[torch.Tensor]:
        b = self._base_rows(t, rows)
        return [inp.delta(t.name, b, F32, CPU, rows) for inp in self.inputs]

    def _read_counted(self, unit) -> list[torch.Tensor]:
        t, rows = unit
        deltas = self.read(t, rows)
        self.reporter.advance(_numel(t, rows) * t.bytes_per_entry)
        return deltas

    def top_k_thresholds(self, top_k: list[float]) -> list[dict]:
        """Per input, k -> the exact magnitude at the top-k% rank of the whole vector (two counting passes)."""
        total = sum(t.numel for t in self.tensors)
        ranks = [top_k_rank(total, k / 100) for k in top_k]  # never None: total > 0 and keep_count keeps >= 1
        found = ranked(TorchMagnitudes(self.units, self._read_counted), [ranks] * len(self.inputs))
        return [dict(zip(top_k, (r.value for r in row))) for row in found]

    def sums(self, thresholds: list[dict]) -> stats.Totals:
        totals = stats.Totals(len(self.inputs))
        try:
            for t in self.tensors:
                self._tensor(t, thresholds, totals)
        finally:
            self.reporter.close()
        return totals

    def _tensor(self, t: TensorSpec, thresholds, totals: stats.Totals) -> None:
        blocks = row_blocks(t.shape, "entry")
        densities = [self.density] * len(self.inputs)
        selections = None
        if blocks != [None]:  # TIES trims per tensor: find each vector's selection over the whole tensor first
            source = TorchMagnitudes(blocks, partial(self.read, t))
            selections = top_k(source, t.numel, densities, exact_zeros=False)
        for rows in blocks:
            deltas = self._read_counted((t, rows))
            if selections is None:
                selections = top_k(TorchMagnitudes.of(*deltas), t.numel, densities, exact_zeros=False)
            offset = block_start(t.shape, rows)
            views = [stats.view(d, self.tolerance, th, magnitude_mask(d, self.density, sel, offset))
                     for d, th, sel in zip(deltas, thresholds, selections)]
            totals.add_block(layer_index(t.name), module_type(t.name), views)


def _numel(t: TensorSpec, rows) -> int:
    return block_numel(t.shape, rows)
