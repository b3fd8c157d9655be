"""The fast path: merge a tensor with the fused kernels instead of the reference tensor code, same bits out.

It runs where a method declares that a kernel covers it (``MergeMethod.kernel``: the kernel's kind and every
parameter value it handles) and the run allows it: models (not stored task vectors) on the CPU, float32 compute,
float inputs and outputs (bfloat16, float16, float32). Per block it reads the stored rows of the base and every
model and hands their raw bits to one kernel that writes the output rows. A magnitude selection (TIES' top k) comes
from ``taskvec.selection`` with the kernels as its counting backend (``KernelMagnitudes``) -- or, when most of a
task vector is zero, from counting zeros -- never from a whole-tensor buffer or a sort.

Set TASKVEC_FUSED=0 to run everything through the reference path.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from ..inputs import Input, ModelInput
from ..methods import MergeMethod, weight_total, weights_of
from ..methods.sparsify import keep_limit
from ..selection import CUT_ALL, HI_BINS, LO_BINS, TopK, keep_count, top_k, top_k_rank
from . import kernels as K
from .blocks import block_numel, block_start, row_blocks
from .finite import check_finite
from .plan import TensorPlan
from .scheduler import BufferPool

KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def enabled() -> bool:
    return os.environ.get("TASKVEC_FUSED", "1") != "0"


def runs(method: MergeMethod, base, inputs: list[Input], device: torch.device, compute_dtype: torch.dtype,
         fingerprint) -> bool:
    """Whether this run can use the kernels at all (per tensor, ``covers`` decides)."""
    return (enabled() and method.kernel is not None and (base is not None or not method.kernel.uses_base)
            and device.type == "cpu" and compute_dtype == torch.float32 and fingerprint is None
            and all(type(i) is ModelInput for i in inputs))


def covers(method: MergeMethod, plan: TensorPlan) -> bool:
    """Whether the kernels compute this tensor exactly as the method's reference function would."""
    dtypes = plan.input_dtypes + ((plan.source_dtype,) if method.kernel.uses_base else ())
    return (not plan.lacking and all(d in KERNEL_DTYPES for d in dtypes) and plan.out_dtype in KERNEL_DTYPES
            and method.fused(plan.params, plan.models))


