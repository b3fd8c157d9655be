"""mergekit's ``slices``: a model stacked from layer ranges of other models, each range merged over its sources.

```yaml
slices:
  - sources: [{model: A, layer_range: [0, 16]}]
  - sources: [{model: B, layer_range: [8, 24]}]
merge_method: passthrough          # a "frankenmerge": 32 layers, 0-15 from A, 16-31 from B's 8-23
```

Semantics, as in mergekit 0.1.5: every source of a slice spans the same number of layers; output layer k of a slice
is the method applied to layer ``start + k`` of each source; a layer gradient runs over each slice on its own (from
its first layer to its last); the tensors before the layers (embeddings) are merged over the first slice's sources,
those after them (final norm, LM head) over the last slice's, both at gradient position 0. Parameters come from the
source, then the slice, then the recipe's top level. The output's config is the base's (else the first source's)
with the layer count summed.

Each slice is an ordinary merge over ``SliceView``s -- a model seen through one layer range, renumbered from 0 -- so
every method, the fused kernels and the streaming engine work unchanged; its tensors are renamed to their output
layers as they are written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import TaskvecError
from .io.checkpoint import Checkpoint, TensorInfo
from .parameters import _LAYER, count_layers, layer_index

_PRE = re.compile(r"(?:^|\.)(?:embed\w*|wte|wpe|word_embeddings|embeddings)(?:\.|$)")


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None


class OutputSlice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    base_model: str | None = None
    parameters: dict[str, Any] | None = None


def parse_slices(data: Any, source: str) -> list[OutputSlice]:
    """The recipe's ``slices``, checked for shape: a non-empty list, each slice's sources spanning equal ranges."""
    if not isinstance(data, list) or not data:
        raise TaskvecError(f"{source}: slices must be a non-empty list of {{sources: [{{model, layer_range}}]}}")
    slices = []
    for i, item in enumerate(data):
        where = f"{source}: slices[{i}]"
        if isinstance(item, dict) and "residual_weight" in item:
            raise TaskvecError(f"{where}: residual_weight is not supported; merge without it")
        try:
            out = OutputSlice.model_validate(item)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise TaskvecError(f"{where}.{field}: {err['msg']}") from e
        if not out.sources:
            raise TaskvecError(f"{where}: sources must list at least one model with its layer_range")
        for j, s in enumerate(out.sources):
            start, stop = s.layer_range
            if not 0 <= start < stop:
                raise TaskvecError(f"{where}.sources[{j}].layer_range [{start}, {stop}]: give [start, stop) with "
                                   "0 <= start < stop (stop excluded, as in mergekit)")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in out.sources}
        if len(lengths) > 1:
            raise TaskvecError(f"{where}: every source must span the same number of layers, got "
                               f"{', '.join(f'{s.model} {list(s.layer_range)}' for s in out.sources)}")
        slices.append(out)
    return slices


def is_pre_layer(name: str) -> bool:
    """Whether a tensor outside the layers comes before them (embeddings) rather than after (norm, LM head)."""
    return bool(_PRE.search(name))


class SliceView(Checkpoint):
    """A model seen through layers [start, start + length), renumbered from 0, with the tensors outside the layers
    that come before them (`pre`) and/or after them (`post`)."""

    def __init__(self, inner: Checkpoint, start: int, length: int, pre: bool, post: bool):
        super().__init__(f"{inner.label}[{start}:{start + length}]", inner.folder, inner.files, inner.is_folder)
        self.inner, self.length = inner, length
        self.source: dict[str, str] = {}  # the view's name -> the model's
        for name, info in inner.tensors.items():
            index = layer_index(name)
            if index is None:
                if not (pre if is_pre_layer(name) else post):
                    continue
                local = name
            elif start <= index < start + length:
                local = renumber(name, index - start)
            else:
                continue
            self.source[local] = name
            self.tensors[local] = TensorInfo(local, info.dtype, info.shape, info.file, info.offset)

    def read(self, name, rows=None, into=None):
        return self.inner.read(self.source[name], rows, into)

    def config(self) -> dict | None:
        config = self.inner.config()
        return set_layer_count(config, self.length) if config is not None else {"num_hidden_layers": self.length}

    def close(self) -> None:
        pass  # the model is shared by the views over it; closed once by the merge


def renumber(name: str, index: int) -> str:
    """The name with its layer number replaced (``model.layers.7.mlp`` -> ``model.layers.<index>.mlp``)."""
    m = _LAYER.search(name)
    return name[:m.start(1)] + str(index) + name[m.end(1):]


def set_layer_count(config: dict, layers: int) -> dict:
    config = dict(config)
    keys = [k for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(config.get(k), int)]
    for key in keys or ["num_hidden_layers"]:
        config[key] = layers
    return config


@dataclass
class PlannedSlice:
    """One slice, ready to merge: its base and inputs (views), their settings, and where its layers go."""

    index: int
    offset: int  # the output layer of the slice's first layer
    length: int
    base: SliceView | None
    inputs: list  # Inputs over SliceViews
    model_settings: list[dict]
    global_settings: dict

    def output_name(self, name: str) -> str:
        index = layer_index(name)
        return name if index is None else renumber(name, self.offset + index)


def plan_slices(slices: list[OutputSlice], method, recipe_base: str | None, global_params: dict | None,
                open_model, source: str, search: tuple[Path, ...] = ()
                ) -> tuple[list[PlannedSlice], dict[str, Checkpoint], int]:
    """Open every model once (``open_model(ref)``), check each range against the model's layer count, and build
    each slice's views. Returns the slices, the opened models by reference, and the output's layer count."""
    from .inputs import ModelInput
    from .recipe import same_location

    models: dict[str, Checkpoint] = {}

    def model(ref: str) -> Checkpoint:
        if ref not in models:
            models[ref] = open_model(ref)
        return models[ref]

    planned, offset = [], 0
    try:
        for i, out in enumerate(slices):
            where = f"{source}: slices[{i}]"
            length = out.sources[0].layer_range[1] - out.sources[0].layer_range[0]
            pre, post = i == 0, i == len(slices) - 1
            views = []
            for j, s in enumerate(out.sources):
                checkpoint = model(s.model)
                layers = count_layers(checkpoint.names(), checkpoint.config())
                if s.layer_range[1] > layers:
                    raise TaskvecError(f"{where}.sources[{j}]: layer_range {list(s.layer_range)} reaches beyond "
                                       f"{s.model}'s {layers} layers")
                views.append(SliceView(checkpoint, s.layer_range[0], length, pre, post))
            base_ref = out.base_model or recipe_base
            base_at = next((j for j, s in enumerate(out.sources)
                            if base_ref is not None and same_location(s.model, base_ref, search)), None)
            if method.base == "required" and base_at is None:
                raise TaskvecError(f"{where}: {method.name} merges task vectors against the base, so the base "
                                   f"({base_ref or 'none given'}) must be one of the slice's sources, with the "
                                   "same layer_range length")
            keep = [j for j in range(len(views)) if method.base == "weighted" or j != base_at]
            base = views[base_at] if base_at is not None and method.base != "weighted" else None
            count = len(keep)
            if count < method.min_models or (method.max_models is not None and count > method.max_models):
                most = f"at most {method.max_models}" if method.max_models is not None else "any number of"
                raise TaskvecError(f"{where}: {method.name} takes at least {method.min_models} and {most} "
                                   f"model(s) besides the base per slice, got {count}")
            planned.append(PlannedSlice(
                i, offset, length, base, [ModelInput(views[j], views[j].label) for j in keep],
                [out.sources[j].parameters or {} for j in keep], {**(global_params or {}), **(out.parameters or {})}))
            offset += length
    except BaseException:
        for checkpoint in models.values():
            checkpoint.close()
        raise
    return planned, models, offset


def merge_slices(recipe, search: tuple[Path, ...], opener, method, out: Path | None, options, dry_run: bool = False):
    """Run (or, with `dry_run`, describe) a slices recipe: one merge per slice, streamed into one folder."""
    from .dtypes import dtype_name, parse_dtype
    from .engine.scheduler import default_workers, execute
    from .io.model_folder import copy_aux_files, model_card
    from .io.writer import ShardedWriter, prepare_target
    from .merge import MergeResult, _prepare, describe_plan

    slices = parse_slices(recipe.slices, "recipe")
    out_dtype = recipe.out_dtype or recipe.dtype
    out_dtype = parse_dtype(out_dtype) if out_dtype else None
    planned, models, layers = plan_slices(slices, method, recipe.base_model, recipe.parameters,
                                          lambda ref: opener(ref, search), "recipe", search)
    try:
        prepared = [(s, _prepare(s.base, s.inputs, method, s.model_settings, s.global_settings, options, out_dtype))
                    for s in planned]
        if dry_run:
            return [(f"slice {s.index + 1}: output layers {s.offset}-{s.offset + s.length - 1} from "
                     + ", ".join(i.label for i in ([s.base] if s.base else []) + [x.checkpoint for x in s.inputs]),
                     describe_plan(p.plan, options)) for s, p in prepared]
        jobs = [replace(job, name=s.output_name(job.name)) for s, p in prepared for job in p.jobs]
        names = [j.name for j in jobs]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise TaskvecError(f"recipe: slices write tensor {duplicate!r} twice")
        if recipe.base_model and recipe.base_model not in models:
            models[recipe.base_model] = opener(recipe.base_model, search)
        config_source = models[recipe.base_model or slices[0].sources[0].model]
        config = set_layer_count(config_source.config() or {}, layers)
        if out_dtype is not None:
            config["dtype" if "dtype" in config else "torch_dtype"] = dtype_name(out_dtype)
        prepare_target(Path(out), options.force)
        specs = [(j.name, j.dtype, j.shape) for j in jobs]
        workers = options.workers or default_workers()
        with ShardedWriter(Path(out), specs, options.shard_size, force=options.force) as writer:
            copy_aux_files(writer, config_source, None, None, None, config)
            writer.write_text("README.md", model_card(list(models), method.name, recipe.to_yaml(), Path(out)))
            import torch

            threads = torch.get_num_threads()
            if any(p.single_threaded for _, p in prepared):
                torch.set_num_threads(1)
            try:
                stats = execute(jobs, writer, workers, label=method.name, progress=options.progress,
                                memory_budget=options.memory_budget)
            finally:
                torch.set_num_threads(threads)
            path = writer.commit()
        notes = [note for _, p in prepared for note in p.plan.warnings]
        return MergeResult(path, stats, notes)
    finally:
        for checkpoint in models.values():
            checkpoint.close()
