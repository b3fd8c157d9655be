"""Run per-tensor jobs on worker threads and write their results in planned order.

Each job reads its inputs, computes one output tensor and returns it; torch and the positioned reads release the
GIL, so threads overlap reading, math and writing. At most ``2 * workers`` results are in flight, which bounds
memory by a few tensors whatever the model size. Results are written in the planned order, so the output is
byte-identical whatever the number of threads.
"""

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .io.writer import ShardedWriter
from .progress import Reporter


@dataclass(frozen=True)
class Job:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # of the output tensor
    read_bytes: int  # for progress
    run: Callable[[], torch.Tensor]


@dataclass
class RunStats:
    tensors: int
    bytes_read: int
    bytes_written: int
    seconds: float


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def execute(jobs: list[Job], writer: ShardedWriter, workers: int | None = None, label: str = "merge",
            progress: bool = True) -> RunStats:
    workers = workers or default_workers()
    total = sum(j.read_bytes for j in jobs)
    reporter = Reporter(label, len(jobs), total, enabled=progress)
    start = time.monotonic()
    written = 0
    pending: deque[tuple[Job, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taskvec")
    try:
        queue = iter(jobs)
        for job in queue:
            pending.append((job, pool.submit(job.run)))
            if len(pending) >= 2 * workers:
                written += _write_next(pending, writer, reporter)
        while pending:
            written += _write_next(pending, writer, reporter)
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        reporter.close()
    return RunStats(len(jobs), total, written, time.monotonic() - start)


def _write_next(pending: deque, writer: ShardedWriter, reporter: Reporter) -> int:
    job, fut = pending.popleft()
    tensor = fut.result()
    if tensor.dtype != job.dtype or tuple(tensor.shape) != job.shape:
        raise RuntimeError(f"{job.name}: job returned {tensor.dtype} {tuple(tensor.shape)}, planned {job.dtype} {job.shape}")
    writer.write(job.name, tensor)
    reporter.advance(job.read_bytes)
    return tensor.numel() * tensor.element_size()
