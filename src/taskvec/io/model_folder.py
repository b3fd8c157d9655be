"""The non-weight files of a model folder: config, tokenizer, and a model card that says how it was made."""

import json
from pathlib import Path, PurePosixPath

import yaml

from ..errors import TaskvecError
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
                   out_dtype: str | None = None) -> None:
    """Copy config and tokenizer from the base (tokenizer optionally from another model); fix config's dtype.

    `source` is the base's ``Checkpoint`` (whose ``is_folder`` says whether its whole folder is the model's) or,
    for older callers, a folder path taken to be a model folder."""
    folder = getattr(source, "folder", source)
    tokenizer_folder = tokenizer_folder or folder
    for path in aux_files(folder, getattr(source, "is_folder", True)):
        rel = path.relative_to(folder).as_posix()
        if tokenizer_folder != folder and rel in TOKENIZER_FILES:
            continue
        if rel == "config.json" and out_dtype:
            writer.write_text("config.json", json.dumps(_with_dtype(path, out_dtype), indent=2) + "\n")
        else:
            writer.copy_file(path, rel)
    if tokenizer_folder != folder and tokenizer_folder is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                writer.copy_file(tokenizer_folder / name, name)


def _with_dtype(path: Path, out_dtype: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TaskvecError(f"{path}: unreadable config ({e})") from e
    if not isinstance(config, dict):
        raise TaskvecError(f"{path}: unreadable config (not a JSON object)")
    config["dtype" if "dtype" in config else "torch_dtype"] = out_dtype
    return config


def model_card(inputs: list[str], method: str, recipe_yaml: str, title: str = "Merged model") -> str:
    """A Hugging Face model card whose metadata marks the model as a merge of its inputs."""
    meta = {
        "base_model": list(dict.fromkeys(inputs)),
        "base_model_relation": "merge",
        "library_name": "transformers",
        "tags": ["taskvec", "merge", method],
    }
    listed = "\n".join(f"- `{m}`" for m in dict.fromkeys(inputs))
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {title}\n\n"
        f"This model was made with taskvec using the `{method}` method.\n\n"
        f"## Inputs\n\n{listed}\n\n## Recipe\n\n```yaml\n{recipe_yaml.rstrip()}\n```\n"
    )
