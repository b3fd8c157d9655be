"""AdaMerging (Yang et al., ICLR 2024): merge coefficients learned without labels, by making the merged model sure
of its answers on each task's unlabeled inputs.

    theta(lambda) = theta_base + sum_k lambda_k * tau_k,        tau_k = theta_k - theta_base

*Task-wise*, one lambda per model; *layer-wise*, one per model and per tensor. Every lambda starts at `init` (0.3,
the paper's prior) and ``torch.optim.Adam`` (lr 1e-3, the paper's) minimises, for `steps` steps, the sum over the
classification tasks of the mean Shannon entropy of the predicted class distribution on a batch of that task's
texts. Only the texts are read, never the labels. As in the reference implementation, the coefficients are clamped
to [0, 1] in the forward pass (a clamped coefficient gets no gradient from outside the interval), and the reported
coefficients are the clamped values. The reference draws two batches of 16 per task and step; here each step draws
one batch of `batch_size` per task, in a seeded order (reshuffled at each pass over a task's texts), so the same
inputs and seed give the same coefficients.

The model is built once from the base folder (``AutoModel`` under a head file, else the folder's
``AutoModelForSequenceClassification``, as ``taskvec eval`` scores it), and every step runs it through
``torch.func.functional_call`` over the merged tensors, so the gradient reaches the coefficients. Memory: the base
and the K task vectors are held as float32 -- K + 1 copies of the merged tensors (2K + 1 under ++, whose vectors are
kept as positive and negative parts), plus the model and its activations: fine for MiniLM-sized encoders. Nothing
is written to disk while learning.

Which tensors: the floating tensors that the base and every model hold with the same shape; any other keeps the
base's value (``kept_base``). A tensor equal to the base in every model (frozen during fine-tuning) gets no
coefficient of its own in the layer-wise set (``frozen``): it merges to the base's value whatever the coefficient.
Tensors the built model has not (a classifier when every task uses a head file) keep their initial coefficient.

While learning, each tensor's merge is one matrix-vector product (the task vectors as the rows of a matrix), and so
is its gradient. ``merged_weights`` computes the same merge with the very float32 operations of ``taskvec merge``
(models summed in the engine's canonical order: by their reference as written), so ``taskvec merge`` of
``recipe_for``'s recipe gives ``merged_weights`` bit for bit, and the merge seen while learning up to float32
rounding (BLAS sums in its own order).

AdaMerging++ (``plus=True``): each task vector is first trimmed to its top `density` entries by magnitude, per
tensor, with taskvec's own TIES selection (``sparsify.magnitude_mask``: exact top k, ties to the earliest entries);
the paper's reference ranks the whole flattened task vector at once (trim_scope global) and keeps 20%, the density
used here by default. Sign election: taskvec's ``ties`` elects each entry's sign from the *weighted* trimmed vectors
(the sign of sum_k w_k * trim(tau_k)) and, with ``normalize: false``, sums the weighted entries that agree with it.
The reference implementation elects once with unit weights and keeps those masks fixed while learning. To make the
learned merge the very merge that ``recipe_for``'s ``ties`` recipe (weights = the lambdas) produces, the learning
here uses taskvec's election: at every step the sign is elected from the current weighted sum, and the masks it
implies are constants in the backward pass (the gradient of lambda_k is that of its agreeing entries). At the start
all lambdas are equal, so the first election is the paper's unit-weight one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import TaskvecError
from ..evaluate.classification import auto_class, logits_of, read_head
from ..evaluate.models import build_model, load_tokenizer, model_name
from ..evaluate.tasks import ClassificationTask
from ..io.checkpoint import open_checkpoint
from ..methods.sparsify import magnitude_mask

GRANULARITIES = ("task", "layer")
DENSITY = 0.2  # AdaMerging++'s TIES trim (the reference's K = 20: keep the top 20%), TIES' own default too


@dataclass
class AdaMergingResult:
    granularity: str  # "task" | "layer"
    plus: bool
    models: list[str]  # the model references, in the order given
    coefficients: list[dict[str, float]]  # per model: tensor name -> lambda (task-wise: one lambda for every tensor)
    task_coefficients: list[float] | None  # task-wise: lambda per model
    history: list[dict]  # per step: {"step", "entropy" (mean over tasks), "per_task": {task: entropy}}
    seconds: float
    density: float | None = None  # plus: the TIES trim density the coefficients were learned with
    frozen: list[str] = field(default_factory=list)  # equal to the base in every model: no lambda (layer-wise)
    kept_base: dict[str, str] = field(default_factory=dict)  # tensor -> why it keeps the base's value
    unused: list[str] = field(default_factory=list)  # merged, but not in the model built: its lambda stays at init
    settings: dict = field(default_factory=dict)  # steps, lr, init, batch_size, seed, tasks

    def to_json(self) -> dict:
        return asdict(self)


class _Vectors:
    """The base and the (trimmed, for ++) task vectors in float32, and the merge as ``taskvec merge`` computes it."""

    def __init__(self, base: str | Path, models: list[str | Path], plus: bool, density: float, device: str):
        self.plus = plus
        # the engine sums the models in the order of their references: so do we, for the same float32 sums
        self.order = sorted(range(len(models)), key=lambda i: str(models[i]))
        base_ckpt = open_checkpoint(base)
        ckpts = []
        try:
            for m in models:
                ckpts.append(open_checkpoint(m))
            self.folder = base_ckpt.folder
            self.base: dict[str, torch.Tensor] = {}
            self.dtypes: dict[str, torch.dtype] = {}
            self.vectors: dict[str, list[torch.Tensor]] = {}  # tensor -> task vectors, in the order given
            self.kept_base: dict[str, str] = {}
            self.frozen: list[str] = []
            for name in base_ckpt.names():
                info = base_ckpt.info(name)
                why = self._left_out(name, info, ckpts)
                if why:
                    self.kept_base[name] = why
                    continue
                b = base_ckpt.read(name).to(device=device, dtype=torch.float32)
                taus = [c.read(name).to(device=device, dtype=torch.float32).sub_(b) for c in ckpts]
                if not any(bool(t.any()) for t in taus):
                    self.frozen.append(name)
                if plus:
                    taus = [t * magnitude_mask(t, density) for t in taus]
                self.base[name], self.dtypes[name], self.vectors[name] = b, info.dtype, taus
        finally:
            for c in ckpts + [base_ckpt]:
                c.close()
        self.names = list(self.base)  # the merged tensors, in the base's order
        if not self.names:
            raise TaskvecError(f"{base}: no floating-point tensor is shared, with one shape, by the base and every "
                               "model; nothing to merge")

    @staticmethod
    def _left_out(name: str, info, ckpts) -> str | None:
        if not info.dtype.is_floating_point:
            return f"not floating-point ({info.dtype})"
        for c in ckpts:
            if name not in c:
                return f"not in {c.label}"
            if tuple(c.info(name).shape) != tuple(info.shape):
                return f"shape {list(c.info(name).shape)} in {c.label}, {list(info.shape)} in the base"
        return None

    def merge(self, name: str, lambdas: list[float]) -> torch.Tensor:
        """base + the merged task vector of one tensor, `lambdas[k]` for model k: the same float32 operations, in
        the same order, as the engine's task_arithmetic (weighted_sum) or ties with normalize false
        (_agreeing_sum)."""
        xs = [self.vectors[name][k] * lambdas[k] for k in self.order]
        if self.plus:
            pos, neg = xs[0].clamp(min=0), xs[0].clamp(max=0)
            for x in xs[1:]:
                pos.add_(x.clamp(min=0))
                neg.add_(x.clamp(max=0))
            delta = torch.where((pos + neg) >= 0, pos, neg)
        else:
            delta = xs[0]
            for x in xs[1:]:
                delta.add_(x)
        return delta.add_(self.base[name])


class _Stacks:
    """The learning form of the merge: per tensor, the task vectors as the rows of one [K, numel] matrix (for ++,
    their positive and negative parts apart), so that merging is one matrix-vector product and the coefficients'
    gradient another. The same function as ``_Vectors.merge``, up to float32 rounding (BLAS sums in its own order);
    under ++ the elected signs are constants in the backward pass. Takes the task vectors over from `vectors`."""

    def __init__(self, vectors: _Vectors, names: list[str]):
        self.plus = vectors.plus
        self.shapes = {name: vectors.base[name].shape for name in names}
        self.base = {name: vectors.base[name].reshape(-1) for name in names}
        self.rows: dict[str, tuple[torch.Tensor, ...]] = {}
        for name in names:
            rows = torch.stack([t.reshape(-1) for t in vectors.vectors.pop(name)])
            # ++: the coefficients are >= 0 (clamped), so lambda * tau splits into lambda * tau+ and lambda * tau-
            self.rows[name] = (rows.clamp(min=0), rows.clamp(max=0)) if self.plus else (rows,)

    def merge(self, name: str, lambdas: torch.Tensor) -> torch.Tensor:
        """`lambdas`: float32 [K], one per model (in the order given)."""
        if self.plus:
            positive, negative = self.rows[name]
            pos, neg = lambdas @ positive, lambdas @ negative
            merged = self.base[name] + torch.where((pos + neg).detach() >= 0, pos, neg)
        else:
            merged = torch.addmv(self.base[name], self.rows[name][0].t(), lambdas)
        return merged.view(self.shapes[name])


class _Batches:
    """A task's texts in seeded random order, `size` at a time; reshuffled at each pass."""

    def __init__(self, texts: list[str], size: int, generator: torch.Generator):
        self.texts, self.size, self.generator = texts, min(size, len(texts)), generator
        self.order: list[int] = []
        self.at = 0

    def next(self) -> list[str]:
        if self.at + self.size > len(self.order):
            self.order = torch.randperm(len(self.texts), generator=self.generator).tolist()
            self.at = 0
        batch = [self.texts[i] for i in self.order[self.at:self.at + self.size]]
        self.at += self.size
        return batch


