"""The reference executor: a planned tensor through the method's own tensor function, block by block.

Per block it reads the rows of the base and of every input, hands float32 copies to the method, and stores the
cast result in the output tensor: float32 temporaries stay the size of a block. A method that needs a selection
over the whole tensor (TIES, Breadcrumbs) first gets it by streaming the blocks through the counting passes
(``statistics``). This is what runs on a GPU, for stored task vectors, and for anything the fused kernels do not
cover.
"""

from __future__ import annotations

import torch

from ..store.fingerprint import update
from ..inputs import Input
from ..io.checkpoint import Checkpoint
from ..methods import MergeMethod
from ..methods.spectral import ROWS_PER_BLOCK, TaskRows, is_tall
from .blocks import block_numel, block_start, row_blocks
from .finite import check_finite
from .plan import TensorPlan
from .statistics import with_statistics


class ReferenceMerger:
    def __init__(self, method: MergeMethod, base: Checkpoint | None, inputs: list[Input], device: torch.device,
                 compute_dtype: torch.dtype, needs_base: bool, fingerprint,
                 add_base: bool = True):
        self.method, self.base, self.inputs = method, base, inputs
        self.device, self.cd, self.needs_base, self.fingerprint = device, compute_dtype, needs_base, fingerprint
        self.add_base = add_base  # False: a deltas method's result is the output (a task vector, `extract`)

    def copy(self, plan: TensorPlan) -> torch.Tensor:
        src = plan.copy_from.read(plan.name)
        if plan.copy_from is self.base and self.fingerprint is not None:
            self.fingerprint.add(plan.name, src)
        return src.to(plan.out_dtype)

    def memory(self, plan: TensorPlan) -> int:
        """Peak bytes of a merge job: the output, plus the float32 temporaries of a block (every input, its pruned
        copy and the masks), plus the whole base when the tensor is taken whole. A row-pass merge holds a block of
        every input in float64 and its factors: a few matrices of the tensor's width squared per input."""
        if self._by_rows(plan):
            block, width = min(plan.shape[0], ROWS_PER_BLOCK) * plan.shape[1], plan.shape[1]
            return plan.write_bytes + ((len(self.inputs) + 4) * block + (len(self.inputs) + 3) * width * width) * 8
        block = block_numel(plan.shape, row_blocks(plan.shape, self.method.granularity)[0])
        held = 3 if self.method.streaming else 2 * len(self.inputs) + 4
        return plan.write_bytes + held * block * self.cd.itemsize + block * plan.source_dtype.itemsize

    def _deltas(self, plan: TensorPlan, rows, which) -> list[torch.Tensor]:
        """Task vectors of the models `which`, rows [start, stop) (for the counting passes)."""
        b = self.base.read(plan.name, rows).to(device=self.device, dtype=self.cd)
        return [self._delta(plan, i, b, rows) for i in which]

    def _delta(self, plan: TensorPlan, i: int, b: torch.Tensor, rows) -> torch.Tensor:
        """Input i's task vector; zero where it lacks the tensor (--carry-missing: it keeps the base's value)."""
        if i in plan.lacking:
            return torch.zeros(b.shape, dtype=self.cd, device=self.device)
        return self.inputs[i].delta(plan.name, b, self.cd, self.device, rows)

    def _weights(self, plan: TensorPlan, i: int, b: torch.Tensor | None, rows) -> torch.Tensor:
        if i in plan.lacking:  # the base's value; a method that ignores the base (linear) did not read it
            raw = b if b is not None else self.base.read(plan.name, rows).to(device=self.device, dtype=self.cd)
            return raw.clone()
        return self.inputs[i].weights(plan.name, b, self.cd, self.device, rows)

    def _by_rows(self, plan: TensorPlan) -> bool:
        return self.method.by_rows is not None and is_tall(plan.shape)

    def merge(self, plan: TensorPlan) -> torch.Tensor:
        if self._by_rows(plan):
            return self._merge_by_rows(plan)
        name, method = plan.name, self.method
        blocks = row_blocks(plan.shape, method.granularity)
        models = plan.models
        if method.selection is not None:
            models = with_statistics(method, plan, blocks, lambda rows, which: self._deltas(plan, rows, which))
        digest = self.fingerprint.begin(name, plan.source_dtype, plan.shape) \
            if self.fingerprint is not None and self.needs_base else None
        out = None if blocks == [None] else torch.empty(plan.shape, dtype=plan.out_dtype)
        for rows in blocks:
            raw = self.base.read(name, rows) if self.needs_base else None
            if digest is not None:
                update(digest, raw)
            b = None if raw is None else raw.to(device=self.device, dtype=self.cd)
            start = block_start(plan.shape, rows)
            args = [m.at(start) for m in models]
            if method.inputs == "deltas":
                xs = (self._delta(plan, i, b, rows) for i in range(len(self.inputs)))
            else:
                xs = (self._weights(plan, i, b, rows) for i in range(len(self.inputs)))
            merged = method.fn(b, xs if method.streaming else list(xs), args, plan.params)
            if method.inputs == "deltas" and self.add_base:
                merged = merged.add_(b)
            if out is None:
                out = check_finite(name, merged.to(plan.out_dtype), self.inputs).cpu()
            else:  # cast while copying into place, then check the stored values
                check_finite(name, out[rows[0]:rows[1]].copy_(merged), self.inputs)
        if digest is not None:
            self.fingerprint.finish(digest)
        return out

    def _merge_by_rows(self, plan: TensorPlan) -> torch.Tensor:
        """A tall matrix through the method's passes over blocks of rows: each pass reads the inputs' rows again
        (from the page cache after the first), so a 128K-token embedding is merged in the memory of a few blocks."""
        name = plan.name
        last = {}  # the base rows read last: the output pass adds them to the block they were read for

        def read(start: int, stop: int) -> list[torch.Tensor]:
            last["rows"], last["raw"] = (start, stop), self.base.read(name, (start, stop))
            b = last["raw"].to(device=self.device, dtype=self.cd)
            return [self._delta(plan, i, b, (start, stop)) for i in range(len(self.inputs))]

        digest = self.fingerprint.begin(name, plan.source_dtype, plan.shape) if self.fingerprint is not None else None
        out = torch.empty(plan.shape, dtype=plan.out_dtype)
        merged_rows = self.method.by_rows(TaskRows(plan.shape, read), [m.at(0) for m in plan.models], plan.params)
        for start, stop, merged in merged_rows:  # the last pass: blocks in order
            raw = last["raw"] if last.get("rows") == (start, stop) else self.base.read(name, (start, stop))
            if digest is not None:
                update(digest, raw)
            if self.add_base:
                merged = merged.add_(raw.to(device=self.device, dtype=self.cd))
            check_finite(name, out[start:stop].copy_(merged), self.inputs)
        if digest is not None:
            self.fingerprint.finish(digest)
        return out
