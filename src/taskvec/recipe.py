"""Recipes in mergekit's YAML schema, checked in full before any tensor is read.

Supported: ``merge_method``, ``base_model``, ``models: [{model, parameters}]``, top-level ``parameters``, ``dtype``
(the dtype mergekit computes in; here it sets the output dtype unless ``out_dtype`` does -- taskvec always computes
in float32 unless told otherwise), ``out_dtype``, ``tokenizer_source`` (``base``, ``union`` or a model: vocabularies aligned by token, see vocab.py), per-parameter
``filter`` lists, layer gradients and ``slices`` (layer ranges of several models, see slices.py). ``modules`` is
refused with a clear message.
"""

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .dtypes import parse_dtype
from .errors import TaskvecError
from .methods import MergeMethod, get_method
from .yaml_file import read_yaml


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Any] | None = None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[ModelSpec] | None = None
    parameters: dict[str, Any] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    # mergekit fields we recognise only to refuse them clearly
    slices: Any = None
    modules: Any = None
    tokenizer: Any = None
    chat_template: str | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    return parse_recipe(read_yaml(path, "recipe"), str(path))


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise TaskvecError(f"{source}: a recipe is a YAML mapping with merge_method, base_model and models")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "recipe"
        if err["type"] == "extra_forbidden":
            raise TaskvecError(f"{source}: unknown field {where!r}") from e
        if err["type"] == "missing":
            raise TaskvecError(f"{source}: missing required field {where!r}") from e
        raise TaskvecError(f"{source}: field {where!r}: {err['msg']}") from e
    validate_recipe(recipe, source)
    return recipe


def validate_recipe(recipe: Recipe, source: str = "recipe") -> MergeMethod:
    """Everything that can be checked without opening a file: method, parameters, their shapes, dtypes."""
    for field, what in (("modules", "modules"), ("tokenizer", "tokenizer")):
        if getattr(recipe, field) is not None:
            raise TaskvecError(f"{source}: {what} are not supported yet; list whole models under 'models' (or "
                               "layer ranges under 'slices')")
    if recipe.chat_template is not None:
        raise TaskvecError(f"{source}: chat_template is not supported yet; edit tokenizer_config.json after merging")
    method = get_method(recipe.merge_method)
    if recipe.slices is not None:
        return _validate_slices(recipe, method, source)
    if not recipe.models:
        raise TaskvecError(f"{source}: 'models' (or 'slices') must list at least one model")
    if method.needs_base and not recipe.base_model:
        raise TaskvecError(f"{source}: merge_method {method.name} needs a base_model (task vectors are model - base)")
    inputs = input_specs(recipe, method)
    if len(inputs) < method.min_models:
        raise TaskvecError(f"{source}: {method.name} needs at least {method.min_models} model(s) besides the base")
    if method.max_models is not None and len(inputs) > method.max_models:
        raise TaskvecError(f"{source}: {method.name} takes at most {method.max_models} model(s) besides the base, "
                           f"got {len(inputs)}")
    for i, spec in enumerate(recipe.models):
        model, plus, adapter = spec.model.rpartition("+")
        if plus and not Path(spec.model).exists() and not (model and adapter):
            raise TaskvecError(f"{source}: models[{i}].model {spec.model!r}: write a model with a LoRA adapter as "
                               "MODEL+ADAPTER (both parts given)")
    for field in ("dtype", "out_dtype"):
        if getattr(recipe, field) is not None:
            parse_dtype(getattr(recipe, field), f"{source}: {field}")

    global_names = {p.name for p in method.params}
    model_names = {p.name for p in method.model_params}
    known = global_names | model_names | set(method.ignored)
    used = set(recipe.parameters or {}) | {k for m in recipe.models for k in (m.parameters or {})}
    for key in sorted(used & set(method.ignored)):
        warnings.warn(f"{source}: parameter {key!r} is accepted for mergekit compatibility but has no effect in "
                      f"{method.name}")
    for key, setting in (recipe.parameters or {}).items():
        where = f"{source}: parameters.{key}"
        if key not in known:
            raise TaskvecError(f"{where}: {method.name} has no parameter {key!r}; it takes {_names(method)}")
        _check_setting(setting, where, method.param(key))
    for i, spec in enumerate(recipe.models):
        for key, setting in (spec.parameters or {}).items():
            where = f"{source}: models[{i}].parameters.{key}"
            if key in global_names:
                raise TaskvecError(f"{where}: {key!r} applies to the whole merge; move it to the top-level 'parameters'")
            if key not in known:
                raise TaskvecError(f"{where}: {method.name} has no parameter {key!r}; it takes {_names(method)}")
            _check_setting(setting, where, method.param(key))
    return method


