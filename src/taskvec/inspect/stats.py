"""Interference statistics of task vectors, as sums over blocks, in float64.

Each function takes one block -- the same rows of the same tensor from every task vector -- and returns plain sums
(counts, squared norms, dot products, masses). ``Totals`` adds them up for the whole vector, per layer and per module
type; ratios are taken only at the end (``vector_stats``, ``pair_stats``), so cutting a tensor into blocks changes
no number beyond float64 rounding of the sums.

Definitions (δ = one entry of a task vector τ = fine-tuned − base; t = the tolerance):
- L2 norm ‖τ‖ = sqrt(Σ δ²); L1 mass = Σ |δ|.
- fraction changed = #{|δ| > t} / #entries.
- cosine(τa, τb) = Σ δa·δb / (‖τa‖ ‖τb‖), clipped to [-1, 1]; undefined (None) when a norm is 0.
- sign-conflict rate = #{|δa| > t, |δb| > t, signs differ} / #{|δa| > t, |δb| > t}; None when no entry is changed in
  both.
- top-k% mask of τ = entries with δ ≠ 0 and |δ| ≥ the exact k%-th largest magnitude of the whole vector (float32
  magnitudes; entries tied with that threshold are all in the mask, so it can hold more than k%, and a vector
  with fewer non-zero entries than k% has a smaller mask). Jaccard = |A ∩ B| / |A ∪ B|; None when both are empty.
- TIES drop (weights 1, per-tensor trim to `density`, sign elected by sum): the share of the pair's L1 mass
  (Σ|δa| + Σ|δb|) removed by trimming (entries outside each vector's top-density of its tensor) and by sign election
  (kept, non-zero entries whose sign is not the elected one), and their total.
"""

import math
from dataclasses import dataclass, field, fields

import torch

from ..methods.sparsify import elect_positive

OTHER = "other"  # the layer of tensors outside the numbered blocks (embeddings, final norm, head)


class Sums:
    """Running totals: adding another's adds every field, and per-k counts key by key."""

    def add(self, other: "Sums") -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, f.name, mine + theirs)


@dataclass
class VectorSums(Sums):
    numel: int = 0
    sumsq: float = 0.0
    l1: float = 0.0
    changed: int = 0
    in_top: dict = field(default_factory=dict)  # k -> entries in the top-k% mask
    trim_dropped: float = 0.0  # L1 mass outside TIES' per-tensor trim


@dataclass
class PairSums(Sums):
    dot: float = 0.0
    both_changed: int = 0
    opposite: int = 0
    top_both: dict = field(default_factory=dict)  # k -> entries in both top-k% masks
    sign_dropped: float = 0.0  # L1 mass of trimmed entries that lose the sign election (TIES' trim: per vector)


@dataclass
class BlockView:
    """What the pair sums need of one vector's block, computed once per block and shared by all its pairs."""

    d: torch.Tensor  # the block, float32, as the merge computes
    d64: torch.Tensor  # the same in float64 and flat, for the sums
    magnitude: torch.Tensor  # |δ| in float64, flat
    positive: torch.Tensor  # δ > 0
    changed: torch.Tensor  # |δ| > tolerance
    top: dict  # k -> top-k% mask
    kept: torch.Tensor  # TIES' trim mask of this tensor
    trimmed: torch.Tensor  # δ where kept, else 0 (float32, as TIES' election sees it)


def view(d: torch.Tensor, tolerance: float, thresholds: dict, kept: torch.Tensor) -> BlockView:
    """A block with its masks: `thresholds` maps k to the vector's global top-k% magnitude threshold."""
    d = d.reshape(-1)
    magnitude = d.abs()
    top = {k: (magnitude >= t) if t > 0 else (magnitude >= t) & (d != 0) for k, t in thresholds.items()}
    d64 = d.to(torch.float64)
    kept = kept.reshape(-1)
    return BlockView(d, d64, d64.abs(), d > 0, magnitude > tolerance, top, kept, d * kept)


def vector_sums(v: BlockView) -> VectorSums:
    return VectorSums(
        numel=v.d.numel(), sumsq=float(torch.dot(v.d64, v.d64)), l1=float(v.magnitude.sum()), changed=int(torch.count_nonzero(v.changed)),
        in_top={k: int(torch.count_nonzero(m)) for k, m in v.top.items()},
        trim_dropped=float(torch.where(v.kept, 0.0, v.magnitude).sum()),
    )


def sign_dropped(a: BlockView, b: BlockView) -> float:
    """Mass removed by the sign election of a two-vector TIES merge with weights 1 (after each vector's trim)."""
    positive = elect_positive([a.trimmed, b.trimmed], "sum")
    lost = 0.0
    for v in (a, b):
        loses = (v.trimmed != 0) & (v.positive != positive)
        lost += float(torch.where(loses, v.magnitude, 0.0).sum())
    return lost


def pair_sums(a: BlockView, b: BlockView) -> PairSums:
    both = a.changed & b.changed
    return PairSums(
        dot=float(torch.dot(a.d64, b.d64)),
        both_changed=int(torch.count_nonzero(both)),
        opposite=int(torch.count_nonzero(both & (a.positive ^ b.positive))),
        top_both={k: int(torch.count_nonzero(a.top[k] & b.top[k])) for k in a.top},
        sign_dropped=sign_dropped(a, b),
    )


def pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


class Totals:
    """Running sums for n task vectors: whole vector, per layer (int or OTHER) and per module type."""

    def __init__(self, n: int):
        self.n = n
        self.vectors = [VectorSums() for _ in range(n)]
        self.pairs = {p: PairSums() for p in pairs(n)}
        self.vector_layers: dict = {}  # layer -> [VectorSums]
        self.pair_layers: dict = {}  # layer -> {pair: PairSums}
        self.vector_modules: dict = {}  # module -> [VectorSums]

    def add_block(self, layer, module: str, views: list[BlockView]) -> None:
        layer = OTHER if layer is None else layer
        for i, v in enumerate(views):
            s = vector_sums(v)
            for target in (self.vectors, self.vector_layers.setdefault(layer, [VectorSums() for _ in views]),
                           self.vector_modules.setdefault(module, [VectorSums() for _ in views])):
                target[i].add(s)
        per_layer = self.pair_layers.setdefault(layer, {p: PairSums() for p in self.pairs})
        for p in self.pairs:
            s = pair_sums(views[p[0]], views[p[1]])
            self.pairs[p].add(s)
            per_layer[p].add(s)

    def layers(self) -> list:
        """Numbered layers in order, then OTHER."""
        keys = list(self.vector_layers)
        return sorted(k for k in keys if k != OTHER) + [k for k in keys if k == OTHER]


def cosine(dot: float, sumsq_a: float, sumsq_b: float) -> float | None:
    if sumsq_a <= 0 or sumsq_b <= 0:
        return None
    return max(-1.0, min(1.0, dot / math.sqrt(sumsq_a * sumsq_b)))


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def jaccard(both: int, in_a: int, in_b: int) -> float | None:
    return ratio(both, in_a + in_b - both)


@dataclass
class VectorStats:
    """One task vector's numbers (see the module docstring for definitions)."""

    label: str
    kind: str  # "model - base" or "stored task vector"
    numel: int
    l2_norm: float
    l1_norm: float
    changed: int
    fraction_changed: float
    top_k_threshold: dict  # k (percent) -> magnitude threshold of the top-k% mask
    top_k_size: dict  # k -> entries in the mask
    l2_by_layer: dict  # "0", "1", ..., "other" -> L2 norm of that layer's entries
    l2_by_module: dict  # "self_attn.q_proj.weight", ..., full names outside layers -> L2 norm


@dataclass
class PairStats:
    """Interference between two task vectors (see the module docstring for definitions)."""

    a: str
    b: str
    cosine: float | None
    sign_conflict_rate: float | None
    both_changed: int
    opposite_signs: int
    top_k_jaccard: dict  # k (percent) -> Jaccard of the top-k% masks
    ties_trim_dropped: float | None  # share of the pair's L1 mass
    ties_sign_dropped: float | None
    ties_total_dropped: float | None
    l1_mass: float
    by_layer: dict  # layer -> {"cosine", "sign_conflict_rate", "both_changed", "opposite_signs"}


def vector_stats(totals: Totals, i: int, label: str, kind: str, thresholds: dict) -> VectorStats:
    s = totals.vectors[i]
    return VectorStats(
        label=label, kind=kind, numel=s.numel, l2_norm=math.sqrt(s.sumsq), l1_norm=s.l1, changed=s.changed,
        fraction_changed=s.changed / s.numel if s.numel else 0.0,
        top_k_threshold=dict(thresholds), top_k_size=dict(s.in_top),
        l2_by_layer={str(k): math.sqrt(totals.vector_layers[k][i].sumsq) for k in totals.layers()},
        l2_by_module={m: math.sqrt(v[i].sumsq) for m, v in totals.vector_modules.items()},
    )


def pair_stats(totals: Totals, pair: tuple[int, int], labels: list[str]) -> PairStats:
    i, j = pair
    s, a, b = totals.pairs[pair], totals.vectors[i], totals.vectors[j]
    mass = a.l1 + b.l1
    by_layer = {}
    for k in totals.layers():
        ls, la, lb = totals.pair_layers[k][pair], totals.vector_layers[k][i], totals.vector_layers[k][j]
        by_layer[str(k)] = {"cosine": cosine(ls.dot, la.sumsq, lb.sumsq),
                            "sign_conflict_rate": ratio(ls.opposite, ls.both_changed),
                            "both_changed": ls.both_changed, "opposite_signs": ls.opposite}
    return PairStats(
        a=labels[i], b=labels[j], cosine=cosine(s.dot, a.sumsq, b.sumsq),
        sign_conflict_rate=ratio(s.opposite, s.both_changed), both_changed=s.both_changed, opposite_signs=s.opposite,
        top_k_jaccard={k: jaccard(s.top_both[k], a.in_top[k], b.in_top[k]) for k in s.top_both},
        ties_trim_dropped=ratio(a.trim_dropped + b.trim_dropped, mass), ties_sign_dropped=ratio(s.sign_dropped, mass),
        ties_total_dropped=ratio(a.trim_dropped + b.trim_dropped + s.sign_dropped, mass), l1_mass=mass, by_layer=by_layer,
    )
