"""``taskvec inspect``: see how task vectors interfere -- norms, overlap, sign conflicts, what TIES would drop --
before merging them. ``stats`` holds the math (pure, per block), ``scan`` the streaming driver, ``report`` the JSON
and HTML, ``plots`` the PNGs."""

from .report import InspectReport
from .scan import inspect_vectors
from .stats import PairStats, VectorStats

__all__ = ["InspectReport", "PairStats", "VectorStats", "inspect_vectors"]