@dataclass
class _Scorer:
    """One task: its model (shared by the tasks of one class), head, batches, and the map from tensor names."""

    task: ClassificationTask
    model: torch.nn.Module
    names: dict[str, str]  # checkpoint name -> the model's name, for the learned tensors the model has
    head: tuple | None
    batches: _Batches

    def entropy(self, merged: dict[str, torch.Tensor], tokenizer, device: str) -> torch.Tensor:
        batch = tokenizer(self.batches.next(), padding=True, truncation=True, max_length=self.task.max_length,
                          return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        params = {own: merged[name] for name, own in self.names.items()}
        out = torch.func.functional_call(self.model, params, (), dict(batch))
        logp = torch.log_softmax(logits_of(out, batch, self.head).float(), dim=-1)
        return -(logp.exp() * logp).sum(-1).mean()


def adamerge(base: str | Path, models: list[str | Path], tasks: list[ClassificationTask], *,
             granularity: str = "task", plus: bool = False, density: float = DENSITY, steps: int = 500,
             lr: float = 1e-3, init: float = 0.3, batch_size: int = 16, seed: int = 0, device: str = "cpu",
             progress: Callable[[int, float], None] | None = None) -> AdaMergingResult:
    """Learn merge coefficients for `models` (fine-tuned from `base`) by entropy minimisation on `tasks` (views as
    ``tuning_view`` gives them; only their texts are read)."""
    start = time.perf_counter()
    _check(models, tasks, granularity, density, steps, lr, init, batch_size)
    vectors = _Vectors(base, models, plus, density, device)
    changed = [n for n in vectors.names if n not in vectors.frozen]
    if not changed:
        raise TaskvecError(f"{base}: every model equals the base in every merged tensor; there is nothing to learn")
    learned = vectors.names if granularity == "task" else changed
    scorers, tokenizer = _scorers(vectors.folder, tasks, changed, batch_size, seed, device)
    active = [n for n in changed if any(n in s.names for s in scorers)]  # what the entropy depends on
    frozen, kept_base, stacks = list(vectors.frozen), dict(vectors.kept_base), _Stacks(vectors, active)
    del vectors  # the task vectors of the tensors that are not learned are not needed any more
    index = {name: i for i, name in enumerate(learned)}
    shape = (len(models),) if granularity == "task" else (len(models), len(learned))
    # float64 coefficients, so that they read as given (0.3, not 0.30000001); the merge uses their float32 rounding,
    # as the engine does with a recipe's weight
    raw = torch.full(shape, float(init), dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=lr)
    history = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        lam = raw.clamp(0.0, 1.0).float()
        merged = {name: stacks.merge(name, lam if granularity == "task" else lam[:, index[name]]) for name in active}
        per_task = {s.task.name: s.entropy(merged, tokenizer, device) for s in scorers}
        torch.stack(list(per_task.values())).sum().backward()
        optimizer.step()
        entropies = {name: e.item() for name, e in per_task.items()}
        mean = sum(entropies.values()) / len(entropies)
        history.append({"step": step, "entropy": mean, "per_task": entropies})
        if progress is not None:
            progress(step, mean)
    lam = raw.detach().clamp(0.0, 1.0).cpu()
    if granularity == "task":
        task_coefficients = [float(x) for x in lam]
        coefficients = [{name: task_coefficients[k] for name in learned} for k in range(len(models))]
    else:
        task_coefficients = None
        coefficients = [{name: float(lam[k, index[name]]) for name in learned} for k in range(len(models))]
    settings = {"steps": steps, "lr": lr, "init": init, "batch_size": batch_size, "seed": seed,
                "tasks": [t.name for t in tasks]}
    return AdaMergingResult(granularity, plus, [str(m) for m in models], coefficients, task_coefficients, history,
                            time.perf_counter() - start, density if plus else None, frozen, kept_base,
                            [n for n in changed if n not in active], settings)


def _check(models, tasks, granularity, density, steps, lr, init, batch_size) -> None:
    if granularity not in GRANULARITIES:
        raise TaskvecError(f"adamerging: granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if not models:
        raise TaskvecError("adamerging: give at least one fine-tuned model")
    if not tasks:
        raise TaskvecError("adamerging: give at least one classification task")
    for task in tasks:
        if not isinstance(task, ClassificationTask):
            where = getattr(task, "_where", "") or f"task {task.name!r}"
            raise TaskvecError(f"{where}: AdaMerging learns from the entropy of predicted classes, so it takes "
                               f"classification tasks only; this is a {task.type} task")
    if not 0 < density <= 1:
        raise TaskvecError(f"adamerging: density must be in (0, 1], got {density:g}")
    if steps < 0 or batch_size < 1:
        raise TaskvecError(f"adamerging: steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise TaskvecError(f"adamerging: lr must be a positive number, got {lr!r}")
    if not 0 <= init <= 1:
        raise TaskvecError(f"adamerging: init must be in [0, 1] (coefficients are clamped to it), got {init:g}")


def _scorers(folder: Path | None, tasks: list[ClassificationTask], changed: list[str], batch_size: int, seed: int,
             device: str) -> tuple[list[_Scorer], object]:
    """Each task's scorer; one model per transformers class, built once from the base folder, in float32, frozen."""
    if folder is None:
        raise TaskvecError("adamerging: the base must be a model folder (its config and tokenizer build the model)")
    tokenizer = load_tokenizer(folder)
    generator = torch.Generator().manual_seed(seed)
    built: dict[str, tuple[torch.nn.Module, dict[str, str]]] = {}
    scorers = []
    for task in tasks:
        where = task._where or f"task {task.name!r}"
        kind = auto_class(task)
        if kind not in built:
            model, missing, _ = build_model(kind, folder, device, where)
            if missing and kind != "AutoModel":
                raise TaskvecError(f"{where}: {folder} lacks {sorted(missing)[0]} ({len(missing)} tensors missing) "
                                   f"for {kind}; give the task a 'head' file or use a folder with its head")
            model = model.float().requires_grad_(False)
            own = set(model.state_dict())
            names = {n: model_name(n, own, model) for n in changed}
            built[kind] = model, {n: m for n, m in names.items() if m in own}
        model, names = built[kind]
        if not names:
            raise TaskvecError(f"{where}: none of the merged tensors is a tensor of the model that {folder} builds "
                               f"({kind}); are the base and the models of that architecture?")
        texts = [text for text, _ in task._rows]
        scorers.append(_Scorer(task, model, names, read_head(task, device, where), _Batches(texts, batch_size,
                                                                                            generator)))
    return scorers, tokenizer


def merged_weights(result: AdaMergingResult, base: str | Path, models: list[str | Path] | None = None,
                   device: str = "cpu") -> dict[str, torch.Tensor]:
    """The learned merge, in memory: every tensor of the base, the merged ones computed as in learning (and as
    ``taskvec merge`` runs ``recipe_for``'s recipe), in the base's stored dtypes. `models` default to the result's."""
    models = list(models) if models is not None else list(result.models)
    if len(models) != len(result.models):
        raise TaskvecError(f"adamerging: the result has {len(result.models)} models, {len(models)} given")
    vectors = _Vectors(base, models, result.plus, result.density or DENSITY, device)
    out = {}
    for name in vectors.names:
        lambdas = [_coefficient(result, k, name) for k in range(len(models))]
        out[name] = vectors.merge(name, lambdas).to(vectors.dtypes[name]).cpu()
    ckpt = open_checkpoint(base)
    try:
        return {name: out[name] if name in out else ckpt.read(name) for name in ckpt.names()}
    finally:
        ckpt.close()


def _coefficient(result: AdaMergingResult, k: int, name: str) -> float:
    """Model k's lambda for a tensor: its learned one, else the model's catch-all (tensors without a lambda)."""
    return result.coefficients[k].get(name, _catch_all(result, k))


def _catch_all(result: AdaMergingResult, k: int) -> float:
    """The value for tensors without a lambda of their own (frozen or untouched: any value merges them alike): the
    mean of the model's learned lambdas."""
    values = list(result.coefficients[k].values())
    return sum(values) / len(values) if values else 0.0


def recipe_for(result: AdaMergingResult, base: str, models: list[str] | None = None,
               density: float | None = None) -> dict:
    """A recipe (taskvec's mergekit schema) whose ``taskvec merge`` is the merge the coefficients were learned for.

    Task-wise: task_arithmetic, weight lambda_k per model, lambda 1, no normalisation. Layer-wise: the weight is a
    list of {filter: tensor name, value} conditions, longest names first (a filter matches as a substring, the first
    match wins, and no longer name is a substring of a shorter one), ending with a catch-all for tensors without a
    lambda. AdaMerging++: ties with the same weights, `density` (default: the result's) per model, normalize false,
    rescale false, sign election by total mass, trimmed per tensor."""
    models = [str(m) for m in (models if models is not None else result.models)]
    if len(models) != len(result.models):
        raise TaskvecError(f"adamerging: the result has {len(result.models)} models, {len(models)} given")
    entries = []
    for k, model in enumerate(models):
        if result.granularity == "task":
            weight = result.task_coefficients[k]
        else:
            ordered = sorted(result.coefficients[k].items(), key=lambda item: (-len(item[0]), item[0]))
            weight = [{"filter": name, "value": value} for name, value in ordered]
            weight.append({"value": _catch_all(result, k)})
        parameters = {"weight": weight}
        if result.plus:
            parameters["density"] = density if density is not None else (result.density or DENSITY)
        entries.append({"model": model, "parameters": parameters})
    if result.plus:
        method = "ties"
        params = {"lambda": 1.0, "normalize": False, "rescale": False, "consensus_method": "sum",
                  "trim_scope": "tensor"}
    else:
        method, params = "task_arithmetic", {"lambda": 1.0, "normalize": False}
    return {"merge_method": method, "base_model": str(base), "models": entries, "parameters": params}


def plot_coefficients(result: AdaMergingResult, path: Path) -> None:
    """The coefficients (per layer, or per model) and the entropy over the steps, as one PNG."""
    from .coefficient_plot import plot_coefficients as plot

    plot(result, Path(path))