class FusedMerger:
    """Merges the planned tensors whose path is "fused"."""

    def __init__(self, method: MergeMethod, base, inputs: list[Input], outputs: BufferPool | None = None):
        self.method, self.base, self.inputs = method, base, inputs
        self.kernel = method.kernel
        self.outputs = outputs or BufferPool(0)  # where results come from; the engine gives them back once written
        self._with_base = self.kernel.uses_base  # linear: the models alone (a base, if any, is one of them)
        self._local = threading.local()  # per worker thread: one reusable read buffer per checkpoint

    def memory(self, plan: TensorPlan) -> int:
        """Peak bytes: the output tensor, plus a block of every input in its stored dtype and float32 scratch."""
        block = block_numel(plan.shape, row_blocks(plan.shape, "entry")[0])
        return plan.write_bytes + block * (4 * (len(self.inputs) + 1) + 8 * len(self.inputs))

    def merge(self, plan: TensorPlan) -> torch.Tensor:
        name, params = plan.name, plan.params
        blocks = row_blocks(plan.shape, "entry")
        weights = np.array(weights_of(plan.models), dtype=np.float32)
        lam = np.float32(params.get("lambda", 1.0))
        out = self.outputs.take(plan.shape, plan.out_dtype)
        flat_out = out.reshape(-1)
        sparse = self.kernel.kind == "sparse_consensus"
        if sparse:
            kinds, thresholds, cuts, limits, rescales, factors, seeds = self._sparsifiers(plan, blocks)
            scratch = np.empty((len(self.inputs) + 3, K.CHUNK), dtype=np.float32)
            consensus = K.CONSENSUS_SUM if self.kernel.consensus else K.CONSENSUS_NONE
        else:
            scratch = np.empty(block_numel(plan.shape, blocks[0]), np.float32)  # the first block is the largest
        divisor = np.float32(weight_total(weights_of(plan.models)))
        for rows, base, xs in self._each_block(name, blocks):
            start = block_start(plan.shape, rows)
            target = flat_out[start:start + xs[0].size]
            dest = _kernel_view(target) if plan.out_dtype != torch.float16 else np.empty(xs[0].size, np.float32)
            if sparse:
                K.sparse_consensus(base, xs, kinds, thresholds, cuts, np.int64(start), seeds, limits, rescales,
                                   factors, weights, consensus, params["normalize"], divisor, lam, dest, scratch)
            elif self._with_base:
                K.weighted_deltas(base, xs, weights, params["normalize"], divisor, lam, dest, scratch)
            else:
                K.weighted_models(xs, weights, params["normalize"], divisor, dest, scratch)
            if plan.out_dtype == torch.float16:
                target.copy_(torch.from_numpy(dest))
                dest = target.float().numpy()
            if not K.all_finite(dest):
                check_finite(name, target, self.inputs)  # raises, naming the tensor
        return out

    def _read(self, name, rows):
        """Rows of the base and of every model as flat kernel arrays (bfloat16 bits, else float32), read into
        buffers this thread reuses: fresh memory for every read would cost the kernel a page fault per 4 KB."""
        base = self._array(self.base, 0, name, rows) if self._with_base else None
        xs = [self._array(inp.checkpoint, k + 1, name, rows) for k, inp in enumerate(self.inputs)]
        if len({x.dtype for x in xs}) > 1:  # one array type for the kernels' tuple of models: float32
            xs = [_as_float32(x) for x in xs]
        return base, tuple(xs)

    def _each_block(self, name, blocks):
        """(rows, base, xs) block by block; the arrays are valid until the next block is read."""
        for rows in blocks:
            yield (rows, *self._read(name, rows))

    def _array(self, checkpoint, slot: int, name: str, rows) -> np.ndarray:
        dtype = checkpoint.info(name).dtype
        need = 4 * block_numel(checkpoint.info(name).shape, rows)  # bytes enough for any kernel dtype
        buffers = self._local.__dict__.setdefault("buffers", {})
        if buffers.get(slot) is None or buffers[slot].numel() < need:
            buffers[slot] = torch.empty(need, dtype=torch.uint8)
        raw = checkpoint.read(name, rows, into=buffers[slot]).reshape(-1).view(torch.uint8).numpy()
        if dtype == torch.bfloat16:
            return raw.view(np.uint16)
        return raw.view(np.float32) if dtype == torch.float32 else raw.view(np.float16).astype(np.float32)

    def _sparsifiers(self, plan: TensorPlan, blocks):
        """Per model: what the kernel keeps (all, by magnitude, at random), its threshold and tie cut or random
        limit, and the rescale of survivors."""
        m = len(plan.models)
        kinds = np.full(m, K.KEEP_ALL, dtype=np.int64)
        thresholds = np.zeros(m, dtype=np.float32)
        cuts = np.full(m, -1, dtype=np.int64)
        limits = np.zeros(m, dtype=np.uint32)
        rescales = np.full(m, K.RESCALE_NONE, dtype=np.int64)
        factors = np.ones(m, dtype=np.float32)
        seeds = np.zeros(m, dtype=np.uint64)
        if self.kernel.sparsifier == "random":  # methods/dare.py drop_and_rescale, sparsify.random_keep
            for i, model in enumerate(plan.models):
                seeds[i] = model.require_seed()
                if model["density"] < 1:
                    kinds[i], limits[i] = K.KEEP_RANDOM, keep_limit(model["density"])
                if plan.params["rescale"]:
                    rescales[i], factors[i] = K.RESCALE_DIV, model["density"]
        elif self.kernel.sparsifier == "magnitude":  # methods/ties.py: the planner's selection, or the tensor's
            kinds[:] = K.KEEP_MAGNITUDE
            for i, selection in enumerate(self._top_k(plan, blocks)):
                thresholds[i], cuts[i] = selection.threshold, min(selection.cut, CUT_ALL)
        return kinds, thresholds, cuts, limits, rescales, factors, seeds

    def _top_k(self, plan: TensorPlan, blocks) -> list[TopK]:
        """Each model's selection: the planner's (trim_scope global), else the tensor's exact top k (as
        ``selection.top_k`` with exact_zeros off), settled by counting zeros where that suffices."""
        found = [m.selection for m in plan.models]
        todo = [i for i, s in enumerate(found) if s is None]
        todo = self._zero_thresholds(plan, blocks, todo, found)
        if todo:
            source = KernelMagnitudes(self, plan.name, blocks, todo)
            for i, selection in zip(todo, top_k(source, plan.numel, [plan.models[i]["density"] for i in todo],
                                                exact_zeros=False)):
                found[i] = selection
        return found

    def _zero_thresholds(self, plan: TensorPlan, blocks, todo: list[int], found: list) -> list[int]:
        """Settle the models whose threshold is zero -- more than 1 - density of the task vector is exactly zero,
        common when a bfloat16 fine-tune's small updates rounded away -- with a cheap counting pass instead of the
        histograms. Every 16th block is sampled first, so models this cannot settle cost little."""
        numel = plan.numel
        ranks = {i: top_k_rank(numel, plan.models[i]["density"]) for i in todo}
        candidates = [i for i in todo if 0 < keep_count(numel, plan.models[i]["density"]) < numel]
        if not candidates:
            return todo
        sample = blocks[::16]
        zeros = self._count_zeros(plan.name, sample, candidates)
        seen = sum(block_numel(plan.shape, rows) for rows in sample)
        if len(sample) == len(blocks):  # the sample was everything (a small tensor): its counts are exact
            likely, exact = [], [i for i, z in zip(candidates, zeros) if z >= ranks[i]]
        else:
            likely, exact = [i for i, z in zip(candidates, zeros) if z / seen >= ranks[i] / numel + 0.02], []
        if likely:
            exact += [i for i, z in zip(likely, self._count_zeros(plan.name, blocks, likely)) if z >= ranks[i]]
        for i in exact:
            found[i] = TopK(0.0, -1)
        return [i for i in todo if found[i] is None]

    def _count_zeros(self, name: str, blocks, models: list[int]) -> np.ndarray:
        zeros = np.zeros(len(models), dtype=np.int64)
        for rows, base, xs in self._each_block(name, blocks):
            K.count_zeros(base, xs, np.array(models, dtype=np.int64), zeros)
        return zeros


