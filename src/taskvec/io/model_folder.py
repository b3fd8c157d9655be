"""The non-weight files of a model folder: config, tokenizer, and a model card that says how it was made."""

import json
import re
from pathlib import Path, PurePosixPath

import yaml

from ..errors import TaskvecError
from .checkpoint import _HUB_ID
from .writer import ShardedWriter

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".ckpt", ".index.json")
_MAX_AUX_BYTES = 50 * 10**6
_SKIP = {"README.md", "taskvec.json"}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
)


MODEL_FILES = (
    "config.json", "generation_config.json", *TOKENIZER_FILES, "preprocessor_config.json", "chat_template.json",
    "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
)


def aux_files(folder: Path | None, is_folder: bool = True) -> list[Path]:
    """Small non-weight files that belong to the model: in a model folder (`is_folder`) every file at its top, in the
    folder of a loose weights file only the standard Hugging Face files (the folder may be a busy work folder); in
    both, the sentence-transformers module folders that modules.json lists. No other subfolder, nothing hidden."""
    if folder is None or not folder.is_dir():
        return []
    if is_folder:
        top = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    else:
        top = [folder / name for name in dict.fromkeys(MODEL_FILES)]
    modules = [p for sub in module_folders(folder) for p in sorted((folder / sub).rglob("*"))
               if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return [p for p in top + modules if _small_aux(p)]


def _small_aux(path: Path) -> bool:
    if path.name in _SKIP or path.name.endswith(_WEIGHT_SUFFIXES) or not path.is_file():
        return False
    return path.stat().st_size <= _MAX_AUX_BYTES


def module_folders(folder: Path) -> list[str]:
    """The subfolders a sentence-transformers modules.json names (e.g. 1_Pooling), each checked to lie inside
    `folder`; none when there is no readable modules.json."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    if not isinstance(modules, list):
        return []
    found = []
    for module in modules:
        sub = module.get("path") if isinstance(module, dict) else None
        if not isinstance(sub, str) or not sub or "\\" in sub or sub.startswith(("/", "~")):
            continue
        parts = PurePosixPath(sub).parts
        if any(part in ("..", ".") or part.startswith(".") for part in parts) or not (folder / sub).is_dir():
            continue
        found.append(sub)
    return list(dict.fromkeys(found))


def copy_aux_files(writer: ShardedWriter, source, tokenizer_folder: Path | None = None,
                   out_dtype: str | None = None, config_updates: dict | None = None,
                   config: dict | None = None) -> None:
    """Copy config and tokenizer from the base (tokenizer optionally from another model); fix config's dtype and
    apply `config_updates` (e.g. the vocab_size of an aligned vocabulary). `config` replaces the base's config.json
    (another model's, for the class the output is loaded as).

    `source` is the base's ``Checkpoint`` (whose ``is_folder`` says whether its whole folder is the model's) or,
    for older callers, a folder path taken to be a model folder."""
    folder = getattr(source, "folder", source)
    tokenizer_folder = tokenizer_folder or folder
    files = aux_files(folder, getattr(source, "is_folder", True))
    if config is not None and not any(p.relative_to(folder).as_posix() == "config.json" for p in files):
        files.append(Path(folder) / "config.json")  # written from `config`, not read
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if tokenizer_folder != folder and rel in TOKENIZER_FILES:
            continue
        if rel == "config.json" and (out_dtype or config_updates or config is not None):
            config = dict(config) if config is not None else _read_config(path)
            if out_dtype:
                config["dtype" if "dtype" in config else "torch_dtype"] = out_dtype
            for key, value in (config_updates or {}).items():
                config[key] = value
                if isinstance(config.get("text_config"), dict) and key in config["text_config"]:
                    config["text_config"][key] = value
            writer.write_text("config.json", json.dumps(config, indent=2) + "\n")
        else:
            writer.copy_file(path, rel)
    if tokenizer_folder != folder and tokenizer_folder is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                writer.copy_file(tokenizer_folder / name, name)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TaskvecError(f"{path}: unreadable config ({e})") from e
    if not isinstance(config, dict):
        raise TaskvecError(f"{path}: unreadable config (not a JSON object)")
    return config


CardInput = str | tuple[str, dict | None]
_EXPRESSION = re.compile(r"^\((.+) - (.+)\)$")  # a difference input's label, "(finetuned - base)"
_ABSOLUTE = re.compile(r"(?<![\w.~/:\\-])(?:/|~/|[A-Za-z]:[\\/])[^\s'\"(),\[\]{}]+")


def hub_id(ref: str, config: dict | None = None) -> str | None:
    """The Hugging Face repository id a model can be cited by: `ref` itself when it is an ``org/name`` id rather
    than a local path, else config.json's ``_name_or_path`` when that is an id; None when neither is."""
    for candidate in (ref, config.get("_name_or_path") if isinstance(config, dict) else None):
        if isinstance(candidate, str) and _is_hub_id(candidate):
            return candidate
    return None


def _is_hub_id(text: str) -> bool:
    if not _HUB_ID.match(text) or text.startswith(".") or ".." in text:
        return False
    return not Path(text).expanduser().exists()


def model_card(inputs: list[CardInput], method: str, recipe_yaml: str, out: Path | None = None,
               title: str = "Merged model") -> str:
    """A Hugging Face model card whose metadata marks the model as a merge of its inputs.

    Each input is ``(ref, config)`` -- the path or id the user gave and its config.json, if known -- or just the
    ref (a difference's label ``(finetuned - base)`` counts as both; a local config is then looked up). Only Hub ids
    go in ``base_model``, the one field the Hub reads; local inputs are named by their folder name and the recipe's
    paths are made relative to the output's parent folder, so a published card never shows the author's disk."""
    refs = [item for entry in inputs for item in _card_inputs(entry)]
    ids = list(dict.fromkeys(i for i in (hub_id(ref, config) for ref, config in refs) if i))
    meta: dict[str, object] = {}
    if ids:
        meta = {"base_model": ids, "base_model_relation": "merge"}
    meta.update({"library_name": "transformers", "tags": ["taskvec", "merge", method]})
    listed = "\n".join(dict.fromkeys(_describe(ref, config) for ref, config in refs))
    root = Path(out).expanduser().resolve().parent if out is not None else None
    recipe = _scrub_paths(recipe_yaml.rstrip(), [ref for ref, _ in refs], root)
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {title}\n\n"
        f"This model was made with taskvec using the `{method}` method.\n\n"
        f"## Inputs\n\n{listed}\n\n## Recipe\n\n```yaml\n{recipe}\n```\n"
    )


