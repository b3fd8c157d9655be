"""Run per-tensor jobs on worker threads, each writing its own result at the result's planned place in the output.

Each job reads its inputs and computes one output tensor, which the same worker writes with a positioned write;
torch, the kernels and the positioned reads and writes release the GIL, so threads overlap reading, math and
writing, and no thread waits for an earlier tensor to finish. Jobs are submitted in planned (on-disk) order and
admitted while the memory they are estimated to hold (inputs, scratch and result) fits a budget, and at most
``2 * workers`` at once; a job larger than the budget runs alone. So memory is bounded by a few tensors whatever the
model size, and as every tensor has a fixed place in the files, the output is byte-identical whatever the number of
threads or the order they finish in.
"""

import gc
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

import torch

from ..io.writer import ShardedWriter
from ..progress import Reporter


@dataclass(frozen=True)
class Job:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # of the output tensor
    read_bytes: int  # for progress
    run: Callable[[], torch.Tensor]
    memory: int = 0  # peak bytes the job holds until its result is written (an estimate)
    release: Callable[[torch.Tensor], None] | None = None  # takes the result back once written (a buffer pool)


@dataclass
class RunStats:
    tensors: int
    bytes_read: int
    bytes_written: int
    seconds: float


class BufferPool:
    """Result buffers used again once written: fresh memory costs a page fault and a zeroed page every 4 KB, 0.7 ns
    per merged entry here, more than the merge arithmetic of task arithmetic. Keeps at most `limit` bytes idle."""

    def __init__(self, limit: int):
        self.limit, self.idle = limit, 0
        self._free: dict[int, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            free = self._free.get(nbytes)
            buffer = free.pop() if free else None
            if buffer is not None:
                self.idle -= nbytes
        if buffer is None:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
        return buffer.view(dtype).reshape(shape)

    def give(self, tensor: torch.Tensor) -> None:
        buffer = tensor.reshape(-1).view(torch.uint8)
        with self._lock:
            if self.idle + buffer.numel() <= self.limit:
                self._free.setdefault(buffer.numel(), []).append(buffer)
                self.idle += buffer.numel()


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


DEFAULT_MEMORY_BUDGET = 512 * 2**20


def execute(jobs: list[Job], writer: ShardedWriter, workers: int | None = None, label: str = "merge",
            progress: bool = True, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> RunStats:
    workers = workers or default_workers()
    total = sum(j.read_bytes for j in jobs)
    reporter = Reporter(label, len(jobs), total, enabled=progress)
    start = time.monotonic()
    written = 0
    held = 0  # estimated bytes of the jobs in flight
    running: dict[Future, Job] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taskvec")
    # Blocks allocate many small Python objects; the collector would walk every object torch and numba created at
    # import, again and again (5% of a merge's CPU). Frozen objects are skipped; they thaw afterwards.
    gc.freeze()

    def settle() -> None:
        nonlocal written, held
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            job = running.pop(fut)
            written += fut.result()  # re-raises the job's error
            held -= job.memory
            reporter.advance(job.read_bytes)

    try:
        for job in jobs:  # submitted in planned (on-disk) order; each worker writes its own result
            while running and (len(running) >= 2 * workers or held + job.memory > memory_budget):
                settle()
            running[pool.submit(_run_and_write, job, writer)] = job
            held += job.memory
        while running:
            settle()
    finally:
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        reporter.close()
    return RunStats(len(jobs), total, written, time.monotonic() - start)


def _run_and_write(job: Job, writer: ShardedWriter) -> int:
    tensor = job.run()
    if tensor.dtype != job.dtype or tuple(tensor.shape) != job.shape:
        raise RuntimeError(f"{job.name}: job returned {tensor.dtype} {tuple(tensor.shape)}, planned {job.dtype} {job.shape}")
    writer.write(job.name, tensor)
    if job.release is not None:
        job.release(tensor)
    return tensor.numel() * tensor.element_size()
