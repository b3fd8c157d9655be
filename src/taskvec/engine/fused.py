"""The fast path: merge a tensor with the fused kernels instead of the reference tensor code, same bits out.

It covers the common case -- models (not stored task vectors) on the CPU, float inputs, float32 compute, and the
methods linear, task_arithmetic, ties (per-tensor or global trim, no L1 rescale, sign by sum), dare_ties and
dare_linear -- and ``FusedMerger.covers`` says no to anything else, which then runs the reference path. Per block it
reads the stored rows of the base and every model and hands their raw bits to one kernel that writes the output
rows. TIES' per-tensor top-k threshold comes from counting zeros when most of a task vector is zero, else from
magnitude histograms (one streaming pass, a second inside the bin that holds the threshold, a partial third to cut
a tie), never from a whole-tensor buffer or a sort.

Set TASKVEC_FUSED=0 to run everything through the reference path.
"""

import math
import os
import threading

import numpy as np
import torch

from . import kernels as K
from .blocks import block_numel, block_start, row_blocks
from .scheduler import BufferPool
from .finite import check_finite
from ..global_trim import HI_BINS, LO_BINS, bin_of_rank, magnitude_of
from ..inputs import ModelInput
from ..methods import get_method, weight_total
from ..methods.sparsify import keep_count, keep_limit

# method -> (sparsifier, consensus) for the task-vector family; linear and task_arithmetic have kernels of their own
FAMILY = {
    "ties": (K.KEEP_MAGNITUDE, True),
    "dare_ties": (K.KEEP_RANDOM, True),
    "dare_linear": (K.KEEP_RANDOM, False),
}
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CUT_ALL = 1 << 62  # a tie cut beyond any index: every entry equal to the threshold is kept
# the reference functions the kernels reproduce: a method whose fn is anything else (a variant, a wrapper) is not
# fused
_REFERENCE = {name: get_method(name).fn for name in (*FAMILY, "task_arithmetic", "linear")}


def enabled() -> bool:
    return os.environ.get("TASKVEC_FUSED", "1") != "0"


