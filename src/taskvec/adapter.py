"""PEFT LoRA adapters as task vectors: an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
is read as the task vector it stands for, dW = scale * B @ A per targeted matrix, formed per tensor (per block of
rows) when the merge asks for it -- never a whole model.

PEFT's semantics (peft 0.21, ``LoraLayer.update_layer`` and ``get_delta_weight``): ``scale = lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` override r and alpha for the
modules whose name matches ``(.*\\.)?KEY$``; ``fan_in_fan_out`` (GPT-2's Conv1D) and embeddings store dW
transposed; ``lora_bias`` adds ``scale * lora_B.bias`` to the layer's bias. Full tensors in the adapter --
``modules_to_save`` (a trained head), trained biases (``bias: all``/``lora_only``), and embedding layers PEFT saved
whole (``base_layer.weight``) -- replace the base's: their task vector is saved minus base. Other PEFT methods and
LoRA variants that are not a plain dW (DoRA, LoHa, LoKr, IA3, ...) are refused with one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TaskvecError
from .inputs import Input
from .io.checkpoint import Checkpoint, TensorInfo, open_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
# options whose adapters are not base + scale * B @ A (or that taskvec cannot map to the base's tensors)
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora): its magnitude vector rescales whole columns, not a plain B @ A",
    "layer_replication": "layer_replication: the adapted model has more layers than its base",
    "target_parameters": "target_parameters (LoRA on nn.Parameter, e.g. MoE experts)",
    "trainable_token_indices": "trainable_token_indices (trainable tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens): it is active only after its invocation tokens",
}


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_config(folder: Path) -> dict:
    """The adapter's config, refused with one line where taskvec cannot read it as base + dW."""
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TaskvecError(f"{path}: unreadable adapter config ({e})") from e
    if not isinstance(config, dict):
        raise TaskvecError(f"{path}: an adapter config is a JSON object")
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise TaskvecError(f"{path}: a PEFT {config.get('peft_type')!r} adapter; taskvec reads LoRA adapters only "
                           "(merge it into its base with PEFT's merge_and_unload, then use the model)")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise TaskvecError(f"{path}: {what} is not supported; merge it with PEFT's merge_and_unload and use the "
                               "merged model")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "loftq")):
        raise TaskvecError(f"{path}: init_lora_weights {init!r} changes the base's weights as it starts, so this "
                           "adapter is not a delta of the unchanged base; convert it with PEFT first "
                           "(save_pretrained(..., path_initial_model_for_weight_conversion=...)) or merge it there")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool) or config[key] <= 0:
            raise TaskvecError(f"{path}: {key} must be a positive number, got {config.get(key)!r}")
    return config


