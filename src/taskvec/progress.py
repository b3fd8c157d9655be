"""Progress of a long merge: a live bar (tensors, bytes, ETA) on a terminal, a plain line every few seconds otherwise."""

import sys
import time

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn


class Reporter:
    def __init__(self, label: str, total_tensors: int, total_bytes: int, enabled: bool = True, stream=None,
                 unit: str = "tensors"):
        self.unit = unit  # what one advance() counts
        self.stream = stream or sys.stderr
        self.label = label
        self.total_tensors = total_tensors
        self.total_bytes = max(total_bytes, 1)
        self.enabled = enabled
        self.tensors = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._bar = None
        if enabled and self.stream.isatty():
            self._bar = Progress(
                TextColumn("{task.description} " + unit), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(f"{label} 0/{total_tensors}", total=self.total_bytes)
            self._bar.start()

    def advance(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, description=f"{self.label} {self.tensors}/{self.total_tensors}")
        elif self.enabled:
            now = time.monotonic()
            if now - self._last_line >= 5 or self.tensors == self.total_tensors:
                self._last_line = now
                pct = 100 * self.bytes / self.total_bytes
                rate = self.bytes / max(now - self.start, 1e-9)
                eta = (self.total_bytes - self.bytes) / rate if rate > 0 else 0
                print(
                    f"{self.label}: {self.tensors}/{self.total_tensors} {self.unit}, {self.bytes / 1e6:.0f}/"
                    f"{self.total_bytes / 1e6:.0f} MB read ({pct:.0f}%), ETA {eta:.0f} s",
                    file=self.stream, flush=True,
                )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