class FusedMerger:
    """Merges the tensors the kernels cover; ``covers`` decides per tensor and its resolved parameters."""

    def __init__(self, method, base, inputs, outputs: BufferPool | None = None):
        self.method, self.base, self.inputs = method, base, inputs
        self.outputs = outputs or BufferPool(0)  # where results come from; the engine gives them back once written
        self._with_base = method.name != "linear"  # linear averages the models alone (a base is one of them, if any)
        self._local = threading.local()  # per worker thread: one reusable read buffer per checkpoint

    @staticmethod
    def applies(method, base, inputs, device, compute_dtype, fingerprint) -> bool:
        return (enabled() and (base is not None or method.name == "linear") and device.type == "cpu"
                and compute_dtype == torch.float32 and fingerprint is None
                and _REFERENCE.get(method.name) is method.fn and all(type(i) is ModelInput for i in inputs))

    def covers(self, plan, params: dict) -> bool:
        dtypes = [i.info(plan.name).dtype for i in self.inputs]
        if self._with_base:
            dtypes.append(self.base.info(plan.name).dtype)
        if not all(d in KERNEL_DTYPES for d in dtypes) or plan.out_dtype not in KERNEL_DTYPES:
            return False
        if self.method.name == "ties" and params["rescale"]:  # the L1 rescale needs a float32 sum: reference only
            return False
        return params.get("consensus_method", "sum") == "sum"

    def memory(self, plan) -> int:
        """Peak bytes: the output tensor, plus a block of every input in its stored dtype and float32 scratch."""
        numel = math.prod(plan.shape)
        block = block_numel(plan.shape, row_blocks(plan.shape, "entry")[0])
        return numel * plan.out_dtype.itemsize + block * (4 * (len(self.inputs) + 1) + 8 * len(self.inputs))

    def merge(self, plan, model_params: list[dict], params: dict) -> torch.Tensor:
        name = plan.name
        blocks = row_blocks(plan.shape, "entry")
        numel = math.prod(plan.shape)
        weights = np.array([mp["weight"] for mp in model_params], dtype=np.float32)
        lam = np.float32(params.get("lambda", 1.0))
        out = self.outputs.take(plan.shape, plan.out_dtype)
        flat_out = out.reshape(-1)
        family = FAMILY.get(self.method.name)
        if family is not None:
            kinds, thresholds, cuts, random_thresholds, rescales, factors = self._sparsifiers(
                plan, blocks, numel, model_params, params, family[0])
            scratch = np.empty((len(self.inputs) + 3, K.CHUNK), dtype=np.float32)
            seeds = np.array([mp.get("_seed", 0) for mp in model_params], dtype=np.uint64)
        else:
            scratch = np.empty(block_numel(plan.shape, blocks[0]), np.float32)  # the first block is the largest
        divisor = np.float32(weight_total([mp["weight"] for mp in model_params]))
        for rows, base, xs in self._each_block(name, blocks):
            start = block_start(plan.shape, rows)
            target = flat_out[start:start + xs[0].size]
            dest = _kernel_view(target) if plan.out_dtype != torch.float16 else np.empty(xs[0].size, np.float32)
            if family is None:
                if self._with_base:
                    K.weighted_deltas(base, xs, weights, params["normalize"], divisor, lam, dest, scratch)
                else:
                    K.weighted_models(xs, weights, params["normalize"], divisor, dest, scratch)
            else:
                K.sparse_consensus(base, xs, kinds, thresholds, cuts, np.int64(start), seeds, random_thresholds,
                                   rescales, factors, weights, K.CONSENSUS_SUM if family[1] else K.CONSENSUS_NONE,
                                   params["normalize"], divisor, lam, dest, scratch)
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

    def _sparsifiers(self, plan, blocks, numel, model_params, params, sparsifier):
        m = len(model_params)
        kinds = np.full(m, K.KEEP_ALL, dtype=np.int64)
        thresholds = np.zeros(m, dtype=np.float32)
        cuts = np.full(m, -1, dtype=np.int64)
        random_thresholds = np.zeros(m, dtype=np.uint32)
        rescales = np.full(m, K.RESCALE_NONE, dtype=np.int64)
        factors = np.ones(m, dtype=np.float32)
        if sparsifier == K.KEEP_RANDOM:  # methods/dare.py drop_and_rescale, sparsify.random_keep
            for i, mp in enumerate(model_params):
                density = mp["density"]
                if density <= 0:
                    kinds[i] = K.KEEP_NONE
                    continue
                if density < 1:
                    kinds[i] = K.KEEP_RANDOM
                    random_thresholds[i] = keep_limit(density)
                if params["rescale"]:
                    rescales[i], factors[i] = K.RESCALE_DIV, density
            return kinds, thresholds, cuts, random_thresholds, rescales, factors
        kinds[:] = K.KEEP_MAGNITUDE  # methods/ties.py: a global threshold, or the tensor's exact top k
        per_tensor = []
        for i, mp in enumerate(model_params):
            if "_threshold" in mp:
                thresholds[i], cuts[i] = mp["_threshold"], CUT_ALL  # global scope: keep |x| >= threshold
            else:
                per_tensor.append(i)
        for i, (threshold, cut) in zip(per_tensor, self._top_k(plan.name, blocks, numel, per_tensor,
                                                               [model_params[i]["density"] for i in per_tensor])):
            thresholds[i], cuts[i] = threshold, cut
        return kinds, thresholds, cuts, random_thresholds, rescales, factors

    def _top_k(self, name, blocks, numel, models: list[int], densities: list[float]) -> list[tuple[float, int]]:
        """sparsify.top_k_selection(|x_i - base|, density, exact_zeros=False) for each model, by histograms: the
        bin of the top 16 bits that holds the wanted rank, then the low 16 bits inside that bin."""
        if not models:
            return []
        result: list[tuple[float, int] | None] = [None] * len(models)
        ranks = []
        for j, density in enumerate(densities):
            k = keep_count(numel, density)
            result[j] = (-math.inf, numel) if k >= numel else (math.inf, -1) if k == 0 else None
            ranks.append(numel - k + 1)
        todo = [j for j in range(len(models)) if result[j] is None]
        if not todo:
            return result
        todo = self._zero_thresholds(name, blocks, numel, [models[j] for j in todo], [ranks[j] for j in todo], todo,
                                     result)
        if not todo:
            return result
        pick = [models[j] for j in todo]
        hist = np.zeros((len(pick), HI_BINS), dtype=np.int64)
        zeros = np.zeros(len(pick), dtype=np.int64)
        for rows, base, xs in self._each_block(name, blocks):
            K.magnitude_histograms(base, tuple(xs[i] for i in pick), hist, zeros)
        cumulative = hist.cumsum(axis=1)
        bins = np.full(len(pick), -1, dtype=np.int64)
        in_bin = {}  # p -> the wanted rank within its bin
        for p, j in enumerate(todo):
            if zeros[p] >= ranks[j]:  # the threshold is 0: keep the non-zero entries, no tie scan
                result[j] = (0.0, -1)
            else:
                bins[p], in_bin[p] = bin_of_rank(cumulative[p], ranks[j])
        if (bins < 0).all():
            return result
        low = np.zeros((len(pick), LO_BINS), dtype=np.int64)
        for rows, base, xs in self._each_block(name, blocks):
            K.magnitude_low_histograms(base, tuple(xs[i] for i in pick), bins, low)
        for p, j in enumerate(todo):
            if bins[p] < 0:
                continue
            b = int(bins[p])
            low_cumulative = low[p].cumsum()
            lo, _ = bin_of_rank(low_cumulative, in_bin[p])
            threshold = magnitude_of(b, lo)
            greater = numel - (ranks[j] - in_bin[p]) - int(low_cumulative[lo])
            needed = keep_count(numel, densities[j]) - greater
            cut = CUT_ALL if needed == int(low[p, lo]) else self._nth_equal(name, blocks, pick[p], threshold, needed)
            result[j] = (threshold, cut)
        return result

    def _zero_thresholds(self, name, blocks, numel, models, ranks, todo, result) -> list[int]:
        """Settle the models whose threshold is zero -- more than 1 - density of the task vector is exactly zero,
        common when a bfloat16 fine-tune's small updates rounded away -- with a cheap counting pass instead of the
        histograms. Every 16th block is sampled first, so models this cannot settle cost little."""
        sample = blocks[::16]
        zeros = np.zeros(len(models), dtype=np.int64)
        for rows, base, xs in self._each_block(name, sample):
            K.count_zeros(base, xs, np.array(models, dtype=np.int64), zeros)
        seen = sum(block_numel(self.base.info(name).shape, rows) for rows in sample)
        if len(sample) == len(blocks):  # the sample was everything (a small tensor): its counts are exact
            likely, exact = [], [k for k in range(len(models)) if zeros[k] >= ranks[k]]
        else:
            likely, exact = [k for k in range(len(models)) if zeros[k] / seen >= ranks[k] / numel + 0.02], []
        for k in exact:
            result[todo[k]] = (0.0, -1)
        if likely:
            zeros = np.zeros(len(likely), dtype=np.int64)
            for rows, base, xs in self._each_block(name, blocks):
                K.count_zeros(base, xs, np.array([models[k] for k in likely], dtype=np.int64), zeros)
            for k, count in zip(likely, zeros):
                if count >= ranks[k]:
                    result[todo[k]] = (0.0, -1)
        return [j for j in todo if result[j] is None]

    def _nth_equal(self, name, blocks, model: int, value: float, count: int) -> int:
        """Flat index of the count-th entry with |x - base| == value (sparsify._tie_cut)."""
        remaining = np.array([count], dtype=np.int64)
        for rows, base, xs in self._each_block(name, blocks):
            at = K.find_nth_equal(base, xs[model], np.float32(value), remaining)
            if at >= 0:
                return block_start(self.base.info(name).shape, rows) + at
        raise RuntimeError(f"{name}: fewer entries equal to the threshold than counted")


def _as_float32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << np.uint32(16)).view(np.float32) if x.dtype == np.uint16 else x


def _kernel_view(t: torch.Tensor) -> np.ndarray:
    """A writable numpy view of a flat output slice (bfloat16 as its bits)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