def _card_inputs(entry: CardInput) -> list[tuple[str, dict | None]]:
    if isinstance(entry, tuple):
        ref, config = entry
        return [(str(ref), config)]
    match = _EXPRESSION.match(str(entry))
    refs = [match.group(1), match.group(2)] if match else [str(entry)]
    return [(ref, _local_config(ref)) for ref in refs]


def _local_config(ref: str) -> dict | None:
    """config.json of a local folder, or beside a local weights file; None if there is none or it is unreadable."""
    path = Path(ref).expanduser()
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        data = json.loads(config.read_text()) if path.exists() and config.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _describe(ref: str, config: dict | None) -> str:
    if _is_hub_id(ref):
        return f"- [`{ref}`](https://huggingface.co/{ref})"
    named = hub_id("", config)
    return f"- `{_basename(ref)}` (local" + (f"; its config names `{named}`)" if named else ")")


def _basename(ref: str) -> str:
    path = Path(ref).expanduser()
    return path.name if path.name not in ("", ".", "..") else path.resolve().name or "."


def _shown_path(path: str, root: Path | None) -> str:
    """A local path as a card shows it: relative to `root` when inside it, else its last component only."""
    if root is not None:
        try:
            return Path(path).expanduser().resolve().relative_to(root).as_posix()
        except (ValueError, OSError, RuntimeError):
            pass
    return _basename(path)


def _scrub_paths(text: str, refs: list[str], root: Path | None) -> str:
    """`text` (a recipe) with the local inputs' paths, and any other absolute path, shown by ``_shown_path``."""
    local = [ref for ref in refs if ref and not _is_hub_id(ref) and (
        Path(ref).expanduser().exists() or Path(ref).is_absolute() or ref.startswith("~"))]
    for ref in sorted(set(local), key=len, reverse=True):  # whole paths only: "ft" must not change "shift"
        whole = re.compile(r"(?<![\w.~/\\-])" + re.escape(ref) + r"(?![\w.~/\\-])")
        text = whole.sub(lambda m, ref=ref: _shown_path(ref, root), text)
    return _ABSOLUTE.sub(lambda m: _shown_path(m.group(0), root), text)