class KernelMagnitudes:
    """``selection.Magnitudes`` over the stored bits: |x_i - base| of the models `models` of one tensor, counted by
    the kernels block by block."""

    def __init__(self, merger: FusedMerger, name: str, blocks, models: list[int]):
        self.merger, self.name, self.blocks, self.models = merger, name, blocks, models

    def _chosen(self, xs, which):
        return tuple(xs[self.models[p]] for p in which)

    def high(self, which):
        hist = np.zeros((len(which), HI_BINS), dtype=np.int64)
        for rows, base, xs in self.merger._each_block(self.name, self.blocks):
            K.magnitude_histograms(base, self._chosen(xs, which), hist)
        return hist

    def low(self, which, bins):
        hist = np.zeros((len(which), bins.shape[1], LO_BINS), dtype=np.int64)
        for rows, base, xs in self.merger._each_block(self.name, self.blocks):
            K.magnitude_low_histograms(base, self._chosen(xs, which), bins, hist)
        return hist

    def nth_equal(self, vector, value, count):
        remaining = np.array([count], dtype=np.int64)
        shape = self.merger.base.info(self.name).shape
        for rows, base, xs in self.merger._each_block(self.name, self.blocks):
            at = K.find_nth_equal(base, xs[self.models[vector]], np.float32(value), remaining)
            if at >= 0:
                return block_start(shape, rows) + at
        raise RuntimeError(f"{self.name}: fewer entries equal to the threshold than counted")


def _as_float32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << np.uint32(16)).view(np.float32) if x.dtype == np.uint16 else x


def _kernel_view(t: torch.Tensor) -> np.ndarray:
    """A writable numpy view of a flat output slice (bfloat16 as its bits)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