def pattern_value(patterns: dict, module: str, default):
    """PEFT's get_pattern_key: the first pattern KEY with ``(.*\\.)?KEY$`` matching the module's name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def scale_of(config: dict, module: str) -> float:
    r = pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


@dataclass
class Lora:
    """dW = scale * B @ A, stored transposed (``transposed``: embeddings, fan_in_fan_out)."""

    a: str
    b: str
    scale: float
    transposed: bool


@dataclass
class Term:
    """What the adapter does to one base tensor: a saved full tensor (its delta: saved - base), a LoRA product, a
    LoRA bias (scale * lora_B.bias), or a full tensor and a LoRA product together (embeddings PEFT saved whole)."""

    full: str | None = None
    lora: Lora | None = None
    bias_of: Lora | None = None  # the Lora whose B bias this tensor gets


def plan_terms(config: dict, keys: list[str], label: str) -> dict[str, Term]:
    """Module-relative tensor name (e.g. ``model.layers.0.self_attn.q_proj.weight``) -> Term, from the adapter's
    tensor names and config. Pure: no tensor is read."""
    stripped = {k[len(PREFIX):] if k.startswith(PREFIX) else k: k for k in keys}
    terms: dict[str, Term] = {}
    loras: dict[str, dict[str, str]] = {}
    for name, key in stripped.items():
        m = re.match(r"^(.*)\.(lora_A|lora_B)\.(weight|bias)$", name) or re.match(
            r"^(.*)\.(lora_embedding_A|lora_embedding_B)()$", name)
        if m:
            module, part, param = m.groups()
            if part == "lora_A" and param == "bias":
                raise TaskvecError(f"{label}: tensor {key!r}: lora_A has no bias in PEFT's LoRA")
            loras.setdefault(module, {})[part + ("_bias" if param == "bias" else "")] = key
            continue
        if re.search(r"\.(lora_magnitude_vector|lora_[A-Za-z_]+)(\.|$)", name):
            raise TaskvecError(f"{label}: tensor {key!r} is not part of a plain LoRA (DoRA or another variant?); "
                               "merge it with PEFT's merge_and_unload and use the merged model")
        target = name.replace(".base_layer.", ".")  # an embedding layer PEFT saved whole
        terms.setdefault(target, Term()).full = key
    for module, parts in loras.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a, b = (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if embedding else (
            parts.get("lora_A"), parts.get("lora_B"))
        if a is None or b is None:
            raise TaskvecError(f"{label}: module {module!r} has only one of its LoRA factors (A and B); the adapter "
                               "is incomplete -- save it again with PEFT")
        lora = Lora(a, b, scale_of(config, module), embedding or bool(config.get("fan_in_fan_out")))
        terms.setdefault(f"{module}.weight", Term()).lora = lora
        if "lora_B_bias" in parts:
            terms.setdefault(f"{module}.bias", Term()).bias_of = Lora(a, parts["lora_B_bias"], lora.scale, False)
    return terms


def map_names(terms: dict[str, Term], base_names: list[str] | None, label: str) -> dict[str, Term]:
    """The adapter's names as the base's: equal, or else the one base name that ends with it, or that it ends with
    (an adapter of BertForSequenceClassification, ``bert.encoder...``, onto a BertModel folder, ``encoder...``)."""
    if base_names is None:
        return terms
    names = set(base_names)
    out = {}
    for name, term in terms.items():
        if name in names:
            out[name] = term
            continue
        found = [n for n in base_names if n.endswith("." + name) or name.endswith("." + n)]
        if len(found) != 1:
            why = "no tensor" if not found else f"{len(found)} tensors ({', '.join(found[:3])})"
            raise TaskvecError(f"{label}: the adapter changes {name!r}, but the base has {why} of that name; is "
                               "this the adapter's base model?")
        out[found[0]] = term
    return out


class AdapterInput(Input):
    """A PEFT LoRA adapter as a merge input: its task vector is dW (and saved tensors minus base); a tensor it does
    not touch has a zero delta. ``model``: read it as MODEL + adapter (mergekit's ``MODEL+ADAPTER``) instead of
    base + adapter."""

    def __init__(self, folder: str | Path, base_names: list[str] | None = None, model: Checkpoint | None = None,
                 label: str | None = None, origin: Checkpoint | None = None, fingerprint=None):
        """``origin``: the adapter's base, read for the tensors a merge gives no base for (saving the adapter as a
        stored task vector), each read seen by ``fingerprint`` (a Fingerprinter), as for a DifferenceInput."""
        self.folder = Path(folder)
        self.origin, self.fingerprint = origin, fingerprint
        self.label = label or str(folder)
        self.config = read_config(self.folder)
        weights = next((self.folder / w for w in WEIGHTS if (self.folder / w).is_file()), None)
        if weights is None:
            raise TaskvecError(f"{self.folder}: an adapter folder without {' or '.join(WEIGHTS)}")
        self.checkpoint = open_checkpoint(weights)
        self.model = model
        self.absent_means_zero = model is None
        try:
            self.terms = map_names(plan_terms(self.config, self.checkpoint.names(), self.label),
                                   base_names if base_names is not None else (model.names() if model else None),
                                   self.label)
            self._infos = {n: self._info(n, t) for n, t in self.terms.items()}
        except BaseException:
            self.close()
            raise

    def _info(self, name: str, term: Term) -> TensorInfo:
        t = self.checkpoint.tensors
        if term.full is not None:
            return TensorInfo(name, t[term.full].dtype, t[term.full].shape, t[term.full].file, t[term.full].offset)
        lora = term.lora or term.bias_of
        a, b = t[lora.a], t[lora.b]
        if len(a.shape) != 2 or len(b.shape) not in (1, 2):
            raise TaskvecError(f"{self.label}: LoRA factor {lora.a!r} has shape {list(a.shape)}; only linear and "
                               "embedding LoRA (2-D factors) are supported, not convolutions")
        if term.bias_of is not None:
            shape = tuple(b.shape)
        else:
            if b.shape[1] != a.shape[0]:
                raise TaskvecError(f"{self.label}: {lora.b!r} {list(b.shape)} and {lora.a!r} {list(a.shape)} do "
                                   "not multiply (rank differs); the adapter is corrupt")
            shape = (a.shape[1], b.shape[0]) if lora.transposed else (b.shape[0], a.shape[1])
        return TensorInfo(name, a.dtype, shape, a.file, a.offset)

    def info(self, name):
        if self.model is not None:
            return self.model.tensors.get(name)
        return self._infos.get(name)

    def names(self):
        return self.model.names() if self.model is not None else list(self._infos)

    def delta(self, name, base, dtype, device, rows=None):
        term = self.terms.get(name)
        if base is None:
            if self.origin is None:
                raise TaskvecError(f"{self.label}: a LoRA adapter is a task vector of its base; give the base")
            base = self.origin.read(name, rows)
            if self.fingerprint is not None and rows is None:
                self.fingerprint.add(name, base)
            base = base.to(device)
        if term is not None and term.full is not None:  # a saved tensor replaces the model's
            out = self.checkpoint.read(term.full, rows).to(device=device, dtype=torch.float32).sub_(base.float())
        elif self.model is not None:
            out = self.model.read(name, rows).to(device=device, dtype=torch.float32).sub_(base.float())
        else:
            out = torch.zeros(base.shape, dtype=torch.float32, device=device)
        if term is not None:
            if term.lora is not None:
                out.add_(self._product(term.lora, device, rows))
            if term.bias_of is not None:
                out.add_(self.checkpoint.read(term.bias_of.b, rows).to(device=device, dtype=torch.float32),
                         alpha=term.bias_of.scale)
        return out.to(dtype)

    def _product(self, lora: Lora, device, rows) -> torch.Tensor:
        """scale * B @ A (or its transpose), only rows [start, stop) of the result, in float32."""
        if lora.transposed:  # rows of dW = columns of A
            a = self.checkpoint.read(lora.a).to(device=device, dtype=torch.float32)
            if rows is not None:
                a = a[:, rows[0]:rows[1]]
            b = self.checkpoint.read(lora.b).to(device=device, dtype=torch.float32)
            return (a.T @ b.T).mul_(lora.scale)
        b = self.checkpoint.read(lora.b, rows).to(device=device, dtype=torch.float32)
        a = self.checkpoint.read(lora.a).to(device=device, dtype=torch.float32)
        return (b @ a).mul_(lora.scale)

    def weights(self, name, base, dtype, device, rows=None):
        if base is None:
            raise TaskvecError(f"{self.label}: a LoRA adapter has no weights of its own; give a base_model")
        return self.delta(name, base, torch.float32, device, rows).add_(base.float()).to(dtype)

    def close(self):
        self.checkpoint.close()
        for other in (self.model, self.origin):
            if other is not None:
                other.close()
