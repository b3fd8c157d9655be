"""Candidates in memory: the recipe's models read once, then every candidate merged from them by the same engine as
``taskvec merge`` (same plan, same kernels, so the same bits) into one reused set of output tensors -- no folder is
written to score a candidate.

When the models do not fit in memory (half of what the machine has available), the engine streams them from disk
for every candidate instead: slower, still nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint, open_checkpoint
from ..merge import MergeOptions, merge_to_memory
from ..recipe import parse_recipe


class MemoryCheckpoint(Checkpoint):
    """Another checkpoint's tensors, read once and held in memory. Reads hand out copies, as a disk read would:
    the engine computes in place on what it reads."""

    def __init__(self, source: Checkpoint):
        super().__init__(source.label, source.folder, source.files, source.is_folder)
        self.tensors = dict(source.tensors)
        self._data = {name: source.read(name) for name in source.names()}

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        t = self._data[name]
        if rows is not None:
            t = t[rows[0]:rows[1]]
        nbytes = t.numel() * t.element_size()
        if into is not None and into.numel() >= nbytes and t.numel():
            out = into[:nbytes].view(t.dtype).reshape(t.shape)
            out.copy_(t)
            return out
        return t.clone()


def available_memory() -> int:
    """Bytes the kernel reports as available (MemAvailable), or a guess from the physical size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class CandidateMerger:
    """Merges candidate recipes (plain recipe mappings) over checkpoints opened once."""

    def __init__(self, in_memory: bool | None = None, options: MergeOptions | None = None):
        self.options = options or MergeOptions(progress=False)
        self.in_memory = in_memory
        self._opened: dict[str, Checkpoint] = {}
        self._out: dict[str, torch.Tensor] | None = None

    def _open(self, ref: str, search_dirs: tuple[Path, ...] = ()) -> Checkpoint:
        """The checkpoint of a reference, opened (and read, in memory mode) the first time it is asked for."""
        key = str(next((p.resolve() for p in [Path(ref).expanduser()] + [d / ref for d in search_dirs]
                        if p.exists()), ref))
        if key not in self._opened:
            ckpt = open_checkpoint(ref, search_dirs)
            if self.in_memory is None:
                self.in_memory = True
            self._opened[key] = MemoryCheckpoint(ckpt) if self.in_memory else ckpt
            if self.in_memory:
                ckpt.close()
        return _Unclosed(self._opened[key])

    def plan_memory(self, recipe: dict) -> None:
        """Decide once, from the headers, whether the recipe's models fit in memory (when not told)."""
        if self.in_memory is not None:
            return
        from ..merge import _opened

        with _opened(parse_recipe(recipe, "recipe"), lambda ref, dirs: open_checkpoint(ref, dirs)) as run:
            total = sum(c.info(n).nbytes for c in [run.base] + [i.checkpoint for i in run.inputs] if c is not None
                        for n in c.names())
        self.in_memory = total * 2 <= available_memory()

    def merge(self, recipe: dict, fresh: bool = False) -> dict[str, torch.Tensor]:
        """The merged weights of a plain recipe mapping (its paths absolute, see `tune.recipe_paths`). The returned
        tensors are overwritten by the next call unless `fresh`."""
        out = merge_to_memory(parse_recipe(recipe, "recipe"), self.options, self._open, None if fresh else self._out)
        if not fresh:
            self._out = out
        return out

    def close(self) -> None:
        for ckpt in self._opened.values():
            ckpt.close()
        self._opened.clear()


class _Unclosed(Checkpoint):
    """A shared checkpoint lent to one merge: the merge closes what it opened, which must not close the original."""

    def __init__(self, inner: Checkpoint):
        self.__dict__.update(inner.__dict__)
        self._inner = inner

    def read(self, name, rows=None, into=None):
        return self._inner.read(name, rows, into)

    def close(self) -> None:
        pass
