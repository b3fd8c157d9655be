"""The non-weight files of a model folder: config, tokenizer, and a model card that says how it was made."""

import json
from pathlib import Path

import yaml

from .writer import ShardedWriter

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".ckpt", ".index.json")
_MAX_AUX_BYTES = 50 * 10**6
_SKIP = {"README.md", "taskvec.json"}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
)


def aux_files(folder: Path | None) -> list[Path]:
    """Small non-weight files of a model folder (config, tokenizer, sentence-transformers modules), recursively."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name in _SKIP or path.name.endswith(_WEIGHT_SUFFIXES) or path.stat().st_size > _MAX_AUX_BYTES:
            continue
        found.append(path)
    return found


def copy_aux_files(writer: ShardedWriter, folder: Path | None, tokenizer_folder: Path | None = None,
                   out_dtype: str | None = None) -> None:
    """Copy config and tokenizer from the base (tokenizer optionally from another model); fix config's dtype."""
    tokenizer_folder = tokenizer_folder or folder
    for path in aux_files(folder):
        rel = path.relative_to(folder)
        if tokenizer_folder != folder and str(rel) in TOKENIZER_FILES:
            continue
        if str(rel) == "config.json" and out_dtype:
            config = json.loads(path.read_text())
            key = "dtype" if "dtype" in config else "torch_dtype"
            config[key] = out_dtype
            writer.write_text("config.json", json.dumps(config, indent=2) + "\n")
        else:
            writer.copy_file(path, str(rel))
    if tokenizer_folder != folder and tokenizer_folder is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                writer.copy_file(tokenizer_folder / name, name)


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
