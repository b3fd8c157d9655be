"""Blocks of rows: how a large tensor is cut so that a merge holds small float32 temporaries, not whole tensors.

Blocks are fixed by the tensor's shape alone (about 256K entries each, whole rows), never by thread count or memory
budget. No result depends on them: random masks are keyed by an entry's flat index, selections are per tensor.
"""

import math

# 1 MB of float32 per temporary: a block's handful of temporaries stay in a core's L2 cache. On the 1.1B benchmark
# (2 cores) task arithmetic took 10.1 s with 2M-entry blocks, 7.6 s with 512K and 6.5 s with 256K.
BLOCK_ELEMENTS = 1 << 18


def row_blocks(shape: tuple[int, ...], granularity: str) -> list[tuple[int, int] | None]:
    """[(start_row, stop_row), ...], or [None] when the tensor is taken whole."""
    if granularity == "tensor" or len(shape) < 2 or shape[0] == 0:
        return [None]
    rows_per_block = max(1, BLOCK_ELEMENTS // max(1, math.prod(shape[1:])))
    if rows_per_block >= shape[0]:
        return [None]
    return [(r, min(shape[0], r + rows_per_block)) for r in range(0, shape[0], rows_per_block)]


def block_numel(shape: tuple[int, ...], rows: tuple[int, int] | None) -> int:
    """Entries in rows [start, stop) of a tensor, or in the whole tensor when `rows` is None."""
    return math.prod(shape) if rows is None else (rows[1] - rows[0]) * math.prod(shape[1:])


def block_start(shape: tuple[int, ...], rows: tuple[int, int] | None) -> int:
    """Flat index, in its tensor, of a block's first entry."""
    return 0 if rows is None else rows[0] * math.prod(shape[1:])