def _validate_slices(recipe: Recipe, method: MergeMethod, source: str) -> MergeMethod:
    """A slices recipe: the slices' shape (slices.parse_slices) and every parameter; the models' layer counts and
    each slice's base are checked when the models are opened, before any tensor is read."""
    from .slices import parse_slices

    if recipe.models:
        raise TaskvecError(f"{source}: give 'models' or 'slices', not both")
    if recipe.tokenizer_source is not None:
        raise TaskvecError(f"{source}: tokenizer_source is not supported with slices yet")
    slices = parse_slices(recipe.slices, source)
    for field in ("dtype", "out_dtype"):
        if getattr(recipe, field) is not None:
            parse_dtype(getattr(recipe, field), f"{source}: {field}")
    global_names = {p.name for p in method.params}
    known = global_names | {p.name for p in method.model_params} | set(method.ignored)
    settings = [("parameters", recipe.parameters)]
    for i, s in enumerate(slices):
        settings.append((f"slices[{i}].parameters", s.parameters))
        settings += [(f"slices[{i}].sources[{j}].parameters", src.parameters) for j, src in enumerate(s.sources)]
    for where, params in settings:
        for key, setting in (params or {}).items():
            here = f"{source}: {where}.{key}"
            if key not in known:
                raise TaskvecError(f"{here}: {method.name} has no parameter {key!r}; it takes {_names(method)}")
            if ".sources[" in where and key in global_names:
                raise TaskvecError(f"{here}: {key!r} applies to the whole merge; move it to the slice's or the "
                                   "top-level 'parameters'")
            _check_setting(setting, here, method.param(key))
    return method


def input_specs(recipe: Recipe, method: MergeMethod, search: tuple[Path, ...] = ()) -> list[ModelSpec]:
    """The models merged into the base. For methods that ignore the base (`linear`), the base is one more weighted
    model, listed or not, as in mergekit: it takes its weight from its entry or the top-level parameters. A model
    entry is the base when it names the same file or folder, however spelled (``./base``, ``base/``, an absolute
    path)."""
    def is_base(ref: str) -> bool:
        return recipe.base_model is not None and same_location(ref, recipe.base_model, search)

    if method.base == "weighted":
        listed = any(is_base(m.model) for m in recipe.models)
        extra = [ModelSpec(model=recipe.base_model)] if recipe.base_model and not listed else []
        return list(recipe.models) + extra
    return [m for m in recipe.models if not is_base(m.model)]


def same_location(a: str, b: str, search: tuple[Path, ...] = ()) -> bool:
    """Whether two references name the same file or folder (looked up as a recipe's paths are: from the current
    folder, then the recipe's), else the same model id."""
    def where(ref: str) -> Path | None:
        return next((p.resolve() for p in [Path(ref).expanduser()] + [d / ref for d in search] if p.exists()), None)

    pa, pb = where(a), where(b)
    return pa == pb if pa is not None and pb is not None else a.rstrip("/") == b.rstrip("/")


def _names(method: MergeMethod) -> str:
    names = [p.name for p in method.params + method.model_params]
    return ", ".join(names) if names else "no parameters"


def _check_setting(setting: Any, where: str, param) -> None:
    """A scalar, a gradient (list of scalars) or a list of {filter, value} conditions."""
    if isinstance(setting, dict) and set(setting) & {"search", "choices"}:
        raise TaskvecError(f"{where}: {setting!r} is a searched value; `taskvec tune` picks it (merge needs plain "
                           f"values: run tune, then merge the recipe it writes)")
    if isinstance(setting, dict):
        setting = [setting]
    values = [setting]
    if isinstance(setting, list):
        if not setting:
            raise TaskvecError(f"{where}: an empty list is not a value")
        if all(isinstance(x, dict) for x in setting):
            values = []
            for cond in setting:
                extra = set(cond) - {"filter", "value"}
                if extra or "value" not in cond:
                    raise TaskvecError(f"{where}: each condition is {{filter: <substring>, value: <value>}}, got {cond!r}")
                if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                    raise TaskvecError(f"{where}: filter must be a string, got {cond['filter']!r}")
                _check_setting(cond["value"], where, param)
            return
        values = setting
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            raise TaskvecError(f"{where}: expected a value, a gradient list or {{filter, value}} conditions, got {v!r}")
        if param is not None:
            param.coerce(v, where)
