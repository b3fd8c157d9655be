"""Task vectors as lazy expressions: build with + - * and evaluate by streaming, tensor by tensor.

    tv = TaskVector.from_models("base", "finetuned")     # opens nothing yet
    (0.5 * tv_a + tv_b).apply("base", "out/")            # one streaming pass, one folder
    (tv_c + (tv_b - tv_a)).save("analogy.tv")            # a stored task vector: deltas + manifest

An expression is a linear combination of terms; each term is "finetuned minus its base" or a stored task vector.
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import __version__
from .dtypes import dtype_name, parse_dtype
from .engine.plan import TensorPlan
from .engine.reference import ReferenceMerger
from .engine.scheduler import Job, execute
from .errors import TaskvecError
from .store.fingerprint import Fingerprinter
from .inputs import FORMAT, MANIFEST, MANIFEST_VERSION, DifferenceInput, Input, ModelInput, StoredVectorInput, is_task_vector
from .io.checkpoint import open_checkpoint
from .io.model_folder import model_card
from .io.writer import ShardedWriter, prepare_target
from .merge import MergeOptions, MergeResult, merge_inputs
from .methods import ModelArgs, get_method


@dataclass(frozen=True)
class _Difference:
    finetuned: str
    base: str

    def __str__(self) -> str:
        return f"({self.finetuned} - {self.base})"


@dataclass(frozen=True)
class _Adapter:
    path: str
    base: str

    def __str__(self) -> str:
        return f"lora({self.path})"


@dataclass(frozen=True)
class _Stored:
    path: str

    def __str__(self) -> str:
        return self.path


class TaskVector:
    """sum_i c_i * tau_i, not evaluated until ``apply`` or ``save``."""

    def __init__(self, terms: dict):
        self.terms: dict = dict(terms)

    @classmethod
    def from_models(cls, base: str | Path, finetuned: str | Path) -> "TaskVector":
        """tau = finetuned - base (nothing is read until evaluation)."""
        if is_task_vector(finetuned):
            return cls.load(finetuned)
        return cls({_Difference(str(finetuned), str(base)): 1.0})

    @classmethod
    def from_adapter(cls, adapter: str | Path, base: str | Path) -> "TaskVector":
        """tau of a PEFT LoRA adapter trained on ``base``: scale * B @ A per targeted matrix, saved tensors
        (modules_to_save) minus base (nothing is read until evaluation)."""
        from .adapter import ADAPTER_CONFIG, is_adapter

        if not is_adapter(adapter):
            raise TaskvecError(f"{adapter}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
        return cls({_Adapter(str(adapter), str(base)): 1.0})

    @classmethod
    def load(cls, path: str | Path) -> "TaskVector":
        """A task vector stored by ``taskvec extract`` or ``save``."""
        if not is_task_vector(path):
            raise TaskvecError(f"{path}: not a task vector folder (no {MANIFEST}); extract one with `taskvec extract`")
        return cls({_Stored(str(path)): 1.0})

    def __add__(self, other: "TaskVector") -> "TaskVector":
        if not isinstance(other, TaskVector):
            return NotImplemented
        terms = dict(self.terms)
        for term, coef in other.terms.items():
            terms[term] = terms.get(term, 0.0) + coef
        return TaskVector(terms)

    def __mul__(self, scale: float) -> "TaskVector":
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            return NotImplemented
        return TaskVector({t: c * float(scale) for t, c in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> "TaskVector":
        return self * (1.0 / scale)

    def __neg__(self) -> "TaskVector":
        return self * -1.0

    def __sub__(self, other: "TaskVector") -> "TaskVector":
        return self + (-other)

    def __repr__(self) -> str:
        return " + ".join(f"{c:g} * {t}" for t, c in self.terms.items()) or "0"

    def _inputs(self, apply_base: str | None = None, fingerprints: dict | None = None) -> list[Input]:
        from .adapter import AdapterInput

        inputs: list[Input] = []
        for term in self.terms:
            if isinstance(term, _Stored):
                inputs.append(StoredVectorInput(Path(term.path), label=term.path))
            elif isinstance(term, _Adapter):
                origin = open_checkpoint(term.base if apply_base is None else apply_base)
                fp = fingerprints.setdefault(term.base, Fingerprinter()) if fingerprints is not None else None
                inputs.append(AdapterInput(term.path, origin.names(), label=term.path, origin=origin, fingerprint=fp))
            elif apply_base is not None and _same(term.base, apply_base):
                inputs.append(ModelInput(open_checkpoint(term.finetuned)))
            else:
                fp = fingerprints.setdefault(term.base, Fingerprinter()) if fingerprints is not None else None
                inputs.append(DifferenceInput(open_checkpoint(term.finetuned), open_checkpoint(term.base), fp))
        return inputs

    def apply(self, base: str | Path, out: str | Path, *, out_dtype: str | None = None,
              options: MergeOptions | None = None) -> MergeResult:
        """Write base + this task vector as a model folder."""
        options = options or MergeOptions()
        prepare_target(Path(out), options.force)
        base_ckpt = open_checkpoint(base)
        inputs = self._inputs(apply_base=str(base))
        try:
            coefs = list(self.terms.values())
            recipe = f"# taskvec apply\nbase_model: {base}\nexpression: {self!r}\n"
            return merge_inputs(
                base_ckpt, inputs, get_method("task_arithmetic"), [{"weight": c} for c in coefs], {}, Path(out),
                options, out_dtype=parse_dtype(out_dtype) if out_dtype else None,
                card=model_card([(str(base), base_ckpt.config())] + [str(t) for t in self.terms], "task_arithmetic",
                                recipe, Path(out)),
            )
        finally:
            base_ckpt.close()
            for inp in inputs:
                inp.close()

    def save(self, out: str | Path, *, dtype: str = "float32", compress: str | None = None,
             options: MergeOptions | None = None) -> Path:
        """Evaluate the expression and store it as a task vector (deltas as safetensors plus a JSON manifest).

        ``compress`` (``dense-bf16``, ``sparse:D``, ``lowrank:R``, ``lowrank-energy:E``, ``sign``) stores it
        encoded (``taskvec.store.codecs``); the manifest's ``compression_report`` gives its size against dense
        float32 and the relative error ||tau - decoded|| / ||tau||. ``dtype`` is then the dtype of the stored values
        and factors (dense-bf16: bfloat16)."""
        options = options or MergeOptions()
        prepare_target(Path(out), options.force)
        store_dtype = parse_dtype(dtype, "task vector dtype")
        compression = None
        if compress not in (None, "", "none"):
            from .store.codecs import parse

            compression = parse(compress)
        fingerprints: dict[str, Fingerprinter] = {}
        inputs = self._inputs(fingerprints=fingerprints)
        try:
            return self._save(inputs, Path(out), store_dtype, fingerprints, options, compression)
        finally:
            for inp in inputs:
                inp.close()

    def _save(self, inputs, out, store_dtype, fingerprints, options, compression=None) -> Path:
        coefs = list(self.terms.values())
        shapes: dict[str, tuple[int, ...]] = {}
        read_bytes: dict[str, int] = {}
        skipped: dict[str, str] = {}
        for inp in inputs:
            if isinstance(inp, StoredVectorInput):
                skipped.update({s["tensor"]: s["reason"] for s in inp.manifest.get("skipped", [])})
            elif isinstance(inp, DifferenceInput):
                skipped.update(_difference_skips(inp))
            for name in inp.names():
                info = inp.info(name)
                if name in skipped and not isinstance(inp, StoredVectorInput):
                    continue
                if name in shapes and shapes[name] != info.shape:
                    raise TaskvecError(f"tensor {name!r}: shape {list(info.shape)} in {info.file} but "
                                       f"{list(shapes[name])} elsewhere in the expression")
                shapes[name] = info.shape
                read_bytes[name] = read_bytes.get(name, 0) + info.nbytes * (2 if isinstance(inp, DifferenceInput) else 1)
        for name in shapes:
            skipped.pop(name, None)
        dtypes = {n: inp.info(n).dtype for inp in reversed(inputs) for n in inp.names() if n in shapes}
        job_dtype = store_dtype if compression is None else torch.float32  # compressed: encoded from exact deltas
        plans = [TensorPlan(n, shapes[n], dtypes[n], job_dtype, read_bytes[n],
                            models=tuple(ModelArgs({"weight": c}) for c in coefs),
                            params={"lambda": 1.0, "normalize": False}) for n in shapes]
        # whole tensors, as before: each base tensor is then read once, and fingerprinted on that read
        method = replace(get_method("task_arithmetic"), granularity="tensor")
        padded = [_ZeroWhereAbsent(inp, shapes) for inp in inputs]
        executor = ReferenceMerger(method, None, padded, torch.device(options.device), options.compute_dtype,
                                   needs_base=False, fingerprint=None, add_base=False)

        def job(plan: TensorPlan) -> Job:
            encoding = 0 if compression is None else 16 * plan.numel  # the codec's float32 temporaries (SVD)
            return Job(plan.name, plan.shape, job_dtype, plan.read_bytes, lambda: executor.merge(plan),
                       executor.memory(plan) + encoding)

        if compression is None:
            specs = [(n, store_dtype, shapes[n]) for n in shapes]
        else:
            from .store.encoded import EncodingWriter, plan_encoding

            values_dtype = torch.bfloat16 if compression.kind == "dense-bf16" else store_dtype
            ranks = _energy_ranks(plans, executor, compression) if compression.kind == "lowrank-energy" else {}
            encodings = {n: e for n in shapes
                         if (e := plan_encoding(shapes[n], compression, values_dtype, ranks.get(n))) is not None}
            specs = EncodingWriter.specs(shapes, encodings, values_dtype, values_dtype)
        with ShardedWriter(out, specs, options.shard_size, prefix="task_vector", force=options.force) as writer:
            sink = writer if compression is None else EncodingWriter(writer, encodings, values_dtype, values_dtype)
            stats = execute([job(p) for p in plans], sink, options.workers, "extract", options.progress,
                            options.memory_budget)
            logical = [(n, store_dtype, shapes[n]) for n in shapes]
            manifest = self._manifest(inputs, fingerprints, store_dtype, logical, skipped, stats)
            if compression is not None:
                manifest["dtype"] = dtype_name(values_dtype)
                manifest["compression_report"] = sink.report(compression)
                manifest["compression"] = str(compression)
                manifest["encodings"] = encodings
            writer.write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            writer.write_text("README.md", _vector_card(manifest))
            return writer.commit()

    def _manifest(self, inputs, fingerprints, store_dtype, specs, skipped, stats) -> dict:
        for inp in inputs:  # complete each base's fingerprint with tensors the deltas did not need
            if getattr(inp, "origin", None) is not None and inp.fingerprint is not None:  # a difference, an adapter
                for name in inp.origin.names():
                    if not inp.fingerprint.has(name):
                        inp.fingerprint.add(name, inp.origin.read(name))
        prints: dict = {}  # root -> per-tensor hashes
        for fp in fingerprints.values():
            result = fp.result()
            prints[result.root] = result.tensors
        for i in inputs:
            if isinstance(i, StoredVectorInput):
                b = i.manifest.get("base", {})
                if not prints.get(b.get("fingerprint")):
                    prints[b.get("fingerprint")] = b.get("tensors")
        first = inputs[0]
        if getattr(first, "origin", None) is not None:
            origin = first.origin
            base_info = {"ref": origin.label, "num_parameters": origin.num_parameters(),
                         **_architecture(origin.config())}
            finetuned = [i.checkpoint.label if isinstance(i, DifferenceInput) else i.label
                         for i in inputs if getattr(i, "origin", None) is not None]
        else:
            base_info = dict(first.manifest.get("base", {}))
            finetuned = first.manifest.get("finetuned", [])
        (root, tensors), = prints.items() if len(prints) == 1 else [(None, None)]
        base_info["fingerprint"] = root  # None: the terms came from different bases, nothing to check against
        base_info["tensors"] = tensors
        return {
            "format": FORMAT,
            "version": MANIFEST_VERSION,
            "created_by": f"taskvec {__version__}",
            "expression": repr(self),
            "base": base_info,
            "finetuned": finetuned,
            "dtype": dtype_name(store_dtype),
            "num_tensors": len(specs),
            "num_parameters": sum(math.prod(s[2]) for s in specs),
            "seconds": round(stats.seconds, 3),
            "skipped": [{"tensor": n, "reason": r} for n, r in sorted(skipped.items())],
        }


def _energy_ranks(plans, executor, compression) -> dict[str, int]:
    """lowrank-energy's rank per matrix, from its singular values: a first pass, since the output's layout (the
    factors' shapes) must be known before the safetensors headers are written."""
    from .store.codecs import energy_rank, lowrank_pays

    ranks = {}
    for plan in plans:
        if lowrank_pays(plan.shape, 1):
            s = torch.linalg.svdvals(executor.merge(plan).float())
            ranks[plan.name] = energy_rank(s, compression.value)
    return ranks


class _ZeroWhereAbsent(Input):
    """An expression's term, read as a zero task vector for tensors it lacks (another term has them)."""

    def __init__(self, inp: Input, shapes: dict[str, tuple[int, ...]]):
        self.inp, self.shapes, self.label, self.checkpoint = inp, shapes, inp.label, inp.checkpoint

    def delta(self, name, base, dtype, device, rows=None):
        if self.inp.info(name) is not None:
            return self.inp.delta(name, base, dtype, device, rows)
        shape = self.shapes[name] if rows is None else (rows[1] - rows[0],) + self.shapes[name][1:]
        return torch.zeros(shape, dtype=dtype, device=device)


def _difference_skips(inp: DifferenceInput) -> dict[str, str]:
    """Tensors of a finetuned/base pair that have no task vector, and why."""
    skips = {}
    ft, origin = inp.checkpoint, inp.origin
    for name in ft.names():
        info = ft.info(name)
        if name not in origin:
            skips[name] = f"only in the fine-tuned model {ft.label}"
        elif not info.dtype.is_floating_point:
            skips[name] = f"{dtype_name(info.dtype)} tensor (ids, masks): never a task vector; applying keeps the base's"
        elif origin.info(name).shape != info.shape:
            raise TaskvecError(
                f"tensor {name!r}: shape {list(info.shape)} in {info.file} but {list(origin.info(name).shape)} in "
                f"{origin.info(name).file}; a task vector needs a model fine-tuned from this base"
            )
    for name in origin.names():
        if name not in ft:
            skips[name] = f"only in the base {origin.label}"
    return skips


def _architecture(config: dict | None) -> dict:
    if not config:
        return {}
    return {k: config[k] for k in ("architectures", "model_type") if k in config}



def _same(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _vector_card(manifest: dict) -> str:
    return (
        "# Task vector\n\n"
        f"`{manifest['expression']}`, stored as {manifest['dtype']} deltas ({manifest['num_parameters']:,} parameters "
        f"in {manifest['num_tensors']} tensors) by {manifest['created_by']}.\n\n"
        f"Base: `{manifest['base'].get('ref')}` (fingerprint `{manifest['base'].get('fingerprint')}`).\n\n"
        "Apply it with `taskvec apply BASE THIS_FOLDER[:SCALE] --out DIR`, or list it under `models:` in a recipe.\n"
    )
